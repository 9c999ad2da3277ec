"""The roofline figure from saved Results (rendering never measures): where each op sits under the device's roofs.

Log-log, intensity (FLOP per byte of compulsory traffic) against achieved FLOP/s, under the roofs of the units and
dtypes the run used (roofs.py: datasheet solid, measured dashed, ridges marked). Every op is a point (colour =
group, marker = variant); an arrow goes from each unfused chain (summed FLOPs over summed bytes, at summed time)
to each fused variant that replaces it, whose label gives its speedup. labels.py places the labels.

Several Results overlay: one marker fill per run, the roofs of each distinct device.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

from roofline import fmt
from roofline.analysis.fusion import FusionResult, summarize
from roofline.analysis.placement import ridge_point
from roofline.render.figures.labels import Label, Obstacles, line_obstacles, place_labels, point_obstacles
from roofline.render.figures.roofs import draw_roofs, label_memory_roofs, roof_name, roofs
from roofline.render.style import (
    COMPUTE_COLOR,
    MARKER_AREA,
    MEMORY_COLOR,
    RUN_STYLES,
    SPEEDUP_BAD,
    SPEEDUP_GOOD,
    describe_runs,
    group_color,
    new_figure,
    run_labels,
    variant_marker,
)
from roofline.results import Results

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _log_limits(values: list[float], pad_low: float, pad_high: float) -> tuple[float, float]:
    good = [v for v in values if v > 0 and math.isfinite(v)] or [1.0]
    return 10 ** math.floor(math.log10(min(good) / pad_low)), max(good) * pad_high


def _chain_point(results: Results, f: FusionResult) -> tuple[float, float] | None:
    """(intensity, achieved FLOP/s) of the unfused chain: summed FLOPs / summed bytes, at summed time."""
    rows = [results.find(op) for op in f.chain_ops]
    flops = sum(r.flops for r in rows if r is not None)
    if not flops or f.chain_bytes <= 0 or f.chain_time_s <= 0:
        return None
    return flops / f.chain_bytes, flops / f.chain_time_s


def roofline_axes(ax: Axes, xs: list[float], ys: list[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Log-log axes of intensity against achieved FLOP/s around these points (room for labels right of the last
    column); returns the limits."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    xlim, ylim = _log_limits(xs, 3, 12), _log_limits(ys, 2, 4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("intensity (FLOP per byte of compulsory DRAM traffic)")
    ax.set_ylabel("achieved FLOP/s")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.si(v, "FLOP/s")))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", color="#e4e4e4", linewidth=0.6)
    return xlim, ylim


def roofline_figure(results_list: list[Results]) -> Figure:
    """The roofline of one or several runs (overlaid), ready to save."""
    fig = new_figure(12.5, 7.4)
    ax = fig.add_axes((0.075, 0.085, 0.68, 0.84))
    labels = run_labels(results_list)
    ax.set_title(f"Roofline · {describe_runs(results_list)}", loc="left", fontsize=12, fontweight="bold", pad=10)

    all_roofs = [roof for r in results_list for roof in roofs(r)]
    points, chains = _points(results_list), _chains(results_list)
    xs = [p[1] for p in points] + [c[1][0] for c in chains] + [roof.ridge for roof in all_roofs]
    ys = [p[2] for p in points] + [c[1][1] for c in chains] + [roof.peak_flops for roof in all_roofs]
    xlim, ylim = roofline_axes(ax, xs, ys)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    taken = Obstacles(fig.bbox.width, fig.bbox.height)
    taken.add(point_obstacles(ax, [(p[1], p[2]) for p in points] + [c[1] for c in chains], MARKER_AREA))
    taken.add(_shade_regions(ax, results_list[0], xlim, ylim))
    chain_labels, arrow_paths, speedups = _draw_fusions(ax, chains)
    taken.add(line_obstacles(ax, arrow_paths), line=True)
    draw_roofs(ax, all_roofs, xlim, ylim, taken, results_list[0].run.device.kind)
    label_memory_roofs(ax, all_roofs, xlim, ylim, taken)
    point_labels = _draw_points(ax, points, results_list, speedups)
    place_labels(ax, chain_labels + point_labels, taken)

    _legend(fig, points, labels, {roof.source for roof in all_roofs}, bool(chains))
    not_shown = _not_shown(results_list, labels)
    if not_shown:  # under the x-axis label, wherever the tick labels put it
        ax.annotate("\n".join(textwrap.wrap(not_shown, 170)), (0, 0), xycoords=("axes fraction", ax.xaxis.label),
                    xytext=(0, -4), textcoords="offset points", ha="left", va="top", fontsize=8, color="#5f6b76",
                    annotation_clip=False)
    return fig


Point = tuple[Any, float, float, int]  # (row, intensity, achieved FLOP/s, run index)
Chain = tuple[FusionResult, tuple[float, float], Any, int]  # (fusion, chain point, fused row, run index)


def _legend(fig: Figure, points: list[Point], run_names: list[str], sources: set[str], fusions: bool) -> None:
    """One legend beside the axes, in sections: group colours, variant markers, runs, roofs, fusion arrows."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none", label="group")]
    for group in dict.fromkeys(p[0].group for p in points):
        handles.append(Line2D([], [], marker="o", linestyle="none", color=group_color(group), label=group))
    handles.append(Line2D([], [], linestyle="none", label="variant"))
    for variant in dict.fromkeys(p[0].variant for p in points):
        handles.append(Line2D([], [], marker=variant_marker(variant), linestyle="none", color="#555555",
                              markerfacecolor="#999999", label=variant))
    if len(run_names) > 1:
        handles.append(Line2D([], [], linestyle="none", label="run"))
        for i, label in enumerate(run_names):
            style = RUN_STYLES[i % len(RUN_STYLES)]
            handles.append(Line2D([], [], marker="o", linestyle="none", color="#444444", alpha=style["alpha"],
                                  markerfacecolor="#444444" if style["filled"] else "white", label=label))
    if sources:
        handles.append(Line2D([], [], linestyle="none", label="roofs"))
    for source, dashes in (("datasheet", "-"), ("measured", "--")):
        if source in sources:
            handles.append(Line2D([], [], color="#333333", linestyle=dashes, label=source))
    if fusions:
        handles.append(Line2D([], [], marker="X", markersize=8, linestyle="none", color="#444444",
                              markerfacecolor="white", label="unfused chain"))
        handles.append(Line2D([], [], color="#555555", marker=">", markevery=[1],
                              label="→ fused (speedup" + (", run by run)" if len(run_names) > 1 else ")")))
    legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.775, 0.925), frameon=False,
                        fontsize=8.5, handlelength=1.8, borderaxespad=0)
    for text, handle in zip(legend.get_texts(), handles, strict=True):
        if handle.get_marker() in ("None", "", None) and handle.get_linestyle() in ("None", "none", ""):
            text.set_fontweight("bold")  # a section heading: no marker, no line


def _points(results_list: list[Results]) -> list[Point]:
    """One point per measured (op, variant, shape) of each run: its first row, as fusion and compare read it (of
    a TP run's rows, the max over ranks comes first)."""
    out = []
    for i, results in enumerate(results_list):
        firsts = {r.key: r for r in reversed(results.rows)}
        for row in (r for r in results.rows if firsts[r.key] is r and r.status == "ok"):
            if row.flops_per_s and row.intensity > 0 and math.isfinite(row.intensity):
                out.append((row, row.intensity, row.flops_per_s, i))
    return out


def _chains(results_list: list[Results]) -> list[Chain]:
    out = []
    for i, results in enumerate(results_list):
        for f in summarize(results):
            start, row = _chain_point(results, f), results.find(f.group, f.fused_variant)
            if start and row and row.flops_per_s:
                out.append((f, start, row, i))
    return out


def _primary_ridge(results: Results) -> tuple[float, str] | None:
    """The ridge the rows' `bound` used for the highest roof of the run (what the shading shows)."""
    placed = [r for r in results.ok_rows() if r.peak_flops_per_s and r.peak_bytes_per_s
              and math.isfinite(r.peak_flops_per_s) and math.isfinite(r.peak_bytes_per_s)]
    if not placed:
        return None
    top = max(placed, key=lambda r: r.peak_flops_per_s or 0.0)
    return ridge_point(top.peak_flops_per_s or 0.0, top.peak_bytes_per_s or 1.0), top.ceiling


def _shade_regions(ax: Axes, results: Results, xlim: tuple[float, float],
                   ylim: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    """Light memory/compute tints either side of the ridge; returns the boxes of their two captions."""
    found = _primary_ridge(results)
    if not found:
        return []
    ridge, key = found
    kind = results.run.device.kind
    ax.axvspan(xlim[0], ridge, color=MEMORY_COLOR, alpha=0.05, linewidth=0, zorder=0)
    ax.axvspan(ridge, xlim[1], color=COMPUTE_COLOR, alpha=0.05, linewidth=0, zorder=0)
    y = ylim[0] * 1.6
    captions = [
        ax.text(ridge / 1.15, y, "← memory-bound", color=MEMORY_COLOR, ha="right", va="bottom", fontsize=9,
                fontweight="bold", alpha=0.85),
        ax.text(ridge * 1.15, y, f"compute-bound →\n(ridge of {roof_name(key, kind)})", color=COMPUTE_COLOR,
                ha="left", va="bottom", fontsize=9, fontweight="bold", alpha=0.85, linespacing=1.1)]
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    if captions[1].get_window_extent(renderer).x1 > ax.get_window_extent(renderer).x1:  # a narrow compute side
        captions[1].set(x=xlim[1] / 1.15, y=y * 8, ha="right")  # against the right edge, above the other caption
    return [tuple(t.get_window_extent(renderer).extents) for t in captions]  # type: ignore[misc]


def _draw_points(ax: Axes, points: list[Point], results_list: list[Results],
                 speedups: dict[tuple[str, str], list[float]]) -> list[Label]:
    """One marker per measured row; each (op, variant) labelled once, at its first run, and joined by a thin
    line to the same row in later runs (so an overlay reads as 'this op moved from here to there'). A fused
    variant's label carries its speedup over the unfused chain (one per run, in run order), in green or red."""
    labels, first = [], {}
    for row, x, y, i in points:
        style = RUN_STYLES[i % len(RUN_STYLES)]
        color = group_color(row.group)
        marker = variant_marker(row.variant)
        size = MARKER_AREA * (1.8 if marker == "*" else 1.0)
        ax.scatter([x], [y], s=size, marker=marker, zorder=5, alpha=style["alpha"], linewidths=1.2,
                   facecolors=color if style["filled"] else "white", edgecolors=color if not style["filled"]
                   else "#222222")
        if (row.op, row.variant) in first:
            ax.plot([first[row.op, row.variant][0], x], [first[row.op, row.variant][1], y], color=color,
                    linewidth=0.8, linestyle=":", alpha=0.7, zorder=3)
            continue
        first[row.op, row.variant] = (x, y)
        several = len({r.variant for r in results_list[i].rows if r.op == row.op}) > 1
        text = row.op + (f" · {row.variant}" if several else "")
        found = speedups.get((row.op, row.variant))
        if not found:
            labels.append(Label(x, y, text))
            continue
        text_color = (SPEEDUP_GOOD if min(found) >= 1 else SPEEDUP_BAD if max(found) < 1 else "#222222")
        labels.append(Label(x, y, f"{text} {' → '.join(fmt.ratio(v) for v in found)}", color=text_color, bold=True))
    return labels


def _draw_fusions(ax: Axes, chains: list[Chain]) -> tuple[list[Label], list[list[Any]],
                                                           dict[tuple[str, str], list[float]]]:
    """Arrows unfused chain → fused variant; returns the chains' labels (at their first run only), the arrows'
    data paths and the speedups of each fused (op, variant), run by run, for its point label."""
    from matplotlib.patches import FancyArrowPatch

    labels, paths, drawn = [], [], set()
    speedups: dict[tuple[str, str], list[float]] = {}
    for f, start, row, i in chains:
        end, color = (row.intensity, row.flops_per_s), group_color(row.group)
        if len(f.chain_ops) > 1 and (f.group, i) not in drawn:
            ax.scatter([start[0]], [start[1]], s=MARKER_AREA, marker="X", facecolors="white", edgecolors=color,
                       linewidths=1.4, zorder=5, alpha=RUN_STYLES[i % len(RUN_STYLES)]["alpha"])
            if not any(g == f.group for g, _ in drawn):
                labels.append(Label(*start, "unfused " + " + ".join(f.chain_ops), color="#444444"))
            drawn.add((f.group, i))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color="#666666",
                                     linewidth=1.0, shrinkA=5, shrinkB=6, zorder=4, alpha=0.7 if i == 0 else 0.4))
        speedups.setdefault((row.op, row.variant), []).append(f.speedup)
        paths.append([start, end])
    return labels, paths, speedups


def _not_shown(results_list: list[Results], run_names: list[str]) -> str:
    """'Not shown: 3 failed: residual_dropout_norm; …' for the rows that have no point, variants named only when
    some of the op's variants did get one."""
    parts = []
    for results, name in zip(results_list, run_names, strict=True):
        missing: dict[str, dict[str, list[str]]] = {}
        for r in results.rows:
            if r.status != "ok":
                missing.setdefault(r.status, {}).setdefault(r.op, []).append(r.variant)
        for status, ops in missing.items():
            named = [op if len(v) == len({r.variant for r in results.rows if r.op == op}) else f"{op} ({', '.join(v)})"
                     for op, v in ops.items()]
            count = sum(len(v) for v in ops.values())
            parts.append(("" if len(results_list) == 1 else f"{name}: ") + f"{count} {status}: {', '.join(named)}")
    return "Not shown: " + "; ".join(parts) + " (see the report's warnings)" if parts else ""
