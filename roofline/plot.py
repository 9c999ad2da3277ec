"""Roofline plots from saved Results: where each op sits under the device's roofs, and where the block's time goes.

Two figures, drawn from Results only (rendering never measures):
- roofline: log-log, intensity (FLOP per byte of compulsory traffic) against achieved FLOP/s. One memory roof
  (y = bandwidth × intensity) and one compute roof per unit and dtype the run used; datasheet roofs solid,
  measured roofs dashed, each labelled with its value and its ridge point (peak / bandwidth) marked. Every op
  is a point (colour = group, marker = variant); an arrow goes from each unfused chain (summed FLOPs over
  summed bytes, at summed time) to each fused variant that replaces it, labelled with the speedup.
- time split: seconds per block of each op (× per_block), coloured compute- vs memory-bound, before fusion
  (every plain op at its baseline variant) and after (each fusion chain replaced by its best fused variant).

Several Results overlay: one marker fill per run, the roofs of each distinct device. matplotlib is imported
inside the functions, so importing this module (and `roofline --help`) stays fast.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from roofline import fmt, model
from roofline.fusion import FusionResult, _baseline, groups, summarize
from roofline.plot_labels import (
    Label,
    Obstacle,
    axes_bounds,
    centred_box,
    choose,
    line_obstacles,
    place_labels,
    point_obstacles,
    rotated_boxes,
    text_size,
)
from roofline.results import Results

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COMPUTE_COLOR = "#1f6fb4"  # compute-bound: the same hue in plots, the HTML report and the terminal (cyan)
MEMORY_COLOR = "#c23b75"  # memory-bound (magenta in the terminal)
BOUND_COLORS = {"compute": COMPUTE_COLOR, "memory": MEMORY_COLOR}
GROUP_COLORS = {"attention": "#e08a00", "norm": "#2a9d5c", "ffn": "#7b52c7", "moe": "#8c5a2b"}
OTHER_COLOR = "#666666"
VARIANT_MARKERS = {"torch": "o", "naive": "s", "eager": "p", "sdpa_flash": "^", "sdpa_efficient": "v",
                   "sdpa_cudnn": "D", "triton": "*", "compile": "P"}
SPARE_MARKERS = ("h", "p", "<", ">", "d", "8")
DEVICE_ROOF_COLORS = ("#333333", "#9a7418", "#2b7a78", "#7a2b5e")
RUN_STYLES = ({"filled": True, "alpha": 0.95}, {"filled": False, "alpha": 1.0},
              {"filled": True, "alpha": 0.4}, {"filled": False, "alpha": 0.5})
MARKER_AREA = 70.0  # scatter size, points²
SPEEDUP_GOOD, SPEEDUP_BAD = "#1a7f37", "#b42318"


def group_color(group: str) -> str:
    return GROUP_COLORS.get(group, OTHER_COLOR)


def variant_marker(variant: str) -> str:
    if variant in VARIANT_MARKERS:
        return VARIANT_MARKERS[variant]
    return SPARE_MARKERS[sum(map(ord, variant)) % len(SPARE_MARKERS)]  # stable across runs and processes


def describe_run(results: Results) -> str:
    """'gpt-7b · prefill · batch 1 · seq 8192 · bf16 · NVIDIA H100 SXM': the run in one line."""
    c: dict[str, Any] = results.run.get("config", {})  # type: ignore[assignment]
    shape = f"seq {c.get('seq_len')}" if c.get("mode") != "decode" else f"kv {c.get('kv_len')}"
    return (f"{c.get('name', '?')} · {c.get('mode', '?')} · batch {c.get('batch')} · {shape} · "
            f"{c.get('dtype')} · {_device(results).get('name', '?')}")


def run_labels(results_list: list[Results]) -> list[str]:
    """A short name per run that tells overlaid runs apart: only the fields that differ ('seq 2048')."""
    def cfg(r: Results) -> dict[str, Any]:
        return r.run.get("config", {})  # type: ignore[return-value]

    fields: list[Callable[[Results], str]] = [
        lambda r: str(_device(r).get("name", "?")), lambda r: str(cfg(r).get("name")),
        lambda r: str(cfg(r).get("mode")), lambda r: f"batch {cfg(r).get('batch')}",
        lambda r: f"seq {cfg(r).get('seq_len')}", lambda r: f"kv {cfg(r).get('kv_len')}",
        lambda r: str(cfg(r).get("dtype")),
    ]
    differing = [f for f in fields if len({f(r) for r in results_list}) > 1]
    labels = [" · ".join(f(r) for f in differing) for r in results_list]
    if len(set(labels)) < len(labels):
        labels = [f"run {i + 1} ({r.run.get('started_at', '?')})" for i, r in enumerate(results_list)]
    return labels


def _device(results: Results) -> dict[str, Any]:
    return results.run.get("device", {})  # type: ignore[return-value]


@dataclass(frozen=True)
class Roof:
    """One compute roof with the memory roof of the same source: attainable = min(peak, intensity × bandwidth)."""

    device: str
    key: str  # "tensor.bf16", "vector.fp32"
    source: str  # "datasheet" | "measured"
    peak_flops: float
    bandwidth: float

    @property
    def ridge(self) -> float:
        return model.ridge_point(self.peak_flops, self.bandwidth)


def roofs(results: Results) -> list[Roof]:
    """The compute roofs of the units and dtypes the run's measured rows used, datasheet then measured.

    A source that lacks a bandwidth borrows the other's, so a measured compute roof still has a ridge.
    """
    peaks: dict[str, Any] = results.run.get("peaks", {})  # type: ignore[assignment]
    sheet = peaks.get("datasheet") or {}
    measured = peaks.get("measured") or {}
    sheet_bw, measured_bw = sheet.get("memory_bandwidth") or 0.0, measured.get("memory_bandwidth") or 0.0
    used = sorted({r.ceiling for r in results.ok_rows() if r.ceiling}, key=lambda k: (not k.startswith("tensor"), k))
    device = str(_device(results).get("name", "?"))
    out = []
    for source, flops, bandwidth in (("datasheet", sheet.get("flops") or {}, sheet_bw or measured_bw),
                                     ("measured", measured.get("peak_flops") or {}, measured_bw or sheet_bw)):
        out += [Roof(device, key, source, flops[key], bandwidth) for key in used if flops.get(key) and bandwidth]
    return out


def roof_name(key: str, device_kind: str = "cuda") -> str:
    """'tensor.bf16' → 'bf16 tensor cores'; 'vector.fp32' → 'fp32 CUDA cores' (or 'fp32 vector' on a CPU)."""
    unit, _, dtype = key.partition(".")
    if unit == "tensor":
        return f"{dtype} tensor cores" if device_kind == "cuda" else f"{dtype} matmul"
    return f"{dtype} CUDA cores" if device_kind == "cuda" else f"{dtype} vector"


@dataclass(frozen=True)
class BlockOp:
    """One op's share of a block: seconds per block (time per call × per_block)."""

    op: str
    variant: str
    label: str
    time_s: float
    bound: str


def block_before_after(results: Results) -> tuple[list[BlockOp], list[BlockOp]]:
    """The block's ops before fusion (each plain op at its baseline variant, as fusion.block_time_split counts
    them) and after (each fusion chain replaced by its fastest fused variant; a longer chain claims its ops
    first, so attention's fused variants replace softmax before softmax's own fused kernel would)."""
    fused_ops = {g.fused_op for g in groups() if g.chain != (g.fused_op,)}
    before: dict[str, BlockOp] = {}
    for op in dict.fromkeys(r.op for r in results.rows):
        row = _baseline(results, op)
        if op not in fused_ops and row and row.bound in BOUND_COLORS:
            label = op + (f" ×{row.per_block}" if row.per_block > 1 else "")
            before[op] = BlockOp(op, row.variant, label, (row.time_median_s or 0.0) * row.per_block, row.bound)
    best: dict[str, FusionResult] = {}
    for f in summarize(results):
        if f.group not in best or f.fused_time_s < best[f.group].fused_time_s:
            best[f.group] = f
    after = dict(before)
    for f in sorted(best.values(), key=lambda f: -len(f.chain_ops)):
        row = results.find(f.group, f.fused_variant)
        if row is None or not all(op in after and after[op].op == op for op in f.chain_ops):
            continue
        label = f"{f.group} · {f.fused_variant}" + (f" ×{row.per_block}" if row.per_block > 1 else "")
        fused = BlockOp(f.group, f.fused_variant, label, f.fused_time_s * row.per_block, row.bound)
        after = {k: (fused if k == f.chain_ops[0] else v) for k, v in after.items() if k not in f.chain_ops[1:]}
    return list(before.values()), list(after.values())


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure on the Agg canvas: no global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_bytes(fig: Figure, fmt_name: str) -> bytes:
    """PNG (150 dpi) or SVG (text as paths: no fonts needed to view it) of a figure, reproducibly."""
    import matplotlib

    buf = io.BytesIO()
    metadata = {"Date": None} if fmt_name == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "roofline", "svg.fonttype": "path"}):
        fig.savefig(buf, format=fmt_name, dpi=150, metadata=metadata, facecolor="white", bbox_inches="tight",
                    pad_inches=0.15)
    return buf.getvalue()


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


def roofline_figure(results_list: list[Results]) -> Figure:
    """The roofline of one or several runs (overlaid), ready to save."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = _new_figure(12.5, 7.4)
    ax = fig.add_axes((0.075, 0.085, 0.68, 0.84))
    labels = run_labels(results_list)
    title = describe_run(results_list[0]) if len(results_list) == 1 else " vs ".join(labels)
    ax.set_title(f"Roofline · {title}", loc="left", fontsize=12, fontweight="bold", pad=10)

    all_roofs = [roof for r in results_list for roof in roofs(r)]
    points, chains = _points(results_list), _chains(results_list)
    xs = [p[1] for p in points] + [c[1][0] for c in chains] + [roof.ridge for roof in all_roofs]
    ys = [p[2] for p in points] + [c[1][1] for c in chains] + [roof.peak_flops for roof in all_roofs]
    xlim, ylim = _log_limits(xs, 3, 3), _log_limits(ys, 2, 4)
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
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    taken = point_obstacles(ax, [(p[1], p[2]) for p in points] + [c[1] for c in chains], MARKER_AREA)
    taken += _shade_regions(ax, results_list[0], xlim, ylim)
    ridge_labels = _draw_roofs(ax, all_roofs, xlim, ylim, taken, str(_device(results_list[0]).get("kind", "cuda")))
    point_labels = _draw_points(ax, points, results_list)
    speedup_labels, arrow_paths = _draw_fusions(ax, chains)
    place_labels(ax, speedup_labels + point_labels + ridge_labels, taken + line_obstacles(ax, arrow_paths))

    handles = [Line2D([], [], linestyle="none", label="group")]
    for group in dict.fromkeys(p[0].group for p in points):
        handles.append(Line2D([], [], marker="o", linestyle="none", color=group_color(group), label=group))
    handles.append(Line2D([], [], linestyle="none", label="variant"))
    for variant in dict.fromkeys(p[0].variant for p in points):
        handles.append(Line2D([], [], marker=variant_marker(variant), linestyle="none", color="#555555",
                              markerfacecolor="#999999", label=variant))
    if len(results_list) > 1:
        handles.append(Line2D([], [], linestyle="none", label="run"))
        for i, label in enumerate(labels):
            style = RUN_STYLES[i % len(RUN_STYLES)]
            handles.append(Line2D([], [], marker="o", linestyle="none", color="#444444", alpha=style["alpha"],
                                  markerfacecolor="#444444" if style["filled"] else "white", label=label))
    handles.append(Line2D([], [], linestyle="none", label="roofs"))
    handles.append(Line2D([], [], color="#333333", linestyle="-", label="datasheet"))
    handles.append(Line2D([], [], color="#333333", linestyle="--", label="measured"))
    if chains:
        handles.append(Line2D([], [], marker="X", markersize=8, linestyle="none", color="#444444",
                              markerfacecolor="white", label="unfused chain"))
        handles.append(Line2D([], [], color="#555555", marker=">", markevery=[1], label="→ fused (speedup)"))
    legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.775, 0.925), frameon=False,
                        fontsize=8.5, handlelength=1.8, borderaxespad=0)
    for text, handle in zip(legend.get_texts(), handles, strict=True):
        if handle.get_marker() in ("None", "", None) and handle.get_linestyle() in ("None", "none", ""):
            text.set_fontweight("bold")  # a section heading: no marker, no line

    return fig


Point = tuple[Any, float, float, int]  # (row, intensity, achieved FLOP/s, run index)
Chain = tuple[FusionResult, tuple[float, float], Any, int]  # (fusion, chain point, fused row, run index)


def _points(results_list: list[Results]) -> list[Point]:
    out = []
    for i, results in enumerate(results_list):
        for row in results.ok_rows():
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
    placed = [r for r in results.ok_rows() if r.peak_flops_per_s and r.peak_bytes_per_s]
    if not placed:
        return None
    top = max(placed, key=lambda r: r.peak_flops_per_s or 0.0)
    return model.ridge_point(top.peak_flops_per_s or 0.0, top.peak_bytes_per_s or 1.0), top.ceiling


def _shade_regions(ax: Axes, results: Results, xlim: tuple[float, float],
                   ylim: tuple[float, float]) -> list[Obstacle]:
    """Light memory/compute tints either side of the ridge; returns the boxes of their two captions."""
    found = _primary_ridge(results)
    if not found:
        return []
    ridge, key = found
    kind = str(_device(results).get("kind", "cuda"))
    ax.axvspan(xlim[0], ridge, color=MEMORY_COLOR, alpha=0.05, linewidth=0, zorder=0)
    ax.axvspan(ridge, xlim[1], color=COMPUTE_COLOR, alpha=0.05, linewidth=0, zorder=0)
    y = ylim[0] * 1.6
    captions = [
        ax.text(ridge / 1.15, y, "← memory-bound", color=MEMORY_COLOR, ha="right", va="bottom", fontsize=9,
                fontweight="bold", alpha=0.85),
        ax.text(ridge * 1.15, y, f"compute-bound →\n(ridge of {roof_name(key, kind)})", color=COMPUTE_COLOR,
                ha="left", va="bottom", fontsize=9, fontweight="bold", alpha=0.85, linespacing=1.1)]
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    return [(tuple(t.get_window_extent(renderer).extents), 1.0) for t in captions]  # type: ignore[misc]


def _draw_roofs(ax: Axes, all_roofs: list[Roof], xlim: tuple[float, float], ylim: tuple[float, float],
                taken: list[Obstacle], device_kind: str) -> list[Label]:
    """Memory and compute roofs, each labelled with its value where it covers no marker; the label boxes and
    the lines are appended to `taken` so op labels avoid them. Returns the ridge labels, placed with the ops'."""
    colors = {d: DEVICE_ROOF_COLORS[i % len(DEVICE_ROOF_COLORS)]
              for i, d in enumerate(dict.fromkeys(r.device for r in all_roofs))}
    several_devices = len(colors) > 1
    drawn_memory: set[tuple[str, str, float]] = set()
    ridge_labels = []
    lines = [[(r.ridge, r.peak_flops), (xlim[1], r.peak_flops)] for r in all_roofs]
    lines += [[(max(xlim[0], ylim[0] / r.bandwidth), max(xlim[0], ylim[0] / r.bandwidth) * r.bandwidth),
               (r.ridge, r.peak_flops)] for r in all_roofs]
    taken += line_obstacles(ax, lines)
    for roof in dict.fromkeys(all_roofs):
        color, dashes = colors[roof.device], "-" if roof.source == "datasheet" else "--"
        prefix = f"{roof.device}: " if several_devices else ""
        above = roof.source == "datasheet"  # measured roofs sit lower: their labels go below the line
        ax.plot([roof.ridge, xlim[1]], [roof.peak_flops] * 2, color=color, linestyle=dashes, linewidth=1.6, zorder=2)
        ax.plot([roof.ridge], [roof.peak_flops], marker="D", markersize=5, color=color, zorder=3,
                markerfacecolor="white" if roof.source == "measured" else color)
        text = f"{prefix}{roof_name(roof.key, device_kind)} {fmt.flops_rate(roof.peak_flops)} ({roof.source})"
        _flat_label(ax, text, color, (roof.ridge, xlim[1]), roof.peak_flops, above, taken)
        ridge_labels.append(Label(roof.ridge, roof.peak_flops, f"ridge {roof.ridge:.3g} FLOP/B", color=color,
                                  size=7))
        memory_key = (roof.device, roof.source, roof.bandwidth)
        if memory_key in drawn_memory:
            continue
        drawn_memory.add(memory_key)
        top = max(r.peak_flops for r in all_roofs if (r.device, r.source, r.bandwidth) == memory_key)
        x0 = max(xlim[0], ylim[0] / roof.bandwidth)
        ax.plot([x0, top / roof.bandwidth], [x0 * roof.bandwidth, top], color=color, linestyle=dashes,
                linewidth=1.6, zorder=2)
        _slope_label(ax, f"{prefix}memory {fmt.bandwidth(roof.bandwidth)} ({roof.source})", color, roof.bandwidth,
                     (x0, top / roof.bandwidth), above, taken)
    return ridge_labels


def _flat_label(ax: Axes, text: str, color: str, span: tuple[float, float], y: float, above: bool,
                taken: list[Obstacle]) -> None:
    """A label just above (or below) a horizontal roof, slid leftwards from its right end until it is free,
    then tried on the other side of the line."""
    width, height = text_size(ax, text, fontsize=8.5)
    left, right = (ax.transData.transform((x, y))[0] for x in span)
    line_y = ax.transData.transform((span[1], y))[1]
    xs = [right - 6 - width / 2 - 12 * k for k in range(int(max(right - left - width - 12, 0) / 12) + 1)]
    centres = [(x, line_y + (height / 2 + 3) * side) for side in ((1, -1) if above else (-1, 1)) for x in xs]
    boxes = [[centred_box(cx, cy, width, height)] for cx, cy in centres]
    i = choose(boxes, taken, axes_bounds(ax))
    taken.append((boxes[i][0], 1.0))
    x, y_data = ax.transData.inverted().transform(centres[i])
    ax.text(x, y_data, text, color=color, ha="center", va="center", fontsize=8.5, zorder=4)


def _slope_label(ax: Axes, text: str, color: str, bandwidth: float, span: tuple[float, float], above: bool,
                 taken: list[Obstacle]) -> None:
    """A label along the diagonal memory roof, rotated to its on-screen slope, at the first free spot."""
    width, height = text_size(ax, text, fontsize=8.5)
    p0 = ax.transData.transform((span[0], span[0] * bandwidth))
    p1 = ax.transData.transform((span[1], span[1] * bandwidth))
    angle = math.degrees(math.atan2(p1[1] - p0[1], p1[0] - p0[0]))
    length = math.hypot(p1[0] - p0[0], p1[1] - p0[1])
    normal = (-math.sin(math.radians(angle)), math.cos(math.radians(angle)))
    shift = 3 if above else -(3 + height)
    starts = []
    for frac in (0.1, 0.16, 0.05, 0.22, 0.28, 0.34, 0.4, 0.46, 0.52, 0.58):
        if frac * length + width < length:
            t = frac * length
            starts.append((p0[0] + (p1[0] - p0[0]) * t / length + normal[0] * shift,
                           p0[1] + (p1[1] - p0[1]) * t / length + normal[1] * shift))
    starts = starts or [(p0[0] + normal[0] * shift, p0[1] + normal[1] * shift)]
    boxes = [rotated_boxes(x, y, angle, width, height) for x, y in starts]
    i = choose(boxes, taken, axes_bounds(ax))
    taken += [(box, 1.0) for box in boxes[i]]
    x, y = ax.transData.inverted().transform(starts[i])
    ax.text(x, y, text, color=color, rotation=angle, rotation_mode="anchor", ha="left", va="bottom",
            fontsize=8.5, zorder=4)


def _draw_points(ax: Axes, points: list[Point], results_list: list[Results]) -> list[Label]:
    labels = []
    for row, x, y, i in points:
        style = RUN_STYLES[i % len(RUN_STYLES)]
        color = group_color(row.group)
        marker = variant_marker(row.variant)
        size = MARKER_AREA * (1.8 if marker == "*" else 1.0)
        ax.scatter([x], [y], s=size, marker=marker, zorder=5, alpha=style["alpha"], linewidths=1.2,
                   facecolors=color if style["filled"] else "white", edgecolors=color if not style["filled"]
                   else "#222222")
        several = sum(r.op == row.op for r in results_list[i].ok_rows()) > 1
        labels.append(Label(x, y, row.op + (f" · {row.variant}" if several else ""), color="#222222"))
    return labels


def _draw_fusions(ax: Axes, chains: list[Chain]) -> tuple[list[Label], list[list[tuple[float, float]]]]:
    """Arrows unfused chain → fused variant; returns the speedup labels and the arrows' data paths."""
    from matplotlib.patches import FancyArrowPatch

    labels, paths, drawn = [], [], set()
    for f, start, row, i in chains:
        end, color = (row.intensity, row.flops_per_s), group_color(row.group)
        if len(f.chain_ops) > 1 and (f.group, i) not in drawn:
            drawn.add((f.group, i))
            ax.scatter([start[0]], [start[1]], s=MARKER_AREA, marker="X", facecolors="white", edgecolors=color,
                       linewidths=1.4, zorder=5)
            labels.append(Label(*start, "unfused " + "+".join(f.chain_ops), color="#444444"))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color="#555555",
                                     linewidth=1.1, shrinkA=5, shrinkB=6, zorder=4, alpha=0.85))
        mid = (math.sqrt(start[0] * end[0]), math.sqrt(start[1] * end[1]))
        good = f.speedup >= 1
        labels.append(Label(*mid, f"{fmt.ratio(f.speedup)} {f.fused_variant}", bold=True,
                            color=SPEEDUP_GOOD if good else SPEEDUP_BAD))
        paths.append([start, end])
    return labels, paths


def time_split_figure(results_list: list[Results]) -> Figure:
    """Seconds per block of each op, before and after fusion, bars coloured compute- vs memory-bound."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    blocks = [block_before_after(r) for r in results_list]
    labels = run_labels(results_list)
    heights = [max(len(b), len(a), 1) * 0.27 + 1.0 for b, a in blocks]
    fig = _new_figure(12.5, sum(heights) + 0.9)
    grid = fig.add_gridspec(len(blocks), 2, height_ratios=heights, left=0.17, right=0.97, wspace=0.55,
                            hspace=0.55, top=1 - 0.75 / (sum(heights) + 0.9), bottom=0.45 / (sum(heights) + 0.9))
    for i, ((before, after), label) in enumerate(zip(blocks, labels, strict=True)):
        longest = max([o.time_s for o in before + after] or [1.0])
        rows = max(len(before), len(after), 1)
        speedup = sum(o.time_s for o in before) / (sum(o.time_s for o in after) or float("nan"))
        run_name = describe_run(results_list[i]) if len(results_list) == 1 else label
        for j, (name, ops) in enumerate((("Before fusion", before), ("After fusion", after))):
            ax = fig.add_subplot(grid[i, j])
            total = sum(o.time_s for o in ops) or float("nan")
            compute = sum(o.time_s for o in ops if o.bound == "compute")
            ax.barh(range(len(ops)), [o.time_s for o in ops], color=[BOUND_COLORS[o.bound] for o in ops],
                    height=0.68, zorder=2)
            ax.set_yticks(range(len(ops)), [o.label for o in ops], fontsize=8.5)
            for tick, o in zip(ax.get_yticklabels(), ops, strict=True):
                tick.set_fontweight("bold" if o not in before else "normal")  # a fused variant that replaced a chain
            ax.set_ylim(rows - 0.5, -0.5)  # same bar thickness in both panels
            ax.set_xlim(0, longest * 1.3)
            for k, o in enumerate(ops):
                ax.text(o.time_s + longest * 0.01, k, f"{fmt.seconds(o.time_s)}  {100 * o.time_s / total:.0f} %",
                        va="center", fontsize=7.5, color="#333333")
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.seconds(v) if v else "0"))
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(True, axis="x", color="#e4e4e4", linewidth=0.6, zorder=0)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            head = f"{name}: {fmt.seconds(total)} per block, {100 * compute / total:.0f} % compute-bound"
            if j == 1:
                head = head.replace(" per block,", f" per block ({fmt.ratio(speedup)} faster),")
            ax.set_title(head if len(results_list) == 1 else f"{label} · {head}", loc="left", fontsize=10,
                         fontweight="bold")
        if i == 0:
            fig.suptitle(f"Time per block · {run_name}" if len(results_list) == 1 else "Time per block",
                         x=0.01, ha="left", fontsize=12, fontweight="bold")
    fig.legend(handles=[Patch(color=COMPUTE_COLOR, label="compute-bound"),
                        Patch(color=MEMORY_COLOR, label="memory-bound")], loc="upper right", ncols=2,
               frameon=False, fontsize=9, bbox_to_anchor=(0.99, 1 - 0.1 / (sum(heights) + 0.9)))
    return fig
