"""The hierarchical roofline from saved Results with hardware counters (`profile --counters`): rendering never measures.

Each counted op is three points on one chart, at the same height (its achieved FLOP/s) and at three intensities:
FLOPs per L1 byte, per L2 byte and per DRAM byte, joined by a thin line. Each memory level has its own roof
(bandwidth × intensity): DRAM and L2 from `roofline calibrate` where measured (DRAM from the datasheet
otherwise); calibrate has no L1 test, so the L1 roof is drawn only when a bandwidth for it is known, and the
legend says so. Kernels that load through TMA (cuBLAS GEMMs and flash attention on Hopper) move their operands
from L2 straight into shared memory, past the L1/TEX counters: an op with almost no L1 bytes gets no L1 point.
A point far left of its roof's ridge at one level says that level is the bottleneck; the gap
between an op's L2 and DRAM points is its L2 reuse.

FLOPs are the formula's useful work, as on the main roofline, so the DRAM point differs from the main plot's
point only by the bytes really moved; executed FLOPs (which may include masked work, or miss instructions the
counters do not see) are compared with the formula in the counters table instead. y = FLOPs / median time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from roofline import fmt
from roofline.fmt import describe_run
from roofline.render.style import new_figure
from roofline.results import Results, Row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LEVELS = (("L1", "measured_l1_bytes", "^"), ("L2", "measured_l2_bytes", "s"), ("DRAM", "measured_dram_bytes", "o"))
LEVEL_COLORS = {"L1": "#9a7418", "L2": "#2b7a78", "DRAM": "#333333"}
L1_BYPASS = 0.01  # an op whose L1/TEX bytes are < 1 % of its L2 bytes loads past L1: no L1 point


def memory_roofs(results: Results) -> dict[str, tuple[float, str]]:
    """Bandwidth per memory level → (bytes/s, 'measured'|'datasheet'), only the levels with a known roof (calibrate
    measures no L1 bandwidth)."""
    measured, peaks = results.run.peaks.measured, results.run.peaks
    roofs: dict[str, tuple[float, str]] = {}
    if measured and measured.memory_bandwidth:
        roofs["DRAM"] = (measured.memory_bandwidth, "measured")
    elif peaks.datasheet_bandwidth:
        roofs["DRAM"] = (peaks.datasheet_bandwidth, "datasheet")
    if measured and measured.l2_bandwidth:
        roofs["L2"] = (measured.l2_bandwidth, "measured")
    return roofs


def op_points(row: Row) -> tuple[float, dict[str, float]] | None:
    """(achieved FLOP/s, {level: intensity}) of one counted row; None when it cannot be placed."""
    flops = row.flops
    if row.status != "ok" or not row.time_median_s or not flops:
        return None
    moved = {level: getattr(row, field) for level, field, _ in LEVELS if getattr(row, field)}
    if "L1" in moved and moved["L1"] < L1_BYPASS * moved.get("L2", 0):
        del moved["L1"]  # TMA (Hopper GEMM, flash attention) copies L2 → shared memory past the L1/TEX counters
    levels = {level: flops / nbytes for level, nbytes in moved.items()}
    return (flops / row.time_median_s, levels) if levels else None


def counters_figure(results: Results) -> Figure | None:
    """The hierarchical roofline of a run measured with --counters; None when no row has counters."""
    from matplotlib import colormaps

    placed = [(r, p) for r in results.rows if r.measured_kernels and (p := op_points(r))]
    if not placed:
        return None
    fig = new_figure(11, 7, layout="constrained")
    ax = fig.add_subplot()
    tab20 = colormaps["tab20"].colors  # type: ignore[attr-defined]
    colors = tab20[0::2] + tab20[1::2]  # the ten strong colours first, their pale twins after
    xs = [x for _, (_, lv) in placed for x in lv.values()]
    x_lo, x_hi = min(xs) / 4, max(xs) * 4
    for i, (row, (achieved, levels)) in enumerate(placed):
        color = colors[i % len(colors)]
        ordered = [(levels[lv], lv, m) for lv, _, m in LEVELS if lv in levels]
        ax.plot([x for x, _, _ in ordered], [achieved] * len(ordered), color=color, lw=0.8, alpha=0.7)
        for x, _, marker in ordered:
            ax.scatter([x], [achieved], color=color, marker=marker, s=50, zorder=3, edgecolors="white", lw=0.5)
        ax.annotate(f"{row.op}·{row.variant}", (ordered[-1][0], achieved), fontsize=7, color=color,
                    xytext=(4, 3), textcoords="offset points")
    peaks = {r.ceiling: r.peak_flops_per_s for r, _ in placed if r.peak_flops_per_s}
    sources = {r.ceiling: r.ceiling_source.split()[0] for r, _ in placed if r.ceiling_source}
    achieved = [a for _, (a, _) in placed]
    top, cap = max([*peaks.values(), *achieved]) * 2, max(peaks.values()) if peaks else math.inf
    roofs = memory_roofs(results)
    grid = [x_lo * (x_hi / x_lo) ** (k / 100) for k in range(101)]
    for level, (bandwidth, source) in roofs.items():
        ax.plot(grid, [min(bandwidth * x, cap) for x in grid], color=LEVEL_COLORS[level],
                ls="-" if source == "datasheet" else "--", lw=1.4,
                label=f"{level} roof {fmt.bandwidth(bandwidth)} ({source})")
    for ceiling, peak in sorted(peaks.items()):
        ax.axhline(peak, color="#1f6fb4", lw=1.2, ls=":",
                   label=f"{ceiling} {fmt.flops_rate(peak)} ({sources.get(ceiling, 'datasheet')})")
    for level, _, marker in LEVELS:
        note = "" if level in roofs else " — no roof (not measured)"
        ax.scatter([], [], marker=marker, color="#777777", label=f"{level} intensity{note}")
    ax.set(xscale="log", yscale="log", xlim=(x_lo, x_hi), ylim=(min(achieved) / 4, top),
           xlabel="intensity (FLOP per byte moved at that level)", ylabel="achieved FLOP/s (timing pass)",
           title=f"Hierarchical roofline (Nsight Compute counters)\n{describe_run(results)}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig
