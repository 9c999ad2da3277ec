"""The terminal view of a run: one row per variant and a summary (time split, fusions before/after)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from roofline import fmt
from roofline.fusion import block_time_split, summarize
from roofline.results import Results, Row

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
        cells = _cells(r, show_op=r.op != previous_op)
        if train:
            cells[6:6] = _train_cells(r)
        t.add_row(*cells)
        previous_op = r.op
    return t


def _train_cells(r: Row) -> list[str]:
    if r.status != "ok":
        return ["", ""]
    return [fmt.seconds(r.backward_time_s), fmt.nbytes(r.saved_new_bytes)]


def _cells(r: Row, show_op: bool) -> list[Text | str]:
    op = Text(r.op + (f" ×{r.per_block}" if r.per_block > 1 else "") if show_op else "")
    variant = Text(r.variant + (" ⚡" if r.fused else ""))
    if r.status != "ok":
        note = Text(f"{r.status}: {r.note}", style=STATUS_STYLE.get(r.status, ""))
        return [op, variant, fmt.si(r.flops), fmt.si(r.min_bytes, "B"), fmt.intensity(r.intensity),
                "", "", "", "", "", "", note]
    tflops = fmt.si(r.flops_per_s)
    gbs = fmt.si(r.bytes_per_s)
    bound = Text(r.bound, style=BOUND_STYLE.get(r.bound, ""))
    text = fmt.ok_row_note(r)
    note = Text(text, style="yellow" if "throttled" in text or "host-bound" in text else "")
    return [op, variant, fmt.si(r.flops), fmt.si(r.min_bytes, "B"), fmt.intensity(r.intensity),
            fmt.seconds(r.time_median_s), tflops, gbs, bound, fmt.pct(r.pct_of_roof),
            fmt.nbytes(r.peak_mem_bytes), note]


def summary(results: Results) -> Group:
    parts: list[Table | Text] = []
    split = block_time_split(results)
    total = sum(split.values())
    if total > 0:
        parts.append(Text.assemble(
            ("Unfused block: ", "bold"), f"{fmt.seconds(total)} per block, ",
            (f"{100 * split['compute'] / total:.0f} % compute-bound", "cyan"), ", ",
            (f"{100 * split['memory'] / total:.0f} % memory-bound", "magenta"),
            *((", ", (f"{100 * split['comm'] / total:.0f} % communication", "green")) if split["comm"] else ()),
            " (each op at its baseline variant × times per block)"))
    from roofline.ops.moe import flops_per_token_line  # the op catalog imports torch: only when a table is drawn

    moe_line = flops_per_token_line(results.run.get("config", {}))  # type: ignore[arg-type]
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
    return Group(*parts)


def print_results(results: Results, console: Console) -> None:
    console.print(ops_table(results))
    console.print(summary(results))
