"""`roofline report`: re-render the figures and the HTML report from saved results.json files (no GPU needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import info
from roofline.cli.options import fresh
from roofline.errors import RooflineError


def report(
    results_files: Annotated[list[Path], typer.Argument(
        metavar="RESULTS", show_default=False,
        help="results.json files (or their folders) to render; several overlay in one plot.")],
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write report.html.")] = True,
    png: Annotated[bool, typer.Option("--png/--no-png", help="Write roofline.png and time_split.png.")] = True,
    svg: Annotated[bool, typer.Option("--svg/--no-svg", help="Write roofline.svg and time_split.svg.")] = True,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: a new folder reports/report-<first "
                                             "run's folder name>; never a folder that holds a run).")] = None,
) -> None:
    """Re-render the plots and the HTML report from saved results (no GPU needed)."""
    from roofline import results
    from roofline.render.html import render_all

    loaded = []
    for path in results_files:
        res = results.load(path)
        if not res.ok_rows():
            raise RooflineError(f"{path} has no measured rows ({len(res.rows)} rows, all failed or skipped): "
                                "nothing to plot")
        loaded.append(res)
    first = results_files[0]
    target = out or fresh(Path("reports") / f"report-{(first if first.is_dir() else first.parent).name}")
    for path in render_all(loaded, target, html=html, png=png, svg=svg):
        info(f"Wrote {path}")
