"""`roofline tp-scaling BASE TP`: how a block's time changes from one device to N tensor-parallel ranks.

Reads two saved results files (a `roofline profile` run and a `roofline profile --tp N` run of the same
block), never measures. Per op and for the unfused block:

    efficiency = time(TP=1) / (N · time(TP=N))

1 is linear scaling; a replicated op (norms, residual adds) scores 1/N, and the block's efficiency also pays
for the all-reduces, which exist only at TP > 1. A TP run's rows are read at their max over ranks (the first
row of each op, parallel.merge), since a TP step waits for its slowest rank. `block_split` also splits a block
into compute-bound, memory-bound and communication time (time_split.kind_split). `roofline report` shows the
same scaling when given a TP=1 results file beside TP=N ones (`scaling_runs`).
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
    """Seconds per unfused block in compute-bound, memory-bound and communication ops: time_split's unfused block
    (each op's baseline row; in a TP run the max over ranks), summed by kind."""
    from roofline.time_split import block_before_after, kind_split

    return kind_split(block_before_after(res)[0])


def split_line(res: Results) -> str:
    from roofline.time_split import split_text

    split = block_split(res)
    total = sum(split.values())
    if not total:
        return ""
    n, dp = ranks(res), int(res.run.get("dp") or 1)  # type: ignore[call-overload]
    label = f"DP={dp}" if dp > 1 else f"TP={n}"
    return (f"{label} block{' (slowest rank per op)' if n != 1 or dp > 1 else ''}: {fmt.seconds(total)}, "
            f"{split_text(split, comm=True)}")


def ranks(res: Results) -> int:
    """N of a `profile --tp N` run; 1 for a run on one device."""
    return int(res.run.get("tp") or 1)  # type: ignore[call-overload]


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


def differing(a: Results, b: Results) -> list[str]:
    """The block fields (SAME_CONFIG) in which two runs differ: none, or they did not profile one block."""
    ca, cb = a.run.get("config", {}), b.run.get("config", {})
    return [k for k in SAME_CONFIG if ca.get(k) != cb.get(k)]  # type: ignore[union-attr]


def scaling(base: Results, tp_res: Results) -> list[Scaling]:
    """Per (op, variant) measured in both runs, then the unfused block ('block', all ops × times per block)."""
    n = ranks(tp_res)
    if n <= 1 or ranks(base) != 1:
        raise RooflineError("tp-scaling wants a TP=1 results file, then a `profile --tp N` one")
    differ = differing(base, tp_res)
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


def scaling_runs(results_list: list[Results]) -> list[tuple[Results, Results, list[Scaling]]]:
    """(TP=1 run, TP=N run, scaling) for each TP=N run of `results_list` (N > 1) and the first TP=1 run of the same
    block on the same device: what `roofline report tp1/results.json tp2/results.json …` shows. A TP=N run without
    such a partner is left out (the report pairs runs by itself, so only what `tp-scaling` would accept)."""
    device = lambda r: r.run.get("device", {}).get("name")  # type: ignore[union-attr]  # noqa: E731
    bases = [r for r in results_list if ranks(r) == 1]
    out = []
    for res in results_list:
        partners = (b for b in bases if not differing(b, res) and device(b) == device(res))
        base = next(partners, None) if ranks(res) > 1 else None
        if base is not None:
            out.append((base, res, scaling(base, res)))
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
