"""`roofline tp-scaling BASE TP`: how a block's time changes from one device to N tensor-parallel ranks.

Reads two saved results files (a `roofline profile` run and a `roofline profile --tp N` run of the same
block), never measures. Per op and for the unfused block:

    efficiency = time(TP=1) / (N · time(TP=N))

1 is linear scaling; a replicated op (norms, residual adds) scores 1/N, and the block's efficiency also pays
for the all-reduces, which exist only at TP > 1. A TP run's rows are read at their max over ranks (the first
row of each op, parallel.merge), since a TP step waits for its slowest rank. `block_split` also splits a block
into compute-bound, memory-bound and communication time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from roofline import fmt, results
from roofline.errors import RooflineError
from roofline.results import Results


def block_split(res: Results) -> dict[str, float]:
    """Seconds per unfused block in compute-bound, memory-bound and communication ops (each op's first row: in a
    TP run, the max over ranks)."""
    from roofline.fusion import unfused_block

    split = {"compute": 0.0, "memory": 0.0, "comm": 0.0}
    for row in unfused_block(res):
        kind = "comm" if row.unit == "comm" else row.bound
        if kind in split:
            split[kind] += (row.time_median_s or 0.0) * row.per_block
    return split


def split_line(res: Results) -> str:
    split = block_split(res)
    total = sum(split.values())
    if not total:
        return ""
    pct = {k: f"{100 * v / total:.0f} %" for k, v in split.items()}
    n = res.run.get("tp", 1)
    return (f"TP={n} block{' (slowest rank per op)' if n != 1 else ''}: {fmt.seconds(total)}, {pct['compute']} "
            f"compute-bound, {pct['memory']} memory-bound, {pct['comm']} communication")


@dataclass
class Scaling:
    op: str
    variant: str
    base_s: float
    tp_s: float
    tp: int

    @property
    def efficiency(self) -> float:
        """time(TP=1) / (N·time(TP=N)): 1 is linear scaling; a replicated op (norm) scores 1/N."""
        return self.base_s / (self.tp * self.tp_s)


SAME_CONFIG = ("name", "d_model", "head_dim", "batch", "seq_len", "kv_cache_len", "dtype", "mode", "activation")


def scaling(base: Results, tp_res: Results) -> list[Scaling]:
    """Per (op, variant) measured in both runs, then the unfused block ('block', all ops × times per block)."""
    n = int(tp_res.run.get("tp", 1))  # type: ignore[call-overload]
    if n <= 1 or int(base.run.get("tp", 1)) != 1:  # type: ignore[call-overload]
        raise RooflineError("tp-scaling wants a TP=1 results file, then a `profile --tp N` one")
    a, b = base.run.get("config", {}), tp_res.run.get("config", {})
    differ = [k for k in SAME_CONFIG if a.get(k) != b.get(k)]  # type: ignore[union-attr]
    if differ:
        raise RooflineError(f"the two runs profiled different blocks ({', '.join(differ)} differ)")
    out = []
    for row in base.ok_rows():
        other = tp_res.find(row.op, row.variant)
        if other and row.time_median_s and other.time_median_s:
            out.append(Scaling(row.op, row.variant, row.time_median_s, other.time_median_s, n))
    t1, tn = sum(block_split(base).values()), sum(block_split(tp_res).values())
    if t1 and tn:
        out.append(Scaling("block", "", t1, tn, n))
    return out


def tp_scaling_command(
    base: Annotated[Path, typer.Argument(help="results.json of the TP=1 run (`roofline profile`).")],
    tp: Annotated[Path, typer.Argument(help="results.json of the same block with `roofline profile --tp N`.")],
) -> None:
    """TP scaling efficiency per op and for the block: time(TP=1) / (N·time(TP=N)), and where the time goes."""
    from rich.table import Table

    from roofline.cli import stdout

    base_res, tp_res = results.load(base), results.load(tp)
    rows = scaling(base_res, tp_res)
    n = rows[0].tp if rows else tp_res.run.get("tp")
    t = Table(title=f"Tensor-parallel scaling, TP=1 → TP={n}", header_style="bold", pad_edge=False)
    for col in ("op", "variant", "TP=1", f"TP={n}", "speedup", "efficiency"):
        t.add_column(col, justify="left" if col in ("op", "variant") else "right")
    for s in rows:
        t.add_row(s.op, s.variant, fmt.seconds(s.base_s), fmt.seconds(s.tp_s), fmt.ratio(s.base_s / s.tp_s),
                  fmt.pct(100 * s.efficiency), style="bold" if s.op == "block" else None)
    stdout.print(t)
    for res in (base_res, tp_res):
        stdout.print(split_line(res))
