"""`roofline sweep`: time and peak memory of every attention variant, and of the whole block, against N.

Naive attention writes the [b, h, N, N] scores to memory: its memory grows as N² and at some N it no longer
fits. measure.py predicts each variant's bytes (inputs, outputs and declared scratch) and skips it with a
note before allocating anything; the sweep prints those predictions up front. Fused attention keeps the
scores on chip: O(N) memory, though its time still grows as N² (the FLOPs do). The plot fits log-log slopes
over the points measured ok: time ∝ N^a, peak memory ∝ N^b (expect b ≈ 2 for naive, ≈ 1 for fused).

The whole block per N (--block): every op at every variant, summed two ways — "unfused" (each op at its
baseline variant, as the profile's time split counts it) and "best" (each op at its fastest variant, each
chain a fused op replaces swapped for it when faster or when the chain did not fit).

One results.json holds every (dtype, N) of the sweep; run["sweep"] records the grid.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from roofline.errors import CannotRun, RooflineError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table

    from roofline.config import BlockConfig
    from roofline.device import DeviceInfo
    from roofline.measure import Roofs, Settings
    from roofline.ops import Op, Variant
    from roofline.results import Results, Row

DEFAULT_SEQ_LENS = "1024,2048,4096,8192,16384,32768"


# --- planning -------------------------------------------------------------------------------------------

@dataclass
class SweepPoint:
    """One (dtype, N) of the sweep and the (op, variant) pairs to measure there."""

    config: BlockConfig
    items: list[tuple[Op, Variant]]


@dataclass(frozen=True)
class PredictedSkip:
    """A variant measure.py will skip at this N because its predicted bytes exceed the free memory."""

    op: str
    variant: str
    seq_len: int
    dtype: str
    need_bytes: int


def parse_seq_lens(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RooflineError(f"--seq-len takes a comma list of positive integers, got '{text}'") from None
    if not values or min(values) <= 0:
        raise RooflineError(f"--seq-len takes a comma list of positive integers, got '{text}'")
    return sorted(set(values))


def plan_sweep(model: str, seq_lens: list[int], dtypes: list[str], batch: int = 1,
               variants: list[str] | None = None, block: bool = True) -> list[SweepPoint]:
    """Every (dtype, N): the attention variants (all, or `variants`), plus every other op of the block if `block`."""
    from roofline.config import make_config
    from roofline.ops import get_op, plan

    known = [v.name for v in get_op("attention").variants]
    unknown = [v for v in variants or [] if v not in known]
    if unknown:
        raise RooflineError(f"unknown attention variant '{unknown[0]}' (known: {', '.join(known)})")
    points = []
    for dtype in dtypes:
        for n in seq_lens:
            c = make_config(model, seq_len=n, batch=batch, dtype=dtype)
            items = [(op, v) for op, v in plan(c, None if block else ["attention"])
                     if op.name != "attention" or not variants or v.name in variants]
            points.append(SweepPoint(c, items))
    return points


def predicted_skips(points: list[SweepPoint], free_bytes: int) -> list[PredictedSkip]:
    """What measure.measure will skip as not fitting: the same predicted_bytes against the same free memory."""
    from roofline.measure import predicted_bytes

    return [PredictedSkip(op.name, v.name, p.config.seq_len, p.config.dtype, need)
            for p in points for op, v in p.items if (need := predicted_bytes(op, v, p.config)) > free_bytes]


def run_sweep(points: list[SweepPoint], dev: DeviceInfo, roofs: Roofs, settings: Settings,
              on_start: Callable[[Op, Variant], None], on_row: Callable[[Row], None],
              announce: Callable[[BlockConfig], None] = lambda c: None) -> None:
    """measure.run_plan at every point in turn (it does the per-variant memory check and the skipping)."""
    from roofline import measure

    for p in points:
        announce(p.config)
        measure.run_plan(p.items, p.config, dev, roofs, settings, on_start=on_start, on_row=on_row)


# --- analysis: series against N, slopes, the block ------------------------------------------------------

@dataclass
class Series:
    """One line of the plot: (N, seconds, peak bytes) where measured ok; (N, note) where not."""

    name: str  # the attention variant, or "block (unfused)" / "block (best)"
    dtype: str
    kind: str  # "attention" | "block"
    points: list[tuple[int, float, int | None]]
    missing: list[tuple[int, str]]

    @property
    def label(self) -> str:
        return f"{self.name} · {self.dtype}"

    def time_slope(self) -> float | None:
        return loglog_slope([(n, t) for n, t, _ in self.points])

    def memory_slope(self) -> float | None:
        return loglog_slope([(n, m) for n, _, m in self.points if m])


def loglog_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log y against log N (None below two distinct N)."""
    pts = [(math.log(n), math.log(y)) for n, y in points if y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def config_at(results: Results, seq_len: int, dtype: str) -> BlockConfig:
    """The BlockConfig of one point of a saved sweep (run["config"] holds the first point's)."""
    from roofline.config import BlockConfig

    names = {f.name for f in dataclasses.fields(BlockConfig)}
    base = {k: v for k, v in results.run.get("config", {}).items() if k in names}  # type: ignore[union-attr]
    return BlockConfig(**{**base, "seq_len": seq_len, "dtype": dtype})  # type: ignore[arg-type]


def block_total(rows: list[Row], c: BlockConfig, best: bool) -> tuple[float, int | None] | None:
    """(seconds per block, largest op peak memory) at one point, or None when some op of the block is missing."""
    from roofline.ops import ops_for

    ops = ops_for(c)
    by_op = {op.name: [r for r in rows if r.op == op.name] for op in ops}

    def pick(name: str) -> Row | None:
        if not best:  # the baseline: the op's first variant, unfused, measured ok
            first = (by_op[name] or [None])[0]
            return first if first and first.status == "ok" and not first.fused else None
        measured = [r for r in by_op[name] if r.status == "ok"]
        return min(measured, key=lambda r: r.time_median_s or math.inf) if measured else None

    chosen = {op.name: pick(op.name) for op in ops if not op.replaces}
    for fused in (op for op in ops if op.replaces and best):
        chain = [name for name in fused.replaces if name in chosen]
        row = pick(fused.name)
        if row is None or not chain:
            continue
        chain_s = None if any(chosen[n] is None for n in chain) else sum(_block_s(chosen[n]) for n in chain)
        if chain_s is None or _block_s(row) < chain_s:
            chosen = {k: v for k, v in chosen.items() if k not in chain} | {fused.name: row}
    if any(r is None for r in chosen.values()):
        return None
    mems = [r.peak_mem_bytes for r in chosen.values()]  # type: ignore[union-attr]
    return sum(_block_s(r) for r in chosen.values()), (None if None in mems else max(mems))  # type: ignore


def _block_s(row: Row | None) -> float:
    return (row.time_median_s or 0.0) * row.per_block if row else math.inf


def sweep_series(results: Results) -> list[Series]:
    """Each attention variant per dtype, then the block (unfused, best) per dtype where the block was swept."""
    out: dict[tuple[str, str], Series] = {}
    for r in results.rows:
        if r.op == "attention":
            s = out.setdefault((r.variant, r.dtype), Series(r.variant, r.dtype, "attention", [], []))
            if r.status == "ok" and r.time_median_s:
                s.points.append((r.seq_len, r.time_median_s, r.peak_mem_bytes))
            else:
                s.missing.append((r.seq_len, f"{r.status}: {r.note}"))
    if results.run.get("sweep", {}).get("block"):  # type: ignore[union-attr]
        for dtype in dict.fromkeys(r.dtype for r in results.rows):
            for best in (False, True):
                s = Series(f"block ({'best' if best else 'unfused'})", dtype, "block", [], [])
                for n in sorted({r.seq_len for r in results.rows if r.dtype == dtype}):
                    rows = [r for r in results.rows if r.seq_len == n and r.dtype == dtype]
                    total = block_total(rows, config_at(results, n, dtype), best)
                    if total:
                        s.points.append((n, *total))
                    else:
                        s.missing.append((n, "an op of the block was not measured"))
                out[s.name, dtype] = s
    return list(out.values())


def split_runs(results: Results) -> list[Results]:
    """One Results per (dtype, N), as `profile` would have saved it (for the roofline figure or `compare`)."""
    from roofline.results import Results

    runs = []
    for dtype, n in dict.fromkeys((r.dtype, r.seq_len) for r in results.rows):
        c = config_at(results, n, dtype)
        config = {**dataclasses.asdict(c), "q_len": c.q_len, "kv_len": c.kv_len, "tokens": c.tokens}
        rows = [r for r in results.rows if (r.dtype, r.seq_len) == (dtype, n)]
        runs.append(Results(run={**results.run, "config": config}, rows=rows))
    return runs


# --- rendering: table, plots ----------------------------------------------------------------------------

def sweep_table(results: Results) -> Table:
    from rich.table import Table

    from roofline import fmt

    seq_lens = sorted({r.seq_len for r in results.rows})
    config = results.run.get("config", {})
    t = Table(title=f"{config.get('name')} · batch {config.get('batch')} · time and peak memory vs N",  # type: ignore
              title_style="bold", header_style="bold", pad_edge=False)
    t.add_column("series")
    for n in seq_lens:
        t.add_column(f"N={n}", justify="right")
    t.add_column("time ∝ N^", justify="right")
    t.add_column("mem ∝ N^", justify="right")
    for s in sweep_series(results):
        cells = {n: fmt.seconds(sec) + (f"\n{fmt.nbytes(mem)}" if mem else "") for n, sec, mem in s.points}
        cells |= {n: "skipped" if note.startswith("skipped") else "–" for n, note in s.missing}
        t.add_row(s.label, *(cells.get(n, "") for n in seq_lens), _slope_text(s.time_slope()),
                  _slope_text(s.memory_slope()))
    return t


def _slope_text(slope: float | None) -> str:
    return "–" if slope is None else f"{slope:.2f}"


def sweep_figure(results: Results) -> Figure:
    """Log-log time and peak memory against N, one line per series, its fitted slope in the legend."""
    from roofline import plot

    series = sweep_series(results)
    dtypes = list(dict.fromkeys(s.dtype for s in series))
    names = list(dict.fromkeys(s.name for s in series))
    seq_lens = sorted({r.seq_len for r in results.rows})
    fig = plot.new_figure(13, 5.6, layout="constrained")
    ax_time, ax_mem = fig.subplots(1, 2, sharex=True)
    palette = ("#e08a00", "#1f6fb4", "#2a9d5c", "#c23b75", "#7b52c7", "#8c5a2b", "#555555")
    block_colors = {"block (unfused)": "#999999", "block (best)": "#222222"}
    for s in (s for s in series if s.points):
        style = {"color": block_colors.get(s.name) or palette[names.index(s.name) % len(palette)],
                 "linestyle": ("-", "--", ":", "-.")[dtypes.index(s.dtype) % 4],
                 "marker": "x" if s.kind == "block" else plot.variant_marker(s.name)}
        ns = [n for n, _, _ in s.points]
        ax_time.plot(ns, [t for _, t, _ in s.points], label=f"{s.label}  ∝ N^{_slope_text(s.time_slope())}",
                     **style)
        mem = [(n, m) for n, _, m in s.points if m]
        if mem:
            ax_mem.plot(*zip(*mem, strict=True), label=f"{s.label}  ∝ N^{_slope_text(s.memory_slope())}", **style)
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
    config = results.run.get("config", {})
    device = results.run.get("device", {})
    fig.suptitle(f"{config.get('name')} · batch {config.get('batch')} · {device.get('name', '?')}: "  # type: ignore
                 "attention and block vs N (slopes fitted over points measured ok)", fontsize=10)
    notes = sorted({f"{s.label} at N={n}: {note}" for s in series for n, note in s.missing
                    if "would need" in note})
    if notes:
        fig.text(0.01, -0.01, "\n".join(notes[:6]), fontsize=7, va="top", color="#b42318")
    return fig


def write_plots(results: Results, out_dir: Path) -> list[Path]:
    """sweep.png/.svg; with several dtypes also roofline.png/.svg, the dtypes overlaid at the largest N they share."""
    from roofline import plot

    figures = {"sweep": sweep_figure(results)}
    dtypes = {r.dtype for r in results.ok_rows()}
    shared = [n for n in {r.seq_len for r in results.rows}
              if {r.dtype for r in results.ok_rows() if r.seq_len == n} == dtypes]
    if len(dtypes) > 1 and shared:
        runs = [r for r in split_runs(results) if r.run["config"]["seq_len"] == max(shared)]  # type: ignore
        figures["roofline"] = plot.roofline_figure(runs)
    written = []
    for name, fig in figures.items():
        for ext in ("png", "svg"):
            path, tmp = out_dir / f"{name}.{ext}", out_dir / f".{name}.{ext}.tmp"
            tmp.write_bytes(plot.figure_bytes(fig, ext))
            tmp.replace(path)
            written.append(path)
    return written


# --- the command ----------------------------------------------------------------------------------------

def sweep_command(
    model: Annotated[str, typer.Option(help="Model preset in configs/models, or a .toml path.")] = "gpt-7b",
    seq_len: Annotated[str, typer.Option("--seq-len", help="Sequence lengths N, comma-separated.")]
    = DEFAULT_SEQ_LENS,
    dtype: Annotated[str | None, typer.Option(help="Dtypes, comma-separated: fp32|tf32|bf16|fp16|fp8 "
                                                   "(default bf16 on GPU, fp32 on CPU).")] = None,
    batch: Annotated[int, typer.Option(help="Sequences per batch.")] = 1,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: the GPU if any).")] = None,
    variants: Annotated[str | None, typer.Option(help="Attention variants to sweep, comma-separated "
                                                      "(default all).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/<device>-<model>-sweep).")]
    = None,
    budget: Annotated[float | None, typer.Option(help="Timing budget per variant, seconds.")] = None,
    block: Annotated[bool, typer.Option("--block/--no-block", help="Also every other op of the block, per N.")]
    = True,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write results JSON here ('-' = stdout).")]
    = None,
    csv_out: Annotated[str | None, typer.Option("--csv", help="Also write results CSV here ('-' = stdout).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write sweep.png/.svg.")] = True,
) -> None:
    """Time and peak memory of every attention variant and of the whole block against N (log-log slopes)."""
    from roofline import cli, measure, results
    from roofline import device as devices
    from roofline.ops.moe import flops_per_token_line

    t_start = time.perf_counter()
    dev = devices.detect(device)
    for w in dev.warnings:
        cli.warn(w)
    dtypes = list(dict.fromkeys(cli.csv_list(dtype) or ["bf16" if dev.kind == "cuda" else "fp32"]))
    points = plan_sweep(model, parse_seq_lens(seq_len), dtypes, batch, cli.csv_list(variants), block)
    first = points[0].config
    out_dir = cli.writable_dir(out or Path("reports") / f"{dev.slug}-{first.name}-sweep")
    settings = measure.Settings.for_device(dev, budget)
    roofs, measured = measure.load_roofs(dev, False, cli.warn, cli.info, first)
    run = measure.run_metadata(first, dev, roofs, settings, cli.command_line, measured)
    run["sweep"] = {"seq_lens": sorted({p.config.seq_len for p in points}), "dtypes": dtypes, "block": block,
                    "attention_variants": cli.csv_list(variants)}
    res = results.Results(run=run)
    if moe_line := flops_per_token_line(first):
        cli.info(moe_line)
    free = devices.free_memory_bytes(dev)
    for s in predicted_skips(points, free):
        cli.info(f"{s.op} · {s.variant} at N={s.seq_len} ({s.dtype}) would need {s.need_bytes / 1e9:.1f} GB, "
                 f"{free / 1e9:.1f} GB free: skipped before allocating")

    def on_row(row: Row) -> None:
        res.rows.append(row)
        results.save(res, out_dir)

    def runner(items, config, dev, roofs, settings, on_start, on_row) -> None:  # type: ignore[no-untyped-def]
        """cli's progress bar calls this in place of measure.run_plan: it counts every item of the sweep."""
        run_sweep(points, dev, roofs, settings, on_start, on_row, lambda c: cli.info(f"N = {c.seq_len} · {c.dtype}"))

    cli.run_with_progress([item for p in points for item in p.items], first, dev, roofs, settings, on_row, runner)
    res.run["wall_s"] = time.perf_counter() - t_start
    results.save(res, out_dir)
    for target, text in ((json_out, results.to_json_text), (csv_out, results.to_csv_text)):
        if target == "-":
            sys.stdout.write(text(res) + "\n")
        elif target:
            results.atomic_write(Path(target), text(res))
    if "-" not in (json_out, csv_out):
        cli.stdout.print(sweep_table(res))
    if plots and res.ok_rows():
        for path in write_plots(res, out_dir):
            cli.info(f"Wrote {path}")
    cli.info(f"Wrote {out_dir}/results.json and results.csv in {res.run['wall_s']:.1f} s")
    if not res.ok_rows():
        raise CannotRun(f"nothing could be measured on {dev.name} (see the notes in {out_dir}/results.json)")
