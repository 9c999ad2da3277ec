"""A sweep's series against N: time and peak memory of every attention variant and of the whole block, with slopes.

Naive attention writes the [b, h, N, N] scores to memory: its memory grows as N², fused attention's as N, while
both times grow as N² (the FLOPs do). The slopes are least-squares fits on log-log axes over the points measured
ok. The block per N is summed two ways (block.py): "unfused" (each op at its baseline variant) and "best" (each
fusion chain at its fastest fused variant where that is faster, or where the chain did not fit).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from roofline.analysis.block import BlockOp, block_after, block_before, complete
from roofline.results import Results


@dataclass
class Series:
    """One line of the plot: (N, seconds, peak bytes) where measured ok; (N, note) where not."""

    name: str  # the attention variant, or "block (unfused)" / "block (best)"
    dtype: str
    kind: str  # "attention" | "block"
    points: list[tuple[int, float, int | None]]
    missing: list[tuple[int, str]]

    @property
    def label(self) -> str:
        return f"{self.name} · {self.dtype}"

    def time_slope(self) -> float | None:
        return loglog_slope([(n, t) for n, t, _ in self.points])

    def memory_slope(self) -> float | None:
        return loglog_slope([(n, m) for n, _, m in self.points if m])


def loglog_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log y against log N (None below two distinct N)."""
    pts = [(math.log(n), math.log(y)) for n, y in points if y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def split_runs(results: Results) -> list[Results]:
    """One Results per (dtype, N), as `profile` would have saved it (for the roofline figure, blocks or `compare`)."""
    runs = []
    for dtype, n in dict.fromkeys((r.dtype, r.seq_len) for r in results.rows):
        config = dataclasses.replace(results.run.config, seq_len=n, dtype=dtype)
        rows = [r for r in results.rows if (r.dtype, r.seq_len) == (dtype, n)]
        runs.append(Results(run=dataclasses.replace(results.run, config=config), rows=rows))
    return runs


def _total(ops: list[BlockOp]) -> tuple[float, int | None]:
    mems = [o.peak_mem_bytes for o in ops]
    return sum(o.time_s for o in ops), (None if None in mems else max(m for m in mems if m is not None))


def block_point(point: Results, best: bool) -> tuple[float, int | None] | None:
    """(seconds per block, largest op peak memory) at one point, or None when some op of the block is missing."""
    ops = block_after(point, fused_only=False) if best else block_before(point)
    return _total(ops) if ops and complete(point, ops) else None


def sweep_series(results: Results) -> list[Series]:
    """Each attention variant per dtype, then the block (unfused, best) per dtype where the block was swept."""
    out: dict[tuple[str, str], Series] = {}
    for r in results.rows:
        if r.op == "attention":
            s = out.setdefault((r.variant, r.dtype), Series(r.variant, r.dtype, "attention", [], []))
            if r.status == "ok" and r.time_median_s:
                s.points.append((r.seq_len, r.time_median_s, r.peak_mem_bytes))
            else:
                s.missing.append((r.seq_len, f"{r.status}: {r.note}"))
    if results.run.sweep and results.run.sweep.block:
        points = split_runs(results)
        for dtype in dict.fromkeys(r.dtype for r in results.rows):
            for best in (False, True):
                s = Series(f"block ({'best' if best else 'unfused'})", dtype, "block", [], [])
                for point in sorted((p for p in points if p.run.config.dtype == dtype),
                                    key=lambda p: p.run.config.seq_len):
                    total = block_point(point, best)
                    if total:
                        s.points.append((point.run.config.seq_len, *total))
                    else:
                        s.missing.append((point.run.config.seq_len, "an op of the block was not measured"))
                out[s.name, dtype] = s
    return list(out.values())

