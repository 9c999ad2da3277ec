"""Where the block's time goes, before and after fusion: the second figure of every report.

Bars per op in block order (analysis/block.py sums them), coloured compute- vs memory-bound, and a
tensor-parallel run's all-reduces as communication; one row of two panels per run on one time axis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from roofline import fmt
from roofline.analysis.block import KIND_NAMES, KINDS, BlockOp, block_before_after, kind_split, split_text
from roofline.fmt import describe_run
from roofline.render.style import KIND_COLORS, new_figure
from roofline.results import Results

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def time_split_figure(results_list: list[Results]) -> Figure:
    """Seconds per block of each op, before and after fusion, bars coloured compute- vs memory-bound (and
    communication); one row of two panels per run, both panels on one time axis so the bars compare."""
    from matplotlib.patches import Patch

    blocks = [block_before_after(r) for r in results_list]
    heights = [max(len(b), len(a), 1) * 0.27 + 1.3 for b, a in blocks]
    fig = new_figure(12.5, sum(heights) + 0.6, layout="constrained")
    fig.suptitle("Time per block: before and after fusion", x=0.01, ha="left", fontsize=12, fontweight="bold")
    kinds = [k for k in KINDS if k != "comm" or any(o.kind == k for b, _ in blocks for o in b)]
    fig.legend(handles=[Patch(color=KIND_COLORS[k], label=KIND_NAMES[k]) for k in kinds],
               loc="outside upper right", ncols=len(kinds), frameon=False, fontsize=9)
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, res, (before, after) in zip(subfigs, results_list, blocks, strict=True):
        sub.suptitle(describe_run(res), x=0.01, ha="left", fontsize=10, color="#444444")
        longest = max([o.time_s for o in before + after] or [1.0])
        total_before = sum(o.time_s for o in before)
        for ax, name, ops in zip(sub.subplots(1, 2), ("Before fusion", "After fusion"), (before, after), strict=True):
            _time_bars(ax, ops, longest, max(len(before), len(after), 1), set(before))
            total = sum(o.time_s for o in ops) or float("nan")
            faster = f" ({fmt.ratio(total_before / total)} faster)" if ops is after else ""
            ax.set_title(f"{name} · {fmt.seconds(total)} per block{faster}\n{split_text(kind_split(ops))}", loc="left",
                         fontsize=9.5, fontweight="bold")
    return fig


def _time_bars(ax: Axes, ops: list[BlockOp], longest: float, rows: int, plain: set[BlockOp]) -> None:
    """Horizontal bars in block order, each with its time and share; a fused variant's name in bold."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    total = sum(o.time_s for o in ops) or float("nan")
    ax.barh(range(len(ops)), [o.time_s for o in ops], color=[KIND_COLORS[o.kind] for o in ops], height=0.68,
            zorder=2)
    ax.set_yticks(range(len(ops)), [o.label for o in ops], fontsize=8.5)
    for tick, o in zip(ax.get_yticklabels(), ops, strict=True):
        tick.set_fontweight("normal" if o in plain else "bold")
    ax.set_ylim(rows - 0.5, -0.5)  # the same bar thickness in both panels
    ax.set_xlim(0, longest * 1.32)
    for k, o in enumerate(ops):
        was = f"  (was {fmt.seconds(o.replaced_s)})" if o.replaced_s else ""
        ax.text(o.time_s + longest * 0.015, k, f"{fmt.seconds(o.time_s)}  {100 * o.time_s / total:.0f} %{was}",
                va="center", fontsize=7.5, color="#333333")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.seconds(v) if v else "0"))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", color="#e4e4e4", linewidth=0.6, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
