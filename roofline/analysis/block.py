"""Where one block's time goes, before and after fusion: the one place that sums a block.

Before = the unfused block: each plain op at its baseline variant × the times it runs per block. After = the same
block with each fusion chain replaced by its fastest fused variant, where that is faster than the chain (or where
the chain could not run at all: naive attention that does not fit). A longer chain claims its ops first, so
attention's fused variants replace softmax before softmax's own fused kernel would. Each op's time counts as
compute-bound, memory-bound or communication (a collective, unit "comm", is bound by the interconnect).

The terminal's "Unfused block" line, the time-split figure, the report's split, `tp-scaling` and the sweep's block
series all read this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from roofline.analysis.fusion import unfused_block
from roofline.results import Results, Row

KINDS = ("compute", "memory", "comm")
KIND_NAMES = {"compute": "compute-bound", "memory": "memory-bound", "comm": "communication",
              "bubble": "bubble"}  # a pipeline step's idle time (analysis/pipeline.py)


@dataclass(frozen=True)
class BlockOp:
    """One op's share of a block: seconds per block (time per call × per_block); a fused variant also keeps the
    seconds per block of the chain it replaced."""

    op: str
    variant: str
    label: str
    time_s: float
    bound: str
    kind: str  # where the time counts: the bound ("compute" | "memory"), or "comm" for a collective
    replaced_s: float | None = None
    peak_mem_bytes: int | None = None


def _block_op(row: Row, label: str | None = None, replaced_s: float | None = None) -> BlockOp:
    per = f" ×{row.per_block}" if row.per_block > 1 else ""
    return BlockOp(row.op, row.variant, label or row.op + per, (row.time_median_s or 0.0) * row.per_block, row.bound,
                   "comm" if row.unit == "comm" else row.bound, replaced_s, row.peak_mem_bytes)


def block_before(results: Results) -> list[BlockOp]:
    """The unfused block in block order: each plain op measured ok, at its baseline variant. A pipeline's send/recv
    (group "pipeline") is not part of a block: it runs once per stage and microbatch (analysis/pipeline.py)."""
    return [_block_op(row) for row in unfused_block(results)
            if row.bound in ("compute", "memory") and row.group != "pipeline"]


def _fastest(results: Results, op: str, fused_only: bool) -> Row | None:
    """The fastest variant of `op` measured ok, of its fused ones only or of all (each variant at its first row: a TP
    run's max over ranks)."""
    firsts: dict[str, Row] = {}
    for r in results.rows:
        if r.op == op and (r.fused or not fused_only):
            firsts.setdefault(r.variant, r)
    ok = [r for r in firsts.values() if r.status == "ok" and r.time_median_s]
    return min(ok, key=lambda r: r.time_median_s or math.inf) if ok else None


def block_after(results: Results, fused_only: bool = True) -> list[BlockOp]:
    """The block with each chain replaced by its fastest fused variant where that is faster, or where the chain
    could not be measured whole; in block order (the order of the rows). With fused_only False, the fastest way to
    run the block: any variant of the op that stands for a chain (naive attention or the eager norm chain, run end
    to end, count too)."""
    after = {o.op: o for o in block_before(results)}
    present = {r.op for r in results.rows}
    claimed: set[str] = set()
    for g in sorted(results.run.fusion_groups, key=lambda g: -len(g.chain)):
        chain = [op for op in g.chain if op in present]
        fused = _fastest(results, g.fused_op, fused_only)
        if fused is None or not chain or claimed & set(chain):
            continue
        chain_s = sum(after[op].time_s for op in chain) if all(op in after for op in chain) else math.inf
        if (fused.time_median_s or 0.0) * fused.per_block >= chain_s:
            continue
        per = f" ×{fused.per_block}" if fused.per_block > 1 else ""
        for op in chain:
            after.pop(op, None)
        after[g.fused_op] = _block_op(fused, f"{g.name} · {fused.variant}{per}",
                                      chain_s if math.isfinite(chain_s) else None)
        claimed.update(chain)
    first_row = {r.op: i for i, r in reversed(list(enumerate(results.rows)))}
    return sorted(after.values(), key=lambda o: first_row.get(o.op, len(first_row)))


def block_before_after(results: Results) -> tuple[list[BlockOp], list[BlockOp]]:
    return block_before(results), block_after(results)


def complete(results: Results, ops: list[BlockOp]) -> bool:
    """Whether `ops` covers every plain op of the block (each op with a row, bar those a fused op stands for)."""
    fused_ops = {g.fused_op for g in results.run.fusion_groups if g.chain != (g.fused_op,)}
    covered = {o.op for o in ops} | {op for o in ops for g in results.run.fusion_groups if g.fused_op == o.op
                                     for op in g.chain}
    return all(r.op in covered for r in results.rows if r.op not in fused_ops)


def kind_split(ops: list[BlockOp]) -> dict[str, float]:
    """Seconds per block in compute-bound, memory-bound and communication ops (0.0 for a kind with none)."""
    split = dict.fromkeys(KINDS, 0.0)
    for o in ops:
        split[o.kind] += o.time_s
    return split


def split_text(split: dict[str, float], comm: bool = False) -> str:
    """'26 % compute-bound, 67 % memory-bound, 7 % communication': communication named when there is some, or
    when `comm` asks for it (a TP=1 run beside TP=N ones)."""
    total = sum(split.values()) or float("nan")
    return ", ".join(f"{100 * seconds / total:.0f} % {KIND_NAMES[kind]}" for kind, seconds in split.items()
                     if kind != "comm" or seconds or comm)
