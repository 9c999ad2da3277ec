"""Tensor-parallel scaling (`roofline tp-scaling BASE TP`): how a block's time changes from one device to N ranks.

Reads two saved results files (a `roofline profile` run and a `roofline profile --tp N` run of the same
block), never measures. Per op and for the unfused block:

    efficiency = time(TP=1) / (N · time(TP=N))

1 is linear scaling; a replicated op (norms, residual adds) scores 1/N, and the block's efficiency also pays
for the all-reduces, which exist only at TP > 1. A TP run's rows are read at their max over ranks (the first
row of each op, measure/parallel.merge), since a TP step waits for its slowest rank. `block_split` splits a
block into compute-bound, memory-bound and communication time (block.kind_split). `roofline report` shows the same
scaling when given a TP=1 results file beside TP=N ones (`scaling_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from roofline import fmt
from roofline.analysis.block import block_before, kind_split, split_text
from roofline.errors import RooflineError
from roofline.results import Results


def block_split(res: Results) -> dict[str, float]:
    """Seconds per unfused block in compute-bound, memory-bound and communication ops: the unfused block (each
    op's baseline row; in a TP run the max over ranks), summed by kind."""
    return kind_split(block_before(res))


def split_line(res: Results) -> str:
    split = block_split(res)
    total = sum(split.values())
    if not total:
        return ""
    c = res.run.config
    label = " ".join(f"{name.upper()}={getattr(c, name)}" for name in ("tp", "dp", "pp") if getattr(c, name) > 1)
    several = c.tp * c.dp * c.pp > 1
    return (f"{label or 'TP=1'} block{' (slowest rank per op)' if several else ''}: {fmt.seconds(total)}, "
            f"{split_text(split, comm=True)}")


def ranks(res: Results) -> int:
    """N of a `profile --tp N` run; 1 for a run on one device."""
    return res.run.config.tp


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
    return [k for k in SAME_CONFIG if getattr(a.run.config, k) != getattr(b.run.config, k)]


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
    bases = [r for r in results_list if ranks(r) == 1]
    out = []
    for res in results_list:
        partners = (b for b in bases if not differing(b, res) and b.run.device.name == res.run.device.name)
        base = next(partners, None) if ranks(res) > 1 else None
        if base is not None:
            out.append((base, res, scaling(base, res)))
    return out
