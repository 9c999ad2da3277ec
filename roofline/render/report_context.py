"""What the HTML report shows for one run, already formatted: templates/report.html.j2 only lays it out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from roofline import fmt
from roofline.analysis.block import KIND_NAMES, block_before_after, kind_split, split_text
from roofline.analysis.counters import explain_gap, pct_diff
from roofline.analysis.fusion import summarize
from roofline.analysis.pipeline import STEP_KINDS, pipeline_lines, transfers
from roofline.analysis.pipeline import summarize as summarize_pipeline
from roofline.analysis.scaling import differing, ranks, scaling_runs
from roofline.fmt import describe_run
from roofline.render.figures.roofs import roof_name, roof_order
from roofline.render.style import group_color
from roofline.results import Results, Row, Run


def run_context(res: Results, label: str, scaled: bool = False) -> dict[str, Any]:
    """Everything the template shows for one run, already formatted (the template only lays it out). The block's
    compute / memory / communication split is shown for a run with collectives, and for every run of a report
    that compares TP=1 with TP=N (`scaled`)."""
    if res.run.trace is not None:
        return trace_run_context(res, label)
    has_comm = any(r.unit == "comm" for r in res.rows)
    train = any(r.mode == "train" for r in res.rows)
    return {"label": label, "train": train, "columns": op_columns(train), "title": describe_run(res),
            "summary": summary(res), "facts": facts(res.run),
            "split": block_split(res) if has_comm or scaled else [],
            "ceilings": ceilings(res), "raised": raised_roofs(res),
            "rows": [op_row(r, train, res.run.device.max_sm_clock_mhz) for r in res.rows],
            "fusions": fusions(res),
            "warnings": warnings(res), "command": res.run.command, "started_at": res.run.started_at,
            "groups": {r.group: group_color(r.group) for r in res.rows}, "counters": counter_rows(res), "trace": None}


def trace_run_context(res: Results, label: str) -> dict[str, Any]:
    """A trace's report: the same page, its tables those of render/trace.py (one row per call in the ops table)."""
    from roofline.render import trace

    rows = [r for r in res.rows if r.trace is not None]
    return {"label": label, "train": False, "columns": trace.KERNEL_REPORT_COLUMNS, "title": describe_run(res),
            "summary": trace.summary(res), "facts": facts(res.run), "split": [], "ceilings": ceilings(res),
            "raised": raised_roofs(res), "rows": [trace.kernel_row(r) for r in rows], "fusions": [],
            "warnings": warnings(res), "command": res.run.command, "started_at": res.run.started_at,
            "groups": {r.group: group_color(r.group) for r in rows}, "counters": [], "trace": trace.context(res)}


def counter_rows(res: Results) -> list[dict[str, str]]:
    """Analytic vs measured (ncu) per counted row, formatted, with the gap explained ([] without --counters)."""
    signed = fmt.signed_pct
    return [{"name": f"{r.op} · {r.variant}", "kernels": str(r.measured_kernels),
             "min_bytes": fmt.nbytes(r.min_bytes), "dram": fmt.nbytes(r.measured_dram_bytes),
             "dram_diff": signed(pct_diff(r.min_bytes, r.measured_dram_bytes)),
             "l2": fmt.nbytes(r.measured_l2_bytes), "l1": fmt.nbytes(r.measured_l1_bytes), "flops": fmt.flops(r.flops),
             "executed": fmt.flops(r.measured_flops), "flops_diff": signed(pct_diff(r.flops, r.measured_flops)),
             "why": explain_gap(r)}
            for r in res.rows if r.measured_kernels]


def summary(res: Results) -> list[str]:
    """The one-paragraph summary, as sentences: what ran, where the time goes, what fusion buys."""
    c, device, n = res.run.config, res.run.device.name, ranks(res)
    before, after = block_before_after(res)
    total = sum(o.time_s for o in before)
    shape = f"{c.mode}, batch {c.batch}, seq len {c.seq_len}, {c.dtype}"
    sentences = [f"{device} ran one {c.name} block ({shape})." if n == 1 else
                 f"{n} × {device} ran one {c.name} block ({shape}) with {n}-way tensor "
                 f"parallelism, each rank its 1/{n} shard; an op's time is its slowest rank's."]
    if c.pp > 1:
        how = "".join(f", {k}-way {name}" for k, name in ((c.tp, "tensor parallelism"), (c.dp, "data parallelism"))
                      if k > 1)
        sentences = [f"{c.ranks} × {device} ran {c.layers} {c.name} blocks as a {c.pp}-stage pipeline ({shape}, "
                     f"{c.microbatches} microbatches a step{how}); the ops below are one block's, an op's time its "
                     "slowest rank's."]
    if total > 0:
        sentences.append(f"Unfused it takes {fmt.seconds(total)}: {split_text(kind_split(before))}.")
    found = summarize(res)
    if found:
        best = max(found, key=lambda f: f.speedup)
        pace = (f"{fmt.ratio(best.speedup)} faster than" if best.speedup >= 1
                else f"{fmt.ratio(1 / best.speedup)} slower than")
        sentences.append(f"Best fusion: {best.group} · {best.fused_variant} runs {pace} {' → '.join(best.chain_ops)}"
                         f" ({fmt.seconds(best.chain_time_s)} → {fmt.seconds(best.fused_time_s)}, "
                         f"{fmt.nbytes(best.chain_bytes)} → {fmt.nbytes(best.fused_bytes)} of compulsory traffic).")
        after_total = sum(o.time_s for o in after)
        if after_total > 0 and total > 0:
            sentences.append(f"With each chain replaced by its fastest fused variant the block takes "
                             f"{fmt.seconds(after_total)} ({fmt.ratio(total / after_total)} faster).")
    counts = {s: sum(r.status == s for r in res.rows) for s in ("ok", "skipped", "failed")}
    sentences.append(f"{counts['ok']} variants measured, {counts['skipped']} skipped, {counts['failed']} failed.")
    return sentences


def block_split(res: Results) -> list[dict[str, Any]]:
    """The block before fusion (each op at its baseline variant: what `profile --tp` and `tp-scaling` print) and
    after (each chain at its fastest fused variant), split into compute-bound, memory-bound and communication."""
    out = []
    for name, how, ops in zip(("before fusion", "after fusion"),
                              ("each op at its baseline variant", "each fusion chain at its fastest fused variant"),
                              block_before_after(res), strict=True):
        split = kind_split(ops)
        total = sum(split.values())
        if total > 0:
            out.append({"name": name, "how": how, "total": fmt.seconds(total), "parts": [
                {"kind": kind, "name": KIND_NAMES[kind], "time": fmt.seconds(seconds) if seconds else "0",
                 "pct": 100 * seconds / total}
                for kind, seconds in split.items()]})
    return out


def scaling_tables(results_list: list[Results]) -> list[dict[str, Any]]:
    """tp_scaling.scaling of each TP=N run against its TP=1 run, one table per TP=1 run: a row per (op, variant)
    and the unfused block, a column group per TP=N run ([] unless a TP=1 and a TP=N run of one block are given)."""
    tables: dict[int, dict[str, Any]] = {}
    for base, tp_res, found in scaling_runs(results_list):
        table = tables.setdefault(id(base), {"tps": [], "rows": {}})
        table["tps"].append(ranks(tp_res))
        column = len(table["tps"]) - 1
        for s in found:
            row = table["rows"].setdefault((s.op, s.variant), {
                "op": s.op, "variant": s.variant, "block": s.op == "block", "base": fmt.seconds(s.base_s), "cells": {}})
            row["cells"][column] = {"time": fmt.seconds(s.tp_s), "speedup": fmt.ratio(s.base_s / s.tp_s),
                                    "efficiency": fmt.pct(100 * s.efficiency), "pct": min(100 * s.efficiency, 100.0)}
    return [{"tps": t["tps"], "rows": [{**row, "cells": [row["cells"].get(k) for k in range(len(t["tps"]))]}
                                       for row in t["rows"].values()]} for t in tables.values()]


def facts(run: Run) -> list[tuple[str, str]]:
    """Device and environment, in the order an engineer checks them; empty values left out."""
    d = run.device
    mhz = lambda v: f"{v} MHz" if v else ""  # noqa: E731
    rows = [
        ("device", f"{d.name} ({d.kind})"),
        ("compute capability", d.compute_capability),
        ("SMs" if d.kind == "cuda" else "CPU threads", d.sm_count or d.cpu_threads),
        ("memory", fmt.nbytes(d.memory_bytes) if d.memory_bytes else ""),
        ("L2 cache", fmt.nbytes(d.l2_bytes) if d.l2_bytes else ""),
        ("max SM / memory clock", " / ".join(x for x in (mhz(d.max_sm_clock_mhz), mhz(d.max_mem_clock_mhz)) if x)),
        ("clocks at start", ", ".join(f"{k} {v}" for k, v in asdict(run.clocks_at_start).items()
                                      if v not in ("", None))),
        ("memory bus", f"{d.memory_bus_width_bits} bit" if d.memory_bus_width_bits else ""),
        ("power limit", f"{d.power_limit_w:.0f} W" if d.power_limit_w else ""),
        ("datasheet", " · ".join(x for x in (d.datasheet, d.datasheet_source) if x)),
        ("driver", d.driver), ("CUDA", d.cuda), ("torch", d.torch),
        ("triton", d.triton), ("python", run.python),
        ("roofline", run.roofline_version), ("git commit", run.git_commit),
        ("started at", run.started_at),
        ("wall time", fmt.seconds(run.wall_s) if run.wall_s else ""),
    ]
    return [(k, str(v)) for k, v in rows if v not in ("", None, 0)]


def ceilings(res: Results) -> list[dict[str, Any]]:
    """Datasheet and measured roofs side by side, with how many measured rows each compute roof bounds."""
    peaks, measured = res.run.peaks, res.run.peaks.measured
    kind = res.run.device.kind
    sheet_flops, measured_flops = peaks.datasheet_flops, measured.peak_flops if measured else {}
    used = [r.ceiling for r in res.ok_rows()]
    out = []
    for key in sorted(set(sheet_flops) | set(measured_flops), key=roof_order):
        ds, me = sheet_flops.get(key), measured_flops.get(key)
        out.append({"roof": roof_name(key, kind), "key": key, "datasheet": fmt.si(ds, "FLOP/s"),
                    "measured": fmt.si(me, "FLOP/s"), "ratio": fmt.pct(100 * me / ds) if ds and me else "–",
                    "used": used.count(key)})
    for name, key, ds in (("memory (copy)", "memory_bandwidth", peaks.datasheet_bandwidth),
                          ("memory (read)", "read_bandwidth", None), ("memory (write)", "write_bandwidth", None),
                          ("L2 (copy)", "l2_bandwidth", None)):
        me = getattr(measured, key) if measured else None
        if ds or me:
            out.append({"roof": name, "key": "", "datasheet": fmt.bandwidth(ds or None),
                        "measured": fmt.bandwidth(me or None),
                        "ratio": fmt.pct(100 * me / ds) if ds and me else "–",
                        "used": len(used) if key == "memory_bandwidth" else ""})
    return out


def raised_roofs(res: Results) -> list[str]:
    """The measured roofs a run beat within their error and raised to the rate it reached (`raise_to_reached`)."""
    measured = res.run.peaks.measured
    return list(measured.raised) if measured else []


def _cell(text: str, sort: object = None, cls: str = "") -> dict[str, Any]:
    """A table cell: shown text, the value a click on its column sorts by, a CSS class."""
    return {"text": text, "sort": "" if sort is None else sort, "cls": cls}


OP_COLUMNS = [("op", ""), ("variant", ""), ("FLOPs", "num"), ("bytes", "num"), ("intensity", "num"), ("time", "num"),
              ("FLOP/s", "num"), ("B/s", "num"), ("bound", ""), ("% of roof", "num"), ("peak mem", "num"),
              ("status / note", "")]
TRAIN_COLUMNS = [("backward", "num"), ("saved for backward", "num")]  # after "time", as in the terminal table


def op_columns(train: bool) -> list[tuple[str, str]]:
    return OP_COLUMNS[:6] + (TRAIN_COLUMNS if train else []) + OP_COLUMNS[6:]


def op_row(r: Row, train: bool = False, max_clock: int | None = None) -> dict[str, Any]:
    """The terminal table's columns (op_columns), plus each cell's raw value for sorting."""
    op = r.op + (f" ×{r.per_block}" if r.per_block > 1 else "")
    ok = r.status == "ok"
    spread = f"{fmt.seconds(r.time_p20_s)} – {fmt.seconds(r.time_p80_s)}" if ok else ""
    note = fmt.ok_row_note(r, max_clock) if ok else r.note
    note = f"rank {r.rank}" + (f" · {note}" if note else "") if r.rank is not None else note
    row: dict[str, Any] = {
        "status": r.status, "group": r.group, "group_color": group_color(r.group), "bound": r.bound if ok else "",
        "pct": min(r.pct_of_roof or 0.0, 100.0) if ok else 0.0,
        "cells": [
            _cell(op, r.op), _cell(r.variant + (" ⚡" if r.fused else ""), r.variant, "nowrap"),
            _cell(fmt.si(r.flops), r.flops, "num"), _cell(fmt.si(r.min_bytes, "B"), r.min_bytes, "num"),
            _cell(fmt.intensity(r.intensity), r.intensity, "num"),
            _cell(fmt.seconds(r.time_median_s) if ok else "", r.time_median_s, "num time"),
            _cell(fmt.si(r.flops_per_s) if ok else "", r.flops_per_s, "num"),
            _cell(fmt.si(r.bytes_per_s) if ok else "", r.bytes_per_s, "num"),
            _cell(r.bound if ok else "", r.bound, "bound"),
            _cell(fmt.pct(r.pct_of_roof) if ok else "", r.pct_of_roof, "num pct"),
            _cell(fmt.nbytes(r.peak_mem_bytes) if r.peak_mem_bytes is not None else "–", r.peak_mem_bytes, "num"),
            _cell(f"{r.status}: {note}" if not ok else note, r.status + note, "note"),
        ],
        "spread": spread,
    }
    if train:
        row["cells"][6:6] = [_cell(fmt.seconds(r.backward_time_s) if ok else "", r.backward_time_s, "num"),
                             _cell(fmt.nbytes(r.saved_new_bytes) if ok else "", r.saved_new_bytes, "num")]
    return row


def fusions(res: Results) -> list[dict[str, str]]:
    return [{"group": f.group, "variant": f.fused_variant, "chain": " → ".join(f.chain_ops),
             "before": fmt.seconds(f.chain_time_s), "after": fmt.seconds(f.fused_time_s),
             "speedup": fmt.ratio(f.speedup), "good": "good" if f.speedup >= 1 else "bad",
             "bytes_before": fmt.nbytes(f.chain_bytes), "bytes_after": fmt.nbytes(f.fused_bytes),
             "mem_before": fmt.nbytes(f.chain_peak_mem), "mem_after": fmt.nbytes(f.fused_peak_mem),
             "saved_before": fmt.nbytes(f.chain_saved_bytes), "saved_after": fmt.nbytes(f.fused_saved_bytes)}
            for f in summarize(res)]


def warnings(res: Results) -> list[tuple[str, str]]:
    """(kind, text): run warnings, rows above their roof, skipped and failed variants, timings that never settled,
    compute-bound rows that ran below 97 % of the max SM clock."""
    out = [("run", str(w)) for w in res.run.warnings]
    for r in res.rows:
        name = f"{r.op} · {r.variant}"
        ratio = fmt.clock_ratio(r, res.run.device.max_sm_clock_mhz)
        if ratio is not None and ratio < fmt.CLOCK_NOTE_BELOW and r.bound == "compute" and r.status == "ok":
            out.append(("clock", f"{name}: ran at {r.sm_clock_mhz} MHz, {100 * ratio:.0f} % of the max SM clock"
                                 + (f" ({r.throttle})" if r.throttle else "")))
        if r.status != "ok":
            out.append((r.status, f"{name}: {r.note}"))
        elif fmt.unstable(r):
            out.append(("unstable", f"{name}: the timing budget ran out with the median still {fmt.unstable(r)}"))
        if r.suspect:
            out.append(("suspect", f"{name}: {r.suspect}"))
    return out


def pipeline_sections(results_list: list[Results]) -> list[dict[str, Any]]:
    """Each `profile --pp N` run's pipeline step: the sentences, the step's split (compute / memory / communication /
    bubble) and each stage's times. A single-device run of the same block given beside it is the op profile the
    model predicts from (else the run's own rows)."""
    out = []
    for res in results_list:
        c = res.run.config
        base = next((b for b in results_list if b.run.config.ranks == 1 and not differing(b, res)
                     and b.run.device.name == res.run.device.name), None) if c.tp == 1 else None
        found = summarize_pipeline(res, base)
        p = res.run.parallel.pipeline if res.run.parallel else None
        if found is None or p is None:
            continue
        total = found.step_s
        parts = [{"kind": kind, "name": KIND_NAMES[kind], "time": fmt.seconds(found.split[kind]) if found.split[kind]
                  else "0", "pct": 100 * found.split[kind] / total} for kind in STEP_KINDS]
        train = p.schedule == "1F1B"
        stages = [{"stage": s, "forward": fmt.seconds(p.forward_s[s]),
                   "backward": fmt.seconds(p.backward_s[s]) if p.backward_s else "–",
                   "busy": fmt.seconds(p.busy_s[s]), "p2p": fmt.seconds(p.p2p_s[s]),
                   "transfers": transfers(s, p.stages, p.microbatches, train),
                   "idle": fmt.pct(100 * (1 - (p.busy_s[s] + p.p2p_s[s]) / total))} for s in range(p.stages)]
        out.append({"title": describe_run(res), "lines": pipeline_lines(found), "parts": parts,
                    "total": fmt.seconds(total), "stages": stages, "train": train,
                    "transfer": fmt.seconds(p.transfer_s)})
    return out
