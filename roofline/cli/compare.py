"""`roofline compare`: runs side by side, row by row, with a SAME/FASTER/SLOWER/AMBIGUOUS verdict; the CI gate."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import stdout, warn
from roofline.cli.options import parse_threshold
from roofline.errors import EXIT_REGRESSION


class FailOn(str, Enum):
    none = "none"
    slower = "slower"


class Metric(str, Enum):
    time = "time"
    roof = "roof"


def _write(target: str, text: str) -> None:
    from roofline.results import atomic_write

    if target == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        atomic_write(Path(target), text)


def compare(
    files: Annotated[list[Path], typer.Argument(
        help="BASE NEW [MORE…]: results.json files (or run folders); each later file is compared to BASE.",
        metavar="RESULTS", show_default=False)],
    threshold: Annotated[str, typer.Option(help="Smallest change that matters: 5% or 0.05.")] = "5%",
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Exit 1 when any row is SLOWER, judged on rounds "
                                            "(`profile --rounds N`) (slower), or never (none: informational, e.g. "
                                            "across GPUs).")] = FailOn.none,
    metric: Annotated[Metric, typer.Option(help="Compare time, or % of each run's own measured roof (roof: "
                                           "comparable across GPUs and driver versions).")] = Metric.time,
    markdown: Annotated[str | None, typer.Option(help="Write GitHub markdown here ('-' = stdout).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write JSON here ('-' = stdout).")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the overlay roofline (PNG) here.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
) -> None:
    """Compare runs row by row: time ratio, % of each roof, and a SAME/FASTER/SLOWER/AMBIGUOUS verdict."""
    from roofline.analysis.compare import compare_files, device_name, to_json
    from roofline.analysis.verdict import UNMEASURED
    from roofline.render.compare import print_comparison
    from roofline.render.markdown import compare_markdown

    comparisons = compare_files([str(f) for f in files], parse_threshold(threshold), metric.value)
    for c in comparisons:
        if device_name(c.base) != device_name(c.new):
            gate = " (gating anyway: --fail-on slower)" if fail_on == FailOn.slower else ""
            warn(f"comparing different devices, {device_name(c.base)} and {device_name(c.new)}: the verdicts "
                 f"describe the devices, not a regression{gate}")
        lost = [r for r in c.rows if r.base.status == "ok" and r.new.status != "ok"]
        if lost:
            warn(f"{len(lost)} rows measured in base but not in {c.new_path}: "
                 + ", ".join(f"{r.base.op} · {r.base.variant} ({r.new.status})" for r in lost))
    if json_out:
        _write(json_out, json.dumps(to_json(comparisons), indent=1))
    if markdown:
        _write(markdown, compare_markdown(comparisons))
    if png or html:
        from roofline.render.html import write_compare

        write_compare(comparisons, png, html)
    if "-" not in (json_out, markdown):
        for c in comparisons:
            print_comparison(c, stdout)
    slower = sum(len(c.slower) for c in comparisons)
    judged = [r for c in comparisons for r in c.rows if r.verdict.verdict != UNMEASURED]
    if fail_on == FailOn.slower and not judged:
        warn("no verdict can gate: no row was measured in both runs")
    elif fail_on == FailOn.slower and not any(r.verdict.rounds for r in judged):
        warn("no verdict can gate: these runs have one round each, so their run-to-run spread is unknown "
             "(profile with --rounds 5 for CI)")
    if fail_on == FailOn.slower and slower:
        typer.echo(f"roofline: {slower} rows SLOWER than {comparisons[0].base_path} (--fail-on slower)", err=True)
        raise typer.Exit(EXIT_REGRESSION)
