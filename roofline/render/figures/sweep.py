"""Time and peak memory against N, on log-log axes, one line per attention variant and for the block (sweep)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from roofline.analysis.sweep import sweep_series
from roofline.render.style import new_figure, variant_marker
from roofline.results import Results

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def slope_text(slope: float | None) -> str:
    return "–" if slope is None else f"{slope:.2f}"


def sweep_figure(results: Results) -> Figure:
    """Log-log time and peak memory against N, one line per series, its fitted slope in the legend."""
    series = sweep_series(results)
    dtypes = list(dict.fromkeys(s.dtype for s in series))
    names = list(dict.fromkeys(s.name for s in series))
    seq_lens = sorted({r.seq_len for r in results.rows})
    fig = new_figure(13, 5.6, layout="constrained")
    ax_time, ax_mem = fig.subplots(1, 2, sharex=True)
    palette = ("#e08a00", "#1f6fb4", "#2a9d5c", "#c23b75", "#7b52c7", "#8c5a2b", "#555555")
    block_colors = {"block (unfused)": "#999999", "block (best)": "#222222"}
    for s in (s for s in series if s.points):
        style = {"color": block_colors.get(s.name) or palette[names.index(s.name) % len(palette)],
                 "linestyle": ("-", "--", ":", "-.")[dtypes.index(s.dtype) % 4],
                 "marker": "x" if s.kind == "block" else variant_marker(s.name)}
        ns = [n for n, _, _ in s.points]
        ax_time.plot(ns, [t for _, t, _ in s.points], label=f"{s.label}  ∝ N^{slope_text(s.time_slope())}",
                     **style)
        mem = [(n, m) for n, _, m in s.points if m]
        if mem:
            ax_mem.plot(*zip(*mem, strict=True), label=f"{s.label}  ∝ N^{slope_text(s.memory_slope())}", **style)
    for ax, ylabel in ((ax_time, "time (s)"), (ax_mem, "peak memory beyond inputs (bytes)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(seq_lens, [str(n) for n in seq_lens], minor=False)
        ax.minorticks_off()
        ax.set(yscale="log", xlabel="sequence length N", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7, loc="upper left")
    if not ax_mem.has_data():
        ax_mem.text(0.5, 0.5, "peak memory is measured on CUDA devices only", ha="center", transform=ax_mem.transAxes)
        ax_mem.set_yticks([])
    c = results.run.config
    fig.suptitle(f"{c.name} · batch {c.batch} · {results.run.device.name}: "
                 "attention and block vs N (slopes fitted over points measured ok)", fontsize=10)
    notes = sorted({f"{s.label} at N={n}: {note}" for s in series for n, note in s.missing
                    if "would need" in note})
    if notes:
        fig.text(0.01, -0.01, "\n".join(notes[:6]), fontsize=7, va="top", color="#b42318")
    return fig
