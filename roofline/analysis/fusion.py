"""Fusion before/after: an unfused chain of ops vs each fused variant that replaces it.

The groups are those the run's catalog declared, saved in its results (`run.fusion_groups`): an op with `replaces`
(attention replaces qk_t → softmax → attn_v) or with a fused variant of its own (our Triton softmax vs
PyTorch's). Before = the chain's summed time, model bytes and peak memory (the chain run end to end where a
naive/eager variant measured it, else the largest of the chain's ops), each chain op at its first (baseline)
variant; after = each fused variant's row.
"""

from __future__ import annotations

from dataclasses import dataclass

from roofline.results import Results, Row


@dataclass
class FusionResult:
    group: str
    fused_variant: str
    chain_time_s: float
    fused_time_s: float
    chain_bytes: float
    fused_bytes: float
    chain_peak_mem: int | None
    fused_peak_mem: int | None
    chain_ops: list[str]
    unfused_time_s: float | None = None  # the chain run end to end as one variant (naive / eager), if measured
    chain_saved_bytes: int | None = None  # train mode: activation memory kept for the backward, chain vs fused
    fused_saved_bytes: int | None = None

    @property
    def speedup(self) -> float:
        return self.chain_time_s / self.fused_time_s

    @property
    def bytes_saved(self) -> float:
        return self.chain_bytes - self.fused_bytes

    @property
    def mem_saved(self) -> int | None:
        if self.chain_peak_mem is None or self.fused_peak_mem is None:
            return None
        return self.chain_peak_mem - self.fused_peak_mem


def baseline(results: Results, op: str) -> Row | None:
    """The op's first (baseline) variant if it was measured ok and is not itself fused, else None."""
    candidates = [r for r in results.rows if r.op == op]
    if not candidates:
        return None
    first = candidates[0]
    return first if first.status == "ok" and not first.fused else None


def summarize(results: Results) -> list[FusionResult]:
    """One FusionResult per (group, fused variant measured ok) whose whole chain was measured ok.

    Like the chain's ops (baseline: an op's first row), each fused variant is read at its first row of the
    chain's shape: a sweep's other shapes are left out (split the run first, as `report` does), and of a TP
    run's rows (the max over ranks, then each rank's) the max is taken.
    """
    out = []
    present = {r.op for r in results.rows}
    for g in results.run.fusion_groups:
        chain_names = [name for name in g.chain if name in present]
        chain = [baseline(results, name) for name in chain_names]
        if not chain or any(r is None for r in chain):
            continue
        chain_rows = [r for r in chain if r is not None]
        mems = [r.peak_mem_bytes for r in chain_rows]
        unfused = baseline(results, g.fused_op) if g.chain != (g.fused_op,) else None
        chain_mem = unfused.peak_mem_bytes if unfused else (None if None in mems else max(mems))  # type: ignore
        saved = [r.saved_new_bytes for r in chain_rows]
        chain_saved = unfused.saved_new_bytes if unfused else (None if None in saved else sum(saved))  # type: ignore
        firsts: dict[tuple[object, ...], Row] = {}
        for r in results.rows:
            if r.op == g.fused_op and r.fused and r.key[2:] == chain_rows[0].key[2:]:
                firsts.setdefault(r.key, r)
        for fused in (r for r in firsts.values() if r.status == "ok"):
            out.append(FusionResult(
                group=g.name, fused_variant=fused.variant,
                chain_time_s=sum(r.time_median_s or 0.0 for r in chain_rows),
                fused_time_s=fused.time_median_s or float("nan"),
                chain_bytes=sum(r.min_bytes for r in chain_rows), fused_bytes=fused.min_bytes,
                chain_peak_mem=chain_mem, fused_peak_mem=fused.peak_mem_bytes,
                chain_ops=[r.op for r in chain_rows],
                unfused_time_s=unfused.time_median_s if unfused else None,
                chain_saved_bytes=chain_saved, fused_saved_bytes=fused.saved_new_bytes,
            ))
    return out


def unfused_block(results: Results) -> list[Row]:
    """The unfused block in block order: the baseline row of each plain op (ops that stand for a chain, such as
    attention, left out), those measured ok only."""
    fused_ops = {g.fused_op for g in results.run.fusion_groups if g.chain != (g.fused_op,)}
    rows = (baseline(results, op) for op in dict.fromkeys(r.op for r in results.rows) if op not in fused_ops)
    return [r for r in rows if r is not None]
