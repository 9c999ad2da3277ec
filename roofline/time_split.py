"""Where the block's time goes, before and after fusion: the second figure of every report.

Before = the unfused block: each plain op at its baseline variant × the times it runs per block (what
fusion.block_time_split sums). After = the same block with each fusion chain replaced by its fastest fused
variant. Bars are coloured compute- vs memory-bound, and a tensor-parallel run's all-reduces (unit "comm", roof
model.COMM_ROOF) as communication; one row of two panels per run on one time axis. `kind_split` sums a block
by those three kinds: the report, `profile --tp` and `tp-scaling` (tp_scaling.block_split) all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from roofline import fmt
from roofline.fmt import describe_run
from roofline.fusion import FusionResult, summarize, unfused_block
from roofline.plot import BOUND_COLORS, new_figure
from roofline.results import Results, Row

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COMM_COLOR = "#2f9e8f"  # communication (a collective's time), beside compute- and memory-bound
KIND_COLORS = {**BOUND_COLORS, "comm": COMM_COLOR}
KIND_NAMES = {"compute": "compute-bound", "memory": "memory-bound", "comm": "communication"}


@dataclass(frozen=True)
class BlockOp:
    """One op's share of a block: seconds per block (time per call × per_block); a fused variant also keeps the
    seconds per block of the chain it replaced."""

    op: str
    variant: str
    label: str
    time_s: float
    bound: str
    kind: str  # where the time counts: the bound ("compute" | "memory"), or "comm" for a collective
    replaced_s: float | None = None


def _kind(row: Row) -> str:
    return "comm" if row.unit == "comm" else row.bound


def kind_split(ops: list[BlockOp]) -> dict[str, float]:
    """Seconds per block in compute-bound, memory-bound and communication ops (0.0 for a kind with none)."""
    split = dict.fromkeys(KIND_COLORS, 0.0)
    for o in ops:
        split[o.kind] += o.time_s
    return split


def split_text(split: dict[str, float], comm: bool = False) -> str:
    """'26 % compute-bound, 67 % memory-bound, 7 % communication': communication named when there is some, or
    when `comm` asks for it (a TP=1 run beside TP=N ones)."""
    total = sum(split.values()) or float("nan")
    return ", ".join(f"{100 * seconds / total:.0f} % {KIND_NAMES[kind]}" for kind, seconds in split.items()
                     if kind != "comm" or seconds or comm)


def block_before_after(results: Results) -> tuple[list[BlockOp], list[BlockOp]]:
    """The block's ops before fusion (each plain op at its baseline variant, as fusion.block_time_split counts
    them) and after (each fusion chain replaced by its fastest fused variant; a longer chain claims its ops
    first, so attention's fused variants replace softmax before softmax's own fused kernel would)."""
    before = {row.op: BlockOp(row.op, row.variant, row.op + (f" ×{row.per_block}" if row.per_block > 1 else ""),
                              (row.time_median_s or 0.0) * row.per_block, row.bound, _kind(row))
              for row in unfused_block(results) if row.bound in BOUND_COLORS}
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
        fused = BlockOp(f.group, f.fused_variant, label, f.fused_time_s * row.per_block, row.bound, _kind(row),
                        sum(after[op].time_s for op in f.chain_ops))
        after = {k: (fused if k == f.chain_ops[0] else v) for k, v in after.items() if k not in f.chain_ops[1:]}
    return list(before.values()), list(after.values())


def time_split_figure(results_list: list[Results]) -> Figure:
    """Seconds per block of each op, before and after fusion, bars coloured compute- vs memory-bound (and
    communication); one row of two panels per run, both panels on one time axis so the bars compare."""
    from matplotlib.patches import Patch

    blocks = [block_before_after(r) for r in results_list]
    heights = [max(len(b), len(a), 1) * 0.27 + 1.3 for b, a in blocks]
    fig = new_figure(12.5, sum(heights) + 0.6, layout="constrained")
    fig.suptitle("Time per block: before and after fusion", x=0.01, ha="left", fontsize=12, fontweight="bold")
    kinds = [k for k in KIND_COLORS if k != "comm" or any(o.kind == k for b, _ in blocks for o in b)]
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
