"""The roofs of a roofline plot: which roofs a run has (datasheet and measured), their lines, diamonds at the ridge
points and their labels. roofline.py draws the rest (points, fusion arrows, legend); labels.py places labels.

Each compute roof is labelled once per device with all its values ('bf16 tensor cores 989 TFLOP/s datasheet,
754 measured') and each memory roof likewise along its slope, so a calibrated run shows two lines per roof
but one label: the legend tells solid (datasheet) from dashed (measured).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from roofline import fmt
from roofline.analysis.placement import ridge_point
from roofline.render.figures.labels import Label, Obstacles, flat_label, line_obstacles, place_labels, slope_label
from roofline.results import Results

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DEVICE_ROOF_COLORS = ("#333333", "#9a7418", "#2b7a78", "#7a2b5e")
# Up-left of a ridge is empty (nothing beats the memory roof) unless another roof runs there: try it first.
RIDGE_ANGLES = (150, 165, 135, 180, 120, 195, 60, 30, 90, 0, -30, -60, -90, -120, -150)


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
        return ridge_point(self.peak_flops, self.bandwidth)


def roofs(results: Results) -> list[Roof]:
    """The compute roofs of the units and dtypes the run's measured rows used, datasheet then measured.

    A source that lacks a bandwidth borrows the other's, so a measured compute roof still has a ridge.
    """
    peaks = results.run.peaks
    measured = peaks.measured
    sheet_bw, measured_bw = peaks.datasheet_bandwidth, measured.memory_bandwidth if measured else 0.0
    used = sorted({r.ceiling for r in results.ok_rows() if r.ceiling}, key=roof_order)
    device = results.run.device.name
    out = []
    for source, flops, bandwidth in (("datasheet", peaks.datasheet_flops, sheet_bw or measured_bw),
                                     ("measured", measured.peak_flops if measured else {}, measured_bw or sheet_bw)):
        out += [Roof(device, key, source, flops[key], bandwidth) for key in used if flops.get(key) and bandwidth]
    return out


def roof_order(key: str) -> tuple[bool, str]:
    """Sort key for roofs: tensor-core roofs first, then by name."""
    return not key.startswith("tensor"), key


def roof_name(key: str, device_kind: str = "cuda") -> str:
    """'tensor.bf16' → 'bf16 tensor cores'; 'vector.fp32' → 'fp32 CUDA cores' (or 'fp32 vector' on a CPU)."""
    unit, _, dtype = key.partition(".")
    if unit == "tensor":
        return f"{dtype} tensor cores" if device_kind == "cuda" else f"{dtype} matmul"
    return f"{dtype} CUDA cores" if device_kind == "cuda" else f"{dtype} vector"


def draw_roofs(ax: Axes, all_roofs: list[Roof], xlim: tuple[float, float], ylim: tuple[float, float],
                taken: Obstacles, device_kind: str) -> None:
    """Memory and compute roofs, their lines and labels added to `taken` so op labels avoid them. Each compute
    roof is labelled once per device with all its values ('bf16 tensor cores 989 TFLOP/s datasheet, 754
    measured'), above its highest line: nothing measured sits there, and the label may run on left of the
    ridge, over the empty space above the memory roof. Then the ridges ('ridge 295 · 251 FLOP/B')."""
    colors, prefix = _roof_colors(all_roofs)
    lines = [[(r.ridge, r.peak_flops), (xlim[1], r.peak_flops)] for r in all_roofs]
    lines += [[(max(xlim[0], ylim[0] / r.bandwidth), max(xlim[0], ylim[0] / r.bandwidth) * r.bandwidth),
               (r.ridge, r.peak_flops)] for r in all_roofs]
    taken.add(line_obstacles(ax, lines), line=True)
    for roof in dict.fromkeys(all_roofs):
        dashes = "-" if roof.source == "datasheet" else "--"
        x0 = max(xlim[0], ylim[0] / roof.bandwidth)
        ax.plot([x0, roof.ridge, xlim[1]], [x0 * roof.bandwidth, roof.peak_flops, roof.peak_flops],
                color=colors[roof.device], linestyle=dashes, linewidth=1.6, zorder=2)
        ax.plot([roof.ridge], [roof.peak_flops], marker="D", markersize=5, color=colors[roof.device], zorder=3,
                markerfacecolor="white" if roof.source == "measured" else colors[roof.device])
    ridge_labels = []
    for (device, key), same in _by(all_roofs, lambda r: (r.device, r.key)).items():
        top = max(same, key=lambda r: r.peak_flops)
        values = _values(same, lambda r: fmt.si(r.peak_flops, "FLOP/s"))
        text = f"{prefix[device]}{roof_name(key, device_kind)} {values}"
        low = min(r.peak_flops for r in same)
        flat_label(ax, text, colors[device], (top.ridge, xlim[1]), top.peak_flops, low, taken)
        ridges = " · ".join(dict.fromkeys(f"{r.ridge:.3g}" for r in same))
        ridge_labels.append(Label(top.ridge, top.peak_flops, f"ridge {ridges} FLOP/B", color=colors[device], size=7,
                                  angles=RIDGE_ANGLES))
    place_labels(ax, ridge_labels, taken)


def label_memory_roofs(ax: Axes, all_roofs: list[Roof], xlim: tuple[float, float], ylim: tuple[float, float],
                        taken: Obstacles) -> None:
    """The memory roofs' label ('memory 3.35 TB/s datasheet, 3 measured') along their slope, once per device,
    where the line runs far from markers: ops need the room next to them for their own labels."""
    colors, prefix = _roof_colors(all_roofs)
    for device, same in _by(all_roofs, lambda r: r.device).items():
        top = max(same, key=lambda r: (r.bandwidth, r.ridge))
        left = max(xlim[0], ylim[0] / top.bandwidth)
        text = f"{prefix[device]}memory {_values(same, lambda r: fmt.bandwidth(r.bandwidth))}"
        low = min(r.bandwidth for r in same)
        slope_label(ax, text, colors[device], (top.bandwidth, low), (left, top.ridge), taken)


def _roof_colors(all_roofs: list[Roof]) -> tuple[dict[str, str], dict[str, str]]:
    """A colour per device, and the prefix its roof labels take ('NVIDIA H200: ', only with several devices)."""
    colors = {d: DEVICE_ROOF_COLORS[i % len(DEVICE_ROOF_COLORS)]
              for i, d in enumerate(dict.fromkeys(r.device for r in all_roofs))}
    return colors, {d: f"{d}: " if len(colors) > 1 else "" for d in colors}


def _values(same: list[Roof], show: Callable[[Roof], str]) -> str:
    """'989 TFLOP/s datasheet, 799 / 754 measured': each source's distinct values (runs of one device may have
    calibrated differently), the unit written once. A bandwidth one source borrowed from the other is left out."""
    by_source: dict[str, list[str]] = {}
    for roof in same:
        by_source.setdefault(roof.source, []).append(show(roof))
    seen: set[str] = set()
    first_unit, parts = "", []
    for source, values in by_source.items():
        fresh = [v for v in dict.fromkeys(values) if v not in seen]
        seen.update(fresh)
        shown = []
        for value in fresh:
            number, _, unit = value.partition(" ")
            shown.append(number if unit == first_unit else value)
            first_unit = first_unit or unit
        if shown:
            parts.append(f"{' / '.join(shown)} {source}")
    return ", ".join(parts)


def _by(roofs_list: list[Roof], key: Callable[[Roof], Any]) -> dict[Any, list[Roof]]:
    """Roofs grouped by key, in first-seen order; each group datasheet first, duplicates dropped."""
    out: dict[Any, list[Roof]] = {}
    for roof in dict.fromkeys(roofs_list):
        out.setdefault(key(roof), []).append(roof)
    return {k: sorted(v, key=lambda r: r.source != "datasheet") for k, v in out.items()}
