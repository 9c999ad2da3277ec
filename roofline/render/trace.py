"""What `roofline trace` shows: the step's time by block op, the checks, the fusion opportunities, the textbook block
beside it, and (asked for) every kernel — on the terminal and, formatted once, in the HTML report."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from roofline import fmt
from roofline.analysis.opportunities import Chain, opportunities
from roofline.analysis.trace import (
    TIME_TOLERANCE,
    TraceChecks,
    TraceGroup,
    checks,
    groups,
    module_groups,
    per_layer_s,
    trace_rows,
)
from roofline.render.style import group_color
from roofline.results import Results, Row

BOUND_STYLE = {"compute": "cyan", "memory": "magenta"}
TOP_CHAINS = 12


def is_trace(res: Results) -> bool:
    return res.run.trace is not None


def _train(res: Results) -> bool:
    return res.run.config.mode == "train"


def _group_cells(g: TraceGroup, train: bool) -> list[str]:
    return [g.op, *([g.phase] if train else []), str(g.calls), str(g.kernels), fmt.seconds(g.time_s),
            fmt.pct(100 * g.share), fmt.si(g.flops), fmt.si(g.min_bytes, "B"), fmt.intensity(g.intensity or None),
            fmt.si(g.flops_per_s) if g.flops else "–", fmt.si(g.bytes_per_s), g.bound, fmt.pct(g.pct_of_roof)]


GROUP_COLUMNS = ["op", "calls", "kernels", "time", "share", "FLOPs", "bytes", "AI", "FLOP/s", "B/s", "bound", "% roof"]


def groups_table(res: Results, by_module: bool = False) -> Table:
    """The step by block op (or by module, the layers folded together)."""
    train = _train(res)
    title = "The step by module (layers folded)" if by_module else fmt.describe_run(res)
    t = Table(title=title, title_style="bold", header_style="bold", pad_edge=False)
    columns = ["module" if by_module else "op"] + (["phase"] if train else []) + GROUP_COLUMNS[1:]
    for name in columns:
        t.add_column(name, justify="left" if name in ("op", "module", "phase", "bound") else "right", no_wrap=True)
    for g in (module_groups(res) if by_module else groups(res)):
        cells = _group_cells(g, train)
        cells[-2] = Text(g.bound, style=BOUND_STYLE.get(g.bound, ""))  # type: ignore[call-overload]
        t.add_row(*cells)
    return t


KERNEL_COLUMNS = ["#", "op", "aten op", "module", "kernels", "time", "FLOPs", "bytes", "AI", "B/s", "bound", "% roof",
                  "source · note"]


def kernel_cells(r: Row) -> list[str]:
    """One call: its block op, aten op, module, kernels, time and place (what the kernel table shows)."""
    t = r.trace
    assert t is not None
    kernels = t.kernels[0][:48] + (f" +{len(t.kernels) - 1}" if len(t.kernels) > 1 else "") if t.kernels else "(CPU)"
    where = "; ".join(x for x in (t.source, r.note) if x)
    phase = "↶ " if t.phase == "backward" else ""
    return [str(t.index), phase + r.op, t.aten_op.split("::")[-1], t.module or "(model)", kernels,
            fmt.seconds(r.time_median_s), fmt.si(r.flops), fmt.si(r.min_bytes, "B"), fmt.intensity(r.intensity),
            fmt.si(r.bytes_per_s), r.bound, fmt.pct(r.pct_of_roof), where]


def kernels_table(res: Results) -> Table:
    t = Table(title="Every call that launched kernels, in call order (↶ backward)", title_style="bold",
              header_style="bold", pad_edge=False)
    for name in KERNEL_COLUMNS:
        t.add_column(name, justify="right" if name in ("#", "time", "FLOPs", "bytes", "AI", "B/s", "% roof")
                     else "left", no_wrap=name != "source · note", overflow="fold")
    for r in trace_rows(res):
        t.add_row(*kernel_cells(r))
    return t


def chain_cells(k: int, c: Chain) -> list[str]:
    where = ", ".join(c.modules[:2]) + (f" +{len(c.modules) - 2}" if len(c.modules) > 2 else "")
    return [str(k), " + ".join(c.ops) + (" ↶" if c.phase == "backward" else ""), where or "(model)", str(c.kernels),
            fmt.seconds(c.time_s), fmt.nbytes(c.bytes_now), fmt.nbytes(c.bytes_min), fmt.seconds(c.floor_s),
            fmt.seconds(c.saving_s), fmt.pct(c.saving_pct), c.existing]


CHAIN_COLUMNS = ["#", "chain", "where", "kernels", "now", "bytes now", "bytes fused", "fused at roof", "saves",
                 "of step", "what exists"]


def chains_table(chains: list[Chain]) -> Table:
    t = Table(title="Fusion opportunities: memory-bound chains between compute-bound kernels", title_style="bold",
              header_style="bold", pad_edge=False,
              caption="bytes fused: what enters the chain and what leaves it; fused at roof: those bytes at the "
                      "measured copy roof (or its FLOPs at the vector roof)")
    for name in CHAIN_COLUMNS:
        t.add_column(name, justify="left" if name in ("chain", "where", "what exists") else "right",
                     no_wrap=name not in ("what exists", "chain"), overflow="fold")
    for k, c in enumerate(chains[:TOP_CHAINS], start=1):
        t.add_row(*chain_cells(k, c))
    return t


def check_lines(res: Results) -> list[tuple[str, str]]:
    """(level, sentence): the step's time against its kernels, the FLOPs against FlopCounterMode, memory, notes."""
    c, t = checks(res), res.run.trace
    assert t is not None
    out = []
    cpu = res.run.device.kind != "cuda"
    step, unit, counted = c.step_time_s, "aten ops" if cpu else "kernels", "calls" if cpu else "launches"
    if c.kernel_time_s is not None and step:
        why = ("the time between the ops (Python, dispatch)" if cpu else "the GPU waited for the host") \
            if (c.time_gap or 0) > 0 else "the profiler slowed the ops"
        verdict = (f"agree within {100 * TIME_TOLERANCE:.0f} %" if c.agree else
                   f"differ by {100 * abs(c.time_gap or 0):.0f} %: {why}")
        out.append(("ok" if c.agree else "warn",
                    f"Step: {fmt.seconds(step)} timed whole ({t.timer}, median of {len(t.step_samples_s)}) · its "
                    f"{unit} summed {fmt.seconds(c.kernel_time_s)} ({t.kernel_launches} {counted}, median of "
                    f"{t.repeats} profiled steps): {verdict}"))
    out.append(("ok" if c.flop_counter_flops is not None else "warn", _flops_sentence(c)))
    if c.no_formula:
        out.append(("warn", f"No FLOP formula (placed by their bytes): {', '.join(c.no_formula)}"))
    if c.outside_launches:
        out.append(("warn", f"{c.outside_launches} kernels ({fmt.seconds(c.outside_time_s)}) ran outside any aten op "
                            "(a raw Triton or CUDA launch): timed, not placed"))
    if t.peak_mem_bytes is not None:
        out.append(("ok", f"Memory: one step allocates {fmt.nbytes(t.peak_mem_bytes)} beyond its weights and inputs"))
    for note in t.notes:
        out.append(("note", note))
    return out


def _f(value: float) -> str:
    return fmt.si(value, "FLOP")


def _flops_sentence(c: TraceChecks) -> str:
    ours = f"FLOPs: {_f(c.flops)}"
    if c.flop_counter_flops is None:
        return f"{ours}; torch's FlopCounterMode could not count this step ({c.flop_counter_error})"
    parts = []
    if c.causal_saving:
        parts.append(f"− {_f(c.causal_saving)} causal attention's masked half (and the backward's "
                     "recomputation)")
    if c.formula_gaps:
        parts.append(f"+ {_f(c.formula_gaps)} attention torch has no formula for")
    if c.pointwise:
        parts.append(f"+ {_f(c.pointwise)} element-wise, which torch does not count")
    explained = c.flop_counter_flops - c.causal_saving + c.formula_gaps + c.pointwise
    rest = c.flops - explained
    if abs(rest) > 1e-6 * max(c.flops, 1.0):
        parts.append(f"{'+' if rest > 0 else '−'} {_f(abs(rest))} unexplained")
    return f"{ours} = FlopCounterMode's {_f(c.flop_counter_flops)} " + (" ".join(parts) if parts else "(same)")


def textbook_line(res: Results) -> str | None:
    """'your layer 40.4 ms · textbook unfused 27.8 ms · best fused 6.8 ms' (per layer), when a profile was given."""
    t = res.run.trace
    if t is None or t.textbook is None:
        return None
    tb, yours = t.textbook, per_layer_s(res)
    what = "layer" if t.kind == "hf" else "module"
    line = (f"Your {what} {fmt.seconds(yours)} · textbook unfused {fmt.seconds(tb.unfused_s)} · best fused "
            f"{fmt.seconds(tb.fused_s)}" + (f" ({', '.join(tb.fused_ops)})" if tb.fused_ops else ""))
    if tb.mismatch:
        line += f" — the profile's shapes differ: {tb.mismatch}"
    return line


def print_trace(res: Results, console: Console, kernels: bool = False) -> None:
    """The trace on the terminal: the kernel table (asked for), the groups, the checks, the opportunities."""
    if kernels:
        console.print(kernels_table(res))
        console.print(groups_table(res, by_module=True))
    console.print(groups_table(res))
    parts: list[Any] = []
    for level, sentence in check_lines(res):
        parts.append(Text(sentence, style="yellow" if level == "warn" else "dim" if level == "note" else ""))
    line = textbook_line(res)
    if line:
        parts.append(Text(line, style="bold"))
    chains = opportunities(res)
    if chains:
        parts.append(chains_table(chains))
    else:
        parts.append(Text("No fusion opportunity: no chain of memory-bound kernels runs slower than its fused bytes."))
    rows = trace_rows(res)
    parts.append(Text(f"{len(rows)} calls placed ({sum(len(r.trace.kernels) for r in rows if r.trace)} kernels)"))
    console.print(Group(*parts))


# --- the HTML report's trace sections ------------------------------------------------------------------------------

def summary(res: Results) -> list[str]:
    t = res.run.trace
    assert t is not None
    what = f"{t.layers} decoder layer{'s' if t.layers > 1 else ''} of {res.run.config.name} ({t.attn_impl} attention)" \
        if t.kind == "hf" else res.run.config.name
    sentences = [f"{res.run.device.name} ran {what}, {res.run.config.mode}, {res.run.config.dtype}: one step takes "
                 f"{fmt.seconds(t.step_time_s)}."]
    ranked = sorted(groups(res), key=lambda g: -g.time_s)[:3]
    if ranked:
        sentences.append("Most of it: " + ", ".join(f"{g.op}{' (backward)' if g.phase == 'backward' else ''} "
                                                    f"{fmt.pct(100 * g.share)}" for g in ranked) + ".")
    chains = opportunities(res)
    if chains:
        total = sum(c.saving_s for c in chains)
        best = chains[0]
        sentences.append(f"Fusing its {len(chains)} memory-bound chains would save ≈ {fmt.seconds(total)}; the "
                         f"largest, {' + '.join(best.ops)}, ≈ {fmt.seconds(best.saving_s)} "
                         f"({fmt.pct(best.saving_pct)} of the step).")
    line = textbook_line(res)
    if line:
        sentences.append(line + ".")
    return sentences


def context(res: Results) -> dict[str, Any]:
    """The report's trace sections, formatted: groups, checks, opportunities, the kernel table's cells."""
    train = _train(res)
    def formatted(found: list[TraceGroup]) -> list[dict[str, Any]]:
        return [{"cells": _group_cells(g, train), "bound": g.bound, "color": group_color(g.group),
                 "pct": min(g.pct_of_roof or 0.0, 100.0)} for g in found]

    return {"group_columns": GROUP_COLUMNS[:1] + (["phase"] if train else []) + GROUP_COLUMNS[1:],
            "groups": formatted(groups(res)), "modules": formatted(module_groups(res)),
            "checks": check_lines(res), "textbook": textbook_line(res),
            "chain_columns": CHAIN_COLUMNS, "chains": [chain_cells(k, c) for k, c in enumerate(opportunities(res), 1)],
            "zero_flops": [g.op for g in groups(res) if not g.flops]}


KERNEL_REPORT_COLUMNS = [("op", ""), ("aten op", ""), ("module", ""), ("kernels", ""), ("time", "num"),
                         ("FLOPs", "num"), ("bytes", "num"), ("intensity", "num"), ("B/s", "num"), ("bound", ""),
                         ("% of roof", "num"), ("source · note", "")]


def kernel_row(r: Row) -> dict[str, Any]:
    """A call as the report's sortable table shows it (the template's ops table: one cell per column)."""
    cells = kernel_cells(r)
    values = [r.op, None, r.trace.module if r.trace else "", None, r.time_median_s, r.flops, r.min_bytes, r.intensity,
              r.bytes_per_s, r.bound, r.pct_of_roof, None]
    classes = ["", "nowrap", "", "note", "num time", "num", "num", "num", "num", "bound", "num pct", "note"]
    return {"status": r.status, "group": r.group, "group_color": group_color(r.group), "bound": r.bound,
            "pct": min(r.pct_of_roof or 0.0, 100.0), "spread": "",
            "cells": [{"text": text, "sort": "" if value is None else value, "cls": cls}
                      for text, value, cls in zip(cells[1:], values, classes, strict=True)]}
