"""The files a run renders to: its figures (PNG/SVG) and one offline HTML report; and the compare page.

render_all() is what `profile`, `sweep` and `report` call. Each HTML page is ONE offline file — figures embedded
as data URIs, CSS and a few lines of JS inline, a Content Security Policy that forbids every request — so it can
be mailed, attached to an issue or opened years later. One template engine (jinja2, templates/) for both pages.
matplotlib and jinja2 are imported inside the functions: `roofline --help` stays fast.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

from roofline.analysis import compare
from roofline.analysis.sweep import split_runs
from roofline.errors import RooflineError
from roofline.fmt import describe_run
from roofline.render.report_context import pipeline_sections, run_context, scaling_tables
from roofline.render.style import (
    BUBBLE_COLOR,
    COMM_COLOR,
    COMPUTE_COLOR,
    MEMORY_COLOR,
    describe_runs,
    figure_files,
    render_figures,
    run_labels,
)
from roofline.results import Results, atomic_write

if TYPE_CHECKING:
    from collections.abc import Callable

    import jinja2
    from matplotlib.figure import Figure


def _data_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def write_figure(fig: Figure, out_dir: Path, name: str, png: bool = True, svg: bool = True,
                 embed: bool = False) -> tuple[list[Path], str | None]:
    """Write name.png / name.svg; returns the paths and, with `embed`, the SVG as a data URI for a page."""
    formats = _formats(png, svg or embed)
    files = figure_files(fig, formats) if formats else {}
    return _write_files(files, out_dir, name, png, svg), _data_uri(files["svg"]) if embed else None


def _formats(png: bool, svg: bool) -> tuple[str, ...]:
    return ("svg",) * svg + ("png",) * png


def _write_files(files: dict[str, bytes], out_dir: Path, name: str, png: bool, svg: bool) -> list[Path]:
    return [atomic_write(out_dir / f"{name}.{ext}", files[ext]) for ext, wanted in (("png", png), ("svg", svg))
            if wanted]


def render_all(results_list: list[Results], out_dir: Path, html: bool = True, png: bool = True,
               svg: bool = True, kernels: bool = False) -> list[Path]:
    """Write roofline.{png,svg}, time_split.{png,svg} (and counters_roofline.* for a --counters run) and
    report.html into out_dir; returns the paths written. A results file that holds several shapes (a `sweep` over
    sequence lengths or dtypes) renders as one run per shape, overlaid as several files would be. A trace renders
    alone: its roofline has a point per block op (per call with `kernels`), its time figure a bar per block op."""
    from roofline.render.figures.counters import counters_figure
    from roofline.render.figures.roofline import roofline_figure
    from roofline.render.figures.time_split import time_split_figure

    if not results_list:
        raise RooflineError("no results to render")
    for res in results_list:
        if not res.ok_rows():
            raise RooflineError(f"nothing to plot for {describe_run(res)}: none of its {len(res.rows)} rows "
                                "was measured (all failed or skipped)")
    traced = any(res.run.trace is not None for res in results_list)
    if traced and len(results_list) > 1:
        raise RooflineError("a trace renders alone: give `roofline report` one trace's results.json at a time")
    if not traced:
        results_list = [part for res in results_list for part in _by_shape(res) if part.ok_rows()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooflineError(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None
    written, images = [], {}
    builders = _trace_figures(results_list[0], kernels) if traced else {
        "roofline": lambda: roofline_figure(results_list), "time_split": lambda: time_split_figure(results_list)}
    counted = next((res for res in results_list if any(r.measured_kernels for r in res.rows)), None)
    if counted is not None:
        builders["counters_roofline"] = lambda: counters_figure(counted)
    formats = _formats(png, svg or html)
    for name, files in (render_figures(builders, formats) if formats else {}).items():
        written += _write_files(files, out_dir, name, png, svg)
        if html:
            images["counters" if name == "counters_roofline" else name] = _data_uri(files["svg"])
    if html:
        written.append(atomic_write(out_dir / "report.html", report_html(results_list, images)))
    return written


def _trace_figures(res: Results, kernels: bool) -> dict[str, Callable[[], Figure]]:
    """A trace's roofline (its block ops, or every call) and where its time goes."""
    from roofline.render.figures.roofline import roofline_figure
    from roofline.render.figures.trace import group_rows, kernels_figure, time_figure

    grouped = group_rows(res)
    roof = (lambda: kernels_figure(res)) if kernels or not grouped.rows else (lambda: roofline_figure([grouped]))
    return {"roofline": roof, "time_split": lambda: time_figure(res)}


def _by_shape(res: Results) -> list[Results]:
    """One run per (dtype, seq len) of a sweep's results, as `profile` would have saved it; other runs as they are."""
    return split_runs(res) if len({(r.dtype, r.seq_len) for r in res.rows}) > 1 else [res]


def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("roofline.render", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def report_html(results_list: list[Results], images: dict[str, str]) -> str:
    """The report as one HTML string; `images` maps figure name to a data: URI."""
    labels = run_labels(results_list)
    tables = scaling_tables(results_list)
    runs = [run_context(r, label, bool(tables)) for r, label in zip(results_list, labels, strict=True)]
    return _environment().get_template("report.html.j2").render(
        title=f"Roofline · {describe_runs(results_list)}", runs=runs, images=images, scaling=tables,
        pipelines=pipeline_sections(results_list), bubble_color=BUBBLE_COLOR,
        compute_color=COMPUTE_COLOR, memory_color=MEMORY_COLOR, comm_color=COMM_COLOR,
        comm=any(run["split"] for run in runs), several=len(results_list) > 1)


def compare_html(comparisons: list[compare.Comparison], image: str | None) -> str:
    """`roofline compare --html`: the overlay (a data URI) and, per comparison, its summary and verdicts."""
    pages = [{"title": compare.title(c), "summary": compare.summary_line(c), "sources": compare.sources(c),
              "bounds": [[label, *cols] for label, cols in compare.bound_rows(c)], "rows": compare.table_rows(c),
              "lonely": compare.only_in_one(c)} for c in comparisons]
    return _environment().get_template("compare.html.j2").render(
        title=compare.title(comparisons[0]), image=image, comparisons=pages, columns=compare.COLUMNS,
        text_columns=compare.TEXT_COLUMNS, bound_columns=("bound", *compare.BOUND_COLUMNS))


def write_compare(comparisons: list[compare.Comparison], png: Path | None, html_path: Path | None) -> None:
    """Render the overlay once; write it as PNG and/or embed it (as PNG) in the HTML page."""
    from roofline.render.figures.compare import overlay_figure

    image = figure_files(overlay_figure(comparisons), ("png",))["png"]
    if png:
        atomic_write(png, image)
    if html_path:
        atomic_write(html_path, compare_html(comparisons, "data:image/png;base64," + base64.b64encode(image).decode()))


def write_sweep_figures(results: Results, out_dir: Path) -> list[Path]:
    """sweep.png/.svg; with several dtypes also roofline.png/.svg, the dtypes overlaid at the largest N they share."""
    from roofline.render.figures.roofline import roofline_figure
    from roofline.render.figures.sweep import sweep_figure

    written, _ = write_figure(sweep_figure(results), out_dir, "sweep")
    dtypes = {r.dtype for r in results.ok_rows()}
    shared = [n for n in {r.seq_len for r in results.rows}
              if {r.dtype for r in results.ok_rows() if r.seq_len == n} == dtypes]
    if len(dtypes) > 1 and shared:
        runs = [r for r in split_runs(results) if r.run.config.seq_len == max(shared)]
        written += write_figure(roofline_figure(runs), out_dir, "roofline")[0]
    return written
