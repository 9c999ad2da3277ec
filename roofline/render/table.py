"""The terminal view of runs: a profile's table and summary, a sweep's table, TP scaling, counters vs formulas."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from roofline import fmt
from roofline.analysis.block import block_before, kind_split
from roofline.analysis.counters import explain_gap, pct_diff
from roofline.analysis.fusion import summarize
from roofline.analysis.pipeline import pipeline_lines
from roofline.analysis.pipeline import summarize as summarize_pipeline
from roofline.analysis.scaling import Scaling
from roofline.analysis.sweep import sweep_series
from roofline.render.figures.sweep import slope_text
from roofline.results import Results, Row

NEEDS_GPU = "needs a CUDA GPU"  # how ops/base.py starts the reason of a variant this device cannot run

BOUND_STYLE = {"compute": "cyan", "memory": "magenta"}
STATUS_STYLE = {"failed": "bold red", "skipped": "yellow"}


TRAIN_COLUMNS = [("bwd", "right"), ("saved", "right")]


def is_train(results: Results) -> bool:
    return any(r.mode == "train" for r in results.rows)


def ops_table(results: Results) -> Table:
    """One row per variant. Train mode: FLOPs, bytes and time are the forward + backward step; `bwd` is the
    backward alone and `saved` the activation memory the op adds (kept by autograd for the backward)."""
    train = is_train(results)
    t = Table(title=fmt.describe_run(results), title_style="bold", header_style="bold", pad_edge=False)
    columns = [("op", "left"), ("variant", "left"), ("FLOPs", "right"), ("bytes", "right"), ("AI", "right"),
               ("time", "right"), *(TRAIN_COLUMNS if train else []), ("FLOP/s", "right"), ("B/s", "right"),
               ("bound", "left"), ("% roof", "right"), ("peak mem", "right"), ("note", "left")]
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=name != "note")
    previous_op = None
    for r in results.rows:
        if elsewhere(r):
            continue
        cells = _cells(r, r.op != previous_op, results.run.device.max_sm_clock_mhz)
        if train:
            cells[6:6] = _train_cells(r)
        t.add_row(*cells)
        previous_op = r.op
    return t


def elsewhere(r: Row) -> bool:
    """A variant this device can never run (it needs a CUDA GPU): said once under the table, not row by row."""
    return r.status == "skipped" and r.note.startswith(NEEDS_GPU)


def elsewhere_line(results: Results) -> str:
    """'Not run on this CPU (they need a CUDA GPU): softmax · triton; attention · sdpa_cudnn, triton'."""
    by_op: dict[str, list[str]] = {}
    for r in results.rows:
        if elsewhere(r):
            by_op.setdefault(r.op, []).append(r.variant)
    if not by_op:
        return ""
    named = "; ".join(f"{op} · {', '.join(variants)}" for op, variants in by_op.items())
    return f"Not run on this {results.run.device.kind.upper()} (they need a CUDA GPU): {named}"


def _train_cells(r: Row) -> list[str]:
    if r.status != "ok":
        return ["", ""]
    return [fmt.seconds(r.backward_time_s), fmt.nbytes(r.saved_new_bytes)]


def _cells(r: Row, show_op: bool, max_clock: int | None) -> list[Text | str]:
    op = Text(r.op + (f" ×{r.per_block}" if r.per_block > 1 else "") if show_op else "")
    variant = Text(r.variant + (" ⚡" if r.fused else ""))
    if r.status != "ok":
        note = Text(f"{r.status}: {r.note}", style=STATUS_STYLE.get(r.status, ""))
        return [op, variant, fmt.si(r.flops), fmt.si(r.min_bytes, "B"), fmt.intensity(r.intensity),
                "", "", "", "", "", "", note]
    tflops = fmt.si(r.flops_per_s)
    gbs = fmt.si(r.bytes_per_s)
    bound = Text(r.bound, style=BOUND_STYLE.get(r.bound, ""))
    text = fmt.ok_row_note(r, max_clock)
    note = Text(text, style="bold red" if r.suspect else "yellow" if text and not r.note else "")
    return [op, variant, fmt.si(r.flops), fmt.si(r.min_bytes, "B"), fmt.intensity(r.intensity),
            fmt.seconds(r.time_median_s), tflops, gbs, bound, fmt.pct(r.pct_of_roof),
            fmt.nbytes(r.peak_mem_bytes), note]


def summary(results: Results) -> Group:
    parts: list[Table | Text] = []
    split = kind_split(block_before(results))
    total = sum(split.values())
    if total > 0:
        parts.append(Text.assemble(
            ("Unfused block: ", "bold"), f"{fmt.seconds(total)} per block, ",
            (f"{100 * split['compute'] / total:.0f} % compute-bound", "cyan"), ", ",
            (f"{100 * split['memory'] / total:.0f} % memory-bound", "magenta"),
            *((", ", (f"{100 * split['comm'] / total:.0f} % communication", "green")) if split["comm"] else ()),
            " (each op at its baseline variant × times per block)"))
    pipeline = summarize_pipeline(results)
    if pipeline:
        first, *rest = pipeline_lines(pipeline)
        parts.append(Text.assemble(("Pipeline: ", "bold"), first))
        parts += [Text(f"  {line}") for line in rest]
    moe_line = fmt.moe_line(results.run)
    if moe_line:
        parts.append(Text(moe_line))
    fusions = summarize(results)
    if fusions:
        train = is_train(results)
        t = Table(title="Fusion before → after" + (" (forward + backward)" if train else ""), title_style="bold",
                  header_style="bold", pad_edge=False)
        for name in ("group", "fused variant", "before", "after", "speedup", "bytes before", "bytes after",
                     "peak mem before", "peak mem after", *(("saved before", "saved after") if train else ())):
            t.add_column(name, justify="left" if name in ("group", "fused variant") else "right")
        for f in fusions:
            saved = (fmt.nbytes(f.chain_saved_bytes), fmt.nbytes(f.fused_saved_bytes)) if train else ()
            t.add_row(f.group, f.fused_variant, fmt.seconds(f.chain_time_s), fmt.seconds(f.fused_time_s),
                      Text(fmt.ratio(f.speedup), style="green" if f.speedup >= 1 else "red"),
                      fmt.nbytes(f.chain_bytes), fmt.nbytes(f.fused_bytes), fmt.nbytes(f.chain_peak_mem),
                      fmt.nbytes(f.fused_peak_mem), *saved)
        parts.append(t)
    counts = {s: sum(r.status == s for r in results.rows) for s in ("ok", "skipped", "failed")}
    parts.append(Text(f"{counts['ok']} measured, {counts['skipped']} skipped, {counts['failed']} failed"))
    if line := elsewhere_line(results):
        parts.append(Text(line, style="dim"))
    return Group(*parts)


def print_results(results: Results, console: Console) -> None:
    if results.run.trace is not None:  # `roofline trace`: block ops, checks, fusion opportunities
        from roofline.render.trace import print_trace

        print_trace(results, console)
        return
    console.print(ops_table(results))
    console.print(summary(results))


def sweep_table(results: Results) -> Table:
    """One row per series (each attention variant, the block unfused and best), one column per N, and the slopes."""
    seq_lens = sorted({r.seq_len for r in results.rows})
    c = results.run.config
    t = Table(title=f"{c.name} · batch {c.batch} · time and peak memory vs N", title_style="bold",
              header_style="bold", pad_edge=False)
    t.add_column("series")
    for n in seq_lens:
        t.add_column(f"N={n}", justify="right")
    t.add_column("time ∝ N^", justify="right")
    t.add_column("mem ∝ N^", justify="right")
    for s in sweep_series(results):
        cells = {n: fmt.seconds(sec) + (f"\n{fmt.nbytes(mem)}" if mem else "") for n, sec, mem in s.points}
        cells |= {n: "skipped" if note.startswith("skipped") else "–" for n, note in s.missing}
        t.add_row(s.label, *(cells.get(n, "") for n in seq_lens), slope_text(s.time_slope()),
                  slope_text(s.memory_slope()))
    return t


def scaling_table(rows: list[Scaling], n: int) -> Table:
    """TP scaling per (op, variant) and for the block: TP=1 and TP=N times, speedup, efficiency."""
    t = Table(title=f"Tensor-parallel scaling, TP=1 → TP={n}", header_style="bold", pad_edge=False)
    for col in ("op", "variant", "TP=1", f"TP={n}", "speedup", "efficiency"):
        t.add_column(col, justify="left" if col in ("op", "variant") else "right")
    for s in rows:
        t.add_row(s.op, s.variant, fmt.seconds(s.base_s), fmt.seconds(s.tp_s), fmt.ratio(s.base_s / s.tp_s),
                  fmt.pct(100 * s.efficiency), style="bold" if s.op == "block" else None)
    return t


def counters_table(res: Results) -> Table:
    """Analytic vs measured per counted row: DRAM bytes and FLOPs with the % difference, L2/L1 bytes, and why."""
    t = Table(title="Analytic vs measured (ncu)", header_style="bold", show_lines=False,
              caption="min bytes: the formula's compulsory DRAM traffic · L1 counts the L1/TEX pipe only: TMA "
                      "loads (cuBLAS GEMMs, flash attention on Hopper) go from L2 to shared memory past it")
    for col in ("op · variant", "kernels", "min bytes", "DRAM", "Δ", "L2", "L1", "FLOPs", "executed", "Δ", "why"):
        t.add_column(col, justify="left" if col in ("op · variant", "why") else "right", overflow="fold")
    for r in res.rows:
        if r.measured_kernels:
            t.add_row(f"{r.op} · {r.variant}", str(r.measured_kernels), fmt.nbytes(r.min_bytes),
                      fmt.nbytes(r.measured_dram_bytes), fmt.signed_pct(pct_diff(r.min_bytes, r.measured_dram_bytes)),
                      fmt.nbytes(r.measured_l2_bytes), fmt.nbytes(r.measured_l1_bytes), fmt.flops(r.flops),
                      fmt.flops(r.measured_flops), fmt.signed_pct(pct_diff(r.flops, r.measured_flops)),
                      explain_gap(r))
    return t
