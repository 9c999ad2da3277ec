"""The overlay roofline of `roofline compare`: every run's points (BASE first), and a grey line joining the same row
across runs. A row's intensity is the same in both runs (same FLOPs, same model bytes), so the line is vertical
and its length on the log axis is the speedup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from roofline.analysis.compare import Comparison
from roofline.render.figures.roofline import roofline_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JOIN_COLOR = "#888888"  # the same row in BASE and NEW


def overlay_figure(comparisons: list[Comparison]) -> Figure:
    """roofline_figure of all runs (BASE first), plus a line joining each row measured in both runs."""
    fig = roofline_figure([comparisons[0].base, *(c.new for c in comparisons)])
    ax = fig.axes[0]
    for c in comparisons:
        for r in c.rows:
            if r.ok and r.base.flops_per_s and r.new.flops_per_s:
                ax.plot([r.base.intensity, r.new.intensity], [r.base.flops_per_s, r.new.flops_per_s],
                        color=JOIN_COLOR, lw=1.0, zorder=4)
    return fig
