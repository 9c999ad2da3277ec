"""The roofline plot from saved Results (rendering never measures): where each op sits under the device's roofs.

- roofline: log-log, intensity (FLOP per byte of compulsory traffic) against achieved FLOP/s. One memory roof
  (y = bandwidth × intensity) and one compute roof per unit and dtype the run used; datasheet roofs solid,
  measured roofs dashed, each labelled with its value and its ridge point (peak / bandwidth) marked. Every op
  is a point (colour = group, marker = variant); an arrow goes from each unfused chain (summed FLOPs over
  summed bytes, at summed time) to each fused variant that replaces it, labelled with the speedup.
- the colours, markers and run names every figure and the HTML report share; time_split.py draws the
  second figure (time per op before/after fusion), plot_labels.py places the labels.

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
from roofline.fusion import FusionResult, summarize
from roofline.plot_labels import Label, Obstacle, flat_label, line_obstacles, place_labels, point_obstacles, slope_label
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
        lambda r: f"seq {cfg(r).get('seq_len')}",
        lambda r: f"kv {cfg(r).get('kv_len')}" if cfg(r).get("mode") == "decode" else "",
        lambda r: str(cfg(r).get("dtype")),
    ]
    differing = [f for f in fields if len({f(r) for r in results_list}) > 1]
    labels = [" · ".join(f(r) for f in differing if f(r)) for r in results_list]
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


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A pyplot-free figure on the Agg canvas: no global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
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

    fig = new_figure(12.5, 7.4)
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
    speedup_labels, arrow_paths = _draw_fusions(ax, chains, labels)
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
        flat_label(ax, text, color, (roof.ridge, xlim[1]), roof.peak_flops, above, taken)
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
        slope_label(ax, f"{prefix}memory {fmt.bandwidth(roof.bandwidth)} ({roof.source})", color, roof.bandwidth,
                     (x0, top / roof.bandwidth), above, taken)
    return ridge_labels


def _draw_points(ax: Axes, points: list[Point], results_list: list[Results]) -> list[Label]:
    """One marker per measured row; each (op, variant) labelled once, at its first run, and joined by a thin
    line to the same row in later runs (so an overlay reads as 'this op moved from here to there')."""
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
        several = sum(r.op == row.op for r in results_list[i].ok_rows()) > 1
        labels.append(Label(x, y, row.op + (f" · {row.variant}" if several else ""), color="#222222"))
    return labels


def _draw_fusions(ax: Axes, chains: list[Chain], run_names: list[str]) -> tuple[list[Label], list[list[Any]]]:
    """Arrows unfused chain → fused variant; returns the speedup labels and the arrows' data paths.
    With several runs each speedup names its run, and each chain is labelled at its first run only."""
    from matplotlib.patches import FancyArrowPatch

    labels, paths, drawn = [], [], set()
    for f, start, row, i in chains:
        end, color = (row.intensity, row.flops_per_s), group_color(row.group)
        if len(f.chain_ops) > 1 and (f.group, i) not in drawn:
            ax.scatter([start[0]], [start[1]], s=MARKER_AREA, marker="X", facecolors="white", edgecolors=color,
                       linewidths=1.4, zorder=5, alpha=RUN_STYLES[i % len(RUN_STYLES)]["alpha"])
            if not any(g == f.group for g, _ in drawn):
                labels.append(Label(*start, "unfused " + "+".join(f.chain_ops), color="#444444"))
            drawn.add((f.group, i))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color="#555555",
                                     linewidth=1.1, shrinkA=5, shrinkB=6, zorder=4, alpha=0.85 if i == 0 else 0.5))
        mid = (math.sqrt(start[0] * end[0]), math.sqrt(start[1] * end[1]))
        text = f"{fmt.ratio(f.speedup)} {f.fused_variant}" + (f" ({run_names[i]})" if len(run_names) > 1 else "")
        labels.append(Label(*mid, text, bold=True, color=SPEEDUP_GOOD if f.speedup >= 1 else SPEEDUP_BAD))
        paths.append([start, end])
    return labels, paths
