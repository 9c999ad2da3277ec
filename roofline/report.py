"""`roofline report`: the plots and a one-file HTML report, re-rendered from saved results.json (no GPU needed).

render_all() is what `profile` calls after a run; report_command() is `roofline report RESULTS.json [MORE…]`.
The HTML is ONE offline file — figures embedded as SVG data URIs, CSS and a few lines of JS inline, a Content
Security Policy that forbids every request — so it can be mailed, attached to an issue or opened years later.
matplotlib and jinja2 are imported inside the functions: `roofline --help` stays fast.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from roofline.errors import RooflineError

if TYPE_CHECKING:
    from roofline.results import Results, Row

FIGURES = ("roofline", "time_split")


def render_all(results_list: list[Results], out_dir: Path, html: bool = True, png: bool = True,
               svg: bool = True) -> list[Path]:
    """Write roofline.{png,svg}, time_split.{png,svg} and report.html into out_dir; returns the paths written.
    A results file that holds several shapes (a `sweep` over sequence lengths or dtypes) renders as one run
    per shape, overlaid as several files would be."""
    from roofline import plot, time_split
    from roofline.results import atomic_write

    if not results_list:
        raise RooflineError("no results to render")
    for res in results_list:
        if not res.ok_rows():
            raise RooflineError(f"nothing to plot for {plot.describe_run(res)}: none of its {len(res.rows)} rows "
                                "was measured (all failed or skipped)")
    results_list = [part for res in results_list for part in _by_shape(res) if part.ok_rows()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooflineError(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None
    written, images = [], {}
    formats = ("svg",) * (html or svg) + ("png",) * png
    for name, make in zip(FIGURES, (plot.roofline_figure, time_split.time_split_figure), strict=True):
        files = plot.figure_files(make(results_list), formats) if formats else {}
        if "svg" in files:
            images[name] = "data:image/svg+xml;base64," + base64.b64encode(files["svg"]).decode("ascii")
        if png:
            written.append(atomic_write(out_dir / f"{name}.png", files["png"]))
        if svg:
            written.append(atomic_write(out_dir / f"{name}.svg", files["svg"]))
    written += _counters_figure(results_list, out_dir, images)
    if html:
        written.append(atomic_write(out_dir / "report.html", html_report(results_list, images)))
    return written


def _counters_figure(results_list: list[Results], out_dir: Path, images: dict[str, str]) -> list[Path]:
    """The hierarchical roofline of a run measured with --counters (the first such run), embedded in the HTML."""
    from roofline import counters_plot

    counted = [res for res in results_list if any(getattr(r, "measured_kernels", None) for r in res.rows)]
    if not counted:
        return []
    paths = counters_plot.render(counted[0], out_dir)
    svg = out_dir / "counters_roofline.svg"
    if svg.is_file():
        images["counters"] = "data:image/svg+xml;base64," + base64.b64encode(svg.read_bytes()).decode("ascii")
    return paths


def _by_shape(res: Results) -> list[Results]:
    """One run per (dtype, seq len) of a sweep's results, as `profile` would have saved it; other runs as they are."""
    from roofline.sweep import split_runs

    return split_runs(res) if len({(r.dtype, r.seq_len) for r in res.rows}) > 1 else [res]


def html_report(results_list: list[Results], images: dict[str, str]) -> str:
    """The report as one HTML string; `images` maps figure name to a data: URI."""
    import jinja2

    from roofline import plot, time_split

    env = jinja2.Environment(loader=jinja2.PackageLoader("roofline", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    labels = plot.run_labels(results_list)
    tables = scaling_tables(results_list)
    runs = [run_context(r, label, bool(tables)) for r, label in zip(results_list, labels, strict=True)]
    return env.get_template("report.html.j2").render(
        title=f"Roofline · {plot.describe_runs(results_list)}", runs=runs, images=images, scaling=tables,
        compute_color=plot.COMPUTE_COLOR, memory_color=plot.MEMORY_COLOR, comm_color=time_split.COMM_COLOR,
        comm=any(run["split"] for run in runs), several=len(results_list) > 1)


def run_context(res: Results, label: str, scaled: bool = False) -> dict[str, Any]:
    """Everything the template shows for one run, already formatted (the template only lays it out). The block's
    compute / memory / communication split is shown for a run with collectives, and for every run of a report
    that compares TP=1 with TP=N (`scaled`)."""
    from roofline import plot

    run: dict[str, Any] = res.run
    has_comm = any(r.unit == "comm" for r in res.rows)
    train = any(r.mode == "train" for r in res.rows)
    return {"label": label, "train": train, "columns": op_columns(train), "title": plot.describe_run(res),
            "summary": summary(res), "facts": facts(run),
            "split": block_split(res) if has_comm or scaled else [],
            "ceilings": ceilings(res), "rows": [op_row(r, train) for r in res.rows], "fusions": fusions(res),
            "warnings": warnings(res), "command": run.get("command", ""),
            "started_at": run.get("started_at", ""),
            "groups": {r.group: plot.group_color(r.group) for r in res.rows}, "counters": counter_rows(res)}


def counter_rows(res: Results) -> list[dict[str, str]]:
    """Analytic vs measured (ncu) per counted row, formatted, with the gap explained ([] without --counters)."""
    from roofline import fmt
    from roofline.counters import explain_gap, pct_diff

    signed = lambda v: "–" if v is None else f"{v:+.0f} %"  # noqa: E731
    return [{"name": f"{r.op} · {r.variant}", "kernels": str(r.measured_kernels),
             "min_bytes": fmt.nbytes(r.min_bytes), "dram": fmt.nbytes(r.measured_dram_bytes),
             "dram_diff": signed(pct_diff(r.min_bytes, r.measured_dram_bytes)),
             "l2": fmt.nbytes(r.measured_l2_bytes), "l1": fmt.nbytes(r.measured_l1_bytes), "flops": fmt.flops(r.flops),
             "executed": fmt.flops(r.measured_flops), "flops_diff": signed(pct_diff(r.flops, r.measured_flops)),
             "why": explain_gap(r)}
            for r in res.rows if getattr(r, "measured_kernels", None)]


def summary(res: Results) -> list[str]:
    """The one-paragraph summary, as sentences: what ran, where the time goes, what fusion buys."""
    from roofline import fmt
    from roofline.fusion import summarize
    from roofline.time_split import block_before_after, kind_split, split_text
    from roofline.tp_scaling import ranks

    run: dict[str, Any] = res.run
    c, device, n = run.get("config", {}), run.get("device", {}), ranks(res)
    before, after = block_before_after(res)
    total = sum(o.time_s for o in before)
    shape = f"{c.get('mode')}, batch {c.get('batch')}, seq len {c.get('seq_len')}, {c.get('dtype')}"
    sentences = [f"{device.get('name', '?')} ran one {c.get('name')} block ({shape})." if n == 1 else
                 f"{n} × {device.get('name', '?')} ran one {c.get('name')} block ({shape}) with {n}-way tensor "
                 f"parallelism, each rank its 1/{n} shard; an op's time is its slowest rank's."]
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
    from roofline import fmt
    from roofline.time_split import KIND_NAMES, block_before_after, kind_split

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
    from roofline import fmt
    from roofline.tp_scaling import ranks, scaling_runs

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


def facts(run: dict[str, Any]) -> list[tuple[str, str]]:
    """Device and environment, in the order an engineer checks them; empty values left out."""
    from roofline import fmt

    d, clocks = run.get("device", {}), run.get("clocks_at_start") or {}
    mhz = lambda v: f"{v} MHz" if v else ""  # noqa: E731
    rows = [
        ("device", f"{d.get('name', '?')} ({d.get('kind', '?')})"),
        ("compute capability", d.get("compute_capability")),
        ("SMs" if d.get("kind") == "cuda" else "CPU threads", d.get("sm_count") or d.get("cpu_threads")),
        ("memory", fmt.nbytes(d.get("memory_bytes")) if d.get("memory_bytes") else ""),
        ("L2 cache", fmt.nbytes(d.get("l2_bytes")) if d.get("l2_bytes") else ""),
        ("max SM / memory clock", " / ".join(x for x in (mhz(d.get("max_sm_clock_mhz")),
                                                         mhz(d.get("max_mem_clock_mhz"))) if x)),
        ("clocks at start", ", ".join(f"{k} {v}" for k, v in clocks.items() if v not in ("", None))),
        ("memory bus", f"{d['memory_bus_width_bits']} bit" if d.get("memory_bus_width_bits") else ""),
        ("power limit", f"{d['power_limit_w']:.0f} W" if d.get("power_limit_w") else ""),
        ("datasheet", " · ".join(x for x in (d.get("datasheet"), d.get("datasheet_source")) if x)),
        ("driver", d.get("driver")), ("CUDA", d.get("cuda")), ("torch", d.get("torch")),
        ("triton", d.get("triton")), ("python", run.get("python")),
        ("roofline", run.get("roofline_version")), ("git commit", run.get("git_commit")),
        ("started at", run.get("started_at")),
        ("wall time", fmt.seconds(run["wall_s"]) if run.get("wall_s") else ""),
    ]
    return [(k, str(v)) for k, v in rows if v not in ("", None, 0)]


def ceilings(res: Results) -> list[dict[str, Any]]:
    """Datasheet and measured roofs side by side, with how many measured rows each compute roof bounds."""
    from roofline import fmt, plot_roofs

    peaks: dict[str, Any] = res.run.get("peaks", {})
    sheet, measured = peaks.get("datasheet") or {}, peaks.get("measured") or {}
    kind = str(res.run.get("device", {}).get("kind", "cuda"))
    sheet_flops, measured_flops = sheet.get("flops") or {}, measured.get("peak_flops") or {}
    used = [r.ceiling for r in res.ok_rows()]
    out = []
    for key in sorted(set(sheet_flops) | set(measured_flops), key=plot_roofs.roof_order):
        ds, me = sheet_flops.get(key), measured_flops.get(key)
        out.append({"roof": plot_roofs.roof_name(key, kind), "key": key, "datasheet": fmt.si(ds, "FLOP/s"),
                    "measured": fmt.si(me, "FLOP/s"), "ratio": fmt.pct(100 * me / ds) if ds and me else "–",
                    "used": used.count(key)})
    for name, key, ds in (("memory (copy)", "memory_bandwidth", sheet.get("memory_bandwidth")),
                          ("memory (read)", "read_bandwidth", None), ("memory (write)", "write_bandwidth", None),
                          ("L2 (copy)", "l2_bandwidth", None)):
        me = measured.get(key)
        if ds or me:
            out.append({"roof": name, "key": "", "datasheet": fmt.bandwidth(ds or None),
                        "measured": fmt.bandwidth(me or None),
                        "ratio": fmt.pct(100 * me / ds) if ds and me else "–",
                        "used": len(used) if key == "memory_bandwidth" else ""})
    return out


def _cell(text: str, sort: object = None, cls: str = "") -> dict[str, Any]:
    """A table cell: shown text, the value a click on its column sorts by, a CSS class."""
    return {"text": text, "sort": "" if sort is None else sort, "cls": cls}


OP_COLUMNS = [("op", ""), ("variant", ""), ("FLOPs", "num"), ("bytes", "num"), ("intensity", "num"), ("time", "num"),
              ("FLOP/s", "num"), ("B/s", "num"), ("bound", ""), ("% of roof", "num"), ("peak mem", "num"),
              ("status / note", "")]
TRAIN_COLUMNS = [("backward", "num"), ("saved for backward", "num")]  # after "time", as in the terminal table


def op_columns(train: bool) -> list[tuple[str, str]]:
    return OP_COLUMNS[:6] + (TRAIN_COLUMNS if train else []) + OP_COLUMNS[6:]


def op_row(r: Row, train: bool = False) -> dict[str, Any]:
    """The terminal table's columns (op_columns), plus each cell's raw value for sorting."""
    from roofline import fmt, plot

    op = r.op + (f" ×{r.per_block}" if r.per_block > 1 else "")
    ok = r.status == "ok"
    spread = f"{fmt.seconds(r.time_p20_s)} – {fmt.seconds(r.time_p80_s)}" if ok else ""
    note = fmt.ok_row_note(r) if ok else r.note
    note = f"rank {r.rank}" + (f" · {note}" if note else "") if r.rank is not None else note
    row: dict[str, Any] = {
        "status": r.status, "group": r.group, "group_color": plot.group_color(r.group), "bound": r.bound if ok else "",
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
    from roofline import fmt
    from roofline.fusion import summarize

    return [{"group": f.group, "variant": f.fused_variant, "chain": " → ".join(f.chain_ops),
             "before": fmt.seconds(f.chain_time_s), "after": fmt.seconds(f.fused_time_s),
             "speedup": fmt.ratio(f.speedup), "good": "good" if f.speedup >= 1 else "bad",
             "bytes_before": fmt.nbytes(f.chain_bytes), "bytes_after": fmt.nbytes(f.fused_bytes),
             "mem_before": fmt.nbytes(f.chain_peak_mem), "mem_after": fmt.nbytes(f.fused_peak_mem),
             "saved_before": fmt.nbytes(f.chain_saved_bytes), "saved_after": fmt.nbytes(f.fused_saved_bytes)}
            for f in summarize(res)]


def warnings(res: Results) -> list[tuple[str, str]]:
    """(kind, text): run warnings, throttled rows, skipped and failed variants, timings that never settled."""
    out = [("run", str(w)) for w in res.run.get("warnings", [])]
    for r in res.rows:
        name = f"{r.op} · {r.variant}"
        if r.throttle:
            out.append(("throttled", f"{name}: {r.throttle}"))
        if r.status != "ok":
            out.append((r.status, f"{name}: {r.note}"))
        elif r.stop_reason == "budget" and r.rel_err is not None and r.rel_err > 0.02:
            out.append(("unstable", f"{name}: the timing budget ran out with the median still ±{100 * r.rel_err:.1f} %"
                                    f" ({r.samples} samples)"))
    return out


def report_command(
    results_files: Annotated[list[Path], typer.Argument(
        metavar="RESULTS.json", show_default=False,
        help="results.json files (or their folders) to render; several overlay in one plot.")],
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write report.html.")] = True,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Write roofline.png and time_split.png.")] = True,
    svg: Annotated[bool, typer.Option("--svg/--no-svg", help="Write roofline.svg and time_split.svg.")] = True,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the first results file's folder).")]
    = None,
) -> None:
    """Re-render the plots and the HTML report from saved results (no GPU needed)."""
    from roofline import results
    from roofline.cli import info

    loaded = []
    for path in results_files:
        res = results.load(path)
        if not res.ok_rows():
            raise RooflineError(f"{path} has no measured rows ({len(res.rows)} rows, all failed or skipped): "
                                "nothing to plot")
        loaded.append(res)
    first = results_files[0]
    target = out or (first if first.is_dir() else first.parent)
    for path in render_all(loaded, target, html=html, png=png, svg=svg):
        info(f"Wrote {path}")
