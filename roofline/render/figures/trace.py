"""A trace's figures: its roofline (one point per block op, or per call with --kernels) and where its time goes.

The roofline of the groups is the roofline figure of `profile` (roofline.py) drawn over one row per (block op,
phase); the per-call view draws every call as a dot — colour per block op, area per time — under the same roofs.
Groups with no FLOPs (copies, casts) have no place on a log-scale FLOP axis: the report lists them with their
bandwidth instead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from roofline import fmt
from roofline.analysis.trace import TraceGroup, groups, trace_rows
from roofline.render.figures.labels import Obstacles
from roofline.render.figures.roofline import roofline_axes
from roofline.render.figures.roofs import draw_roofs, label_memory_roofs, roofs
from roofline.render.style import KIND_COLORS, new_figure
from roofline.results import Results, Row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OP_COLORS = ("#e08a00", "#1f6fb4", "#2a9d5c", "#c23b75", "#7b52c7", "#8c5a2b", "#2f9e8f", "#b8860b", "#5f6b76",
             "#d1495b", "#3d5a80", "#66a182", "#9c6644", "#6d597a", "#e76f51", "#264653")


def group_rows(res: Results) -> Results:
    """The run with one row per (block op, phase) holding FLOPs: what roofline_figure draws for a trace."""
    rows = []
    for g in groups(res):
        if not g.flops or not g.flops_per_s:
            continue
        like = next(r for r in trace_rows(res) if r.op == g.op)
        rows.append(dataclasses.replace(like, variant=g.phase, flops=g.flops, min_bytes=g.min_bytes,
                                        intensity=g.intensity, time_median_s=g.time_s, flops_per_s=g.flops_per_s,
                                        bytes_per_s=g.bytes_per_s, bound=g.bound, pct_of_roof=g.pct_of_roof,
                                        status="ok", trace=None))
    return Results(run=res.run, rows=rows)


def kernels_figure(res: Results) -> Figure:
    """Every call under the roofs: colour = block op, area ∝ time; calls with no FLOPs are left out."""
    from matplotlib.lines import Line2D

    fig = new_figure(12.5, 7.4)
    ax = fig.add_axes((0.075, 0.085, 0.68, 0.84))
    ax.set_title(f"Roofline, call by call · {fmt.describe_run(res)}", loc="left", fontsize=12, fontweight="bold")
    points = [r for r in trace_rows(res) if r.flops and r.flops_per_s and math.isfinite(r.intensity)]
    ops = list(dict.fromkeys(r.op for r in points))
    colors = {op: OP_COLORS[i % len(OP_COLORS)] for i, op in enumerate(ops)}
    all_roofs = roofs(res)
    xlim, ylim = roofline_axes(ax, [r.intensity for r in points] + [roof.ridge for roof in all_roofs],
                               [r.flops_per_s or 1.0 for r in points] + [roof.peak_flops for roof in all_roofs])
    longest = max((r.time_median_s or 0.0 for r in points), default=1.0) or 1.0
    for r in points:
        ax.scatter([r.intensity], [r.flops_per_s], s=20 + 280 * (r.time_median_s or 0.0) / longest, zorder=5,
                   color=colors[r.op], alpha=0.75, marker="o" if r.trace and r.trace.phase == "forward" else "v",
                   edgecolors="#222222", linewidths=0.5)
    taken = Obstacles(fig.bbox.width, fig.bbox.height)
    draw_roofs(ax, all_roofs, xlim, ylim, taken, res.run.device.kind)
    label_memory_roofs(ax, all_roofs, xlim, ylim, taken)
    handles = [Line2D([], [], marker="o", linestyle="none", color=colors[op], label=op) for op in ops]
    handles.append(Line2D([], [], marker="v", linestyle="none", color="#777777", label="backward"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.775, 0.925), frameon=False, fontsize=8.5)
    return fig


def time_figure(res: Results) -> Figure:
    """Seconds of the step per block op (and phase), coloured compute- vs memory-bound, with each share."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    found = groups(res)
    fig = new_figure(12.5, max(len(found), 1) * 0.3 + 1.6, layout="constrained")
    ax = fig.add_subplot()
    labels = [_label(g) for g in found]
    ax.barh(range(len(found)), [g.time_s for g in found], color=[KIND_COLORS.get(g.bound, "#999999") for g in found],
            height=0.68, zorder=2)
    ax.set_yticks(range(len(found)), labels, fontsize=8.5)
    ax.set_ylim(len(found) - 0.5, -0.5)
    longest = max((g.time_s for g in found), default=1.0) or 1.0
    ax.set_xlim(0, longest * 1.3)
    for k, g in enumerate(found):
        ax.text(g.time_s + longest * 0.015, k, f"{fmt.seconds(g.time_s)}  {100 * g.share:.0f} %", va="center",
                fontsize=7.5, color="#333333")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.seconds(v) if v else "0"))
    ax.grid(True, axis="x", color="#e4e4e4", linewidth=0.6, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    total = sum(g.time_s for g in found)
    ax.set_title(f"Where the step's time goes · {fmt.seconds(total)} of kernels · {fmt.describe_run(res)}", loc="left",
                 fontsize=10.5, fontweight="bold")
    fig.legend(handles=[Patch(color=KIND_COLORS[k], label=f"{k}-bound") for k in ("compute", "memory")],
               loc="outside upper right", ncols=2, frameon=False, fontsize=9)
    return fig


def _label(g: TraceGroup) -> str:
    return g.op + (" (backward)" if g.phase == "backward" else "")


def placed(rows: list[Row]) -> bool:
    """Whether any call has a place on the roofline (FLOPs and a time)."""
    return any(r.flops and r.flops_per_s for r in rows)
