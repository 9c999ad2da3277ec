"""Where the CLI writes: data on stdout, progress and warnings on stderr (colour off when piped or with NO_COLOR).

`progress(total)` is the Listener a run reports to: a progress bar of variants on stderr, each failure and
throttled op printed above it as it happens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from roofline.measure.session import Listener
    from roofline.results import DeviceInfo

def _width(stream: object, piped: int) -> int | None:
    """The terminal's width; piped, COLUMNS when set, else `piped` (a table written to a file keeps its columns)."""
    return None if getattr(stream, "isatty", lambda: False)() or os.environ.get("COLUMNS") else piped


stdout = Console(soft_wrap=False, width=_width(sys.stdout, 220))
stderr = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr, 200))
command_line: list[str] = []  # the command line, recorded in results.json


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


def info(message: str) -> None:
    stderr.print(message, highlight=False, style="dim")


def detected(device: str | None) -> DeviceInfo:
    """The device to measure (`--device`), its detection warnings said on stderr."""
    from roofline.measure.device import detect

    dev = detect(device)
    for w in dev.warnings:
        warn(w)
    return dev


def quiet_listener() -> Listener:
    """Messages to stderr, no progress bar (before a bar exists: calibration, the launch of ranks)."""
    from roofline.measure.session import Listener

    return Listener(info=info, warn=warn)


@contextmanager
def progress(total: int, description: str = "profiling") -> Iterator[Listener]:
    """A Listener that drives a progress bar of `total` variants on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from roofline.measure.session import Listener

    bar = Progress(TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=stderr, transient=False)
    with bar:
        task = bar.add_task(description, total=total)

        def start(op, variant) -> None:  # type: ignore[no-untyped-def]
            bar.update(task, description=f"{op.name} · {variant.name}")

        def row(r) -> None:  # type: ignore[no-untyped-def]
            bar.advance(task)
            if r.status == "failed":
                bar.console.print(f"[red]failed[/] {r.op} · {r.variant}: {r.note}", highlight=False)

        def another_round(r, round_number: int) -> None:  # type: ignore[no-untyped-def]
            bar.advance(task)

        def say(message: str) -> None:
            bar.console.print(message, highlight=False, style="dim")

        def warning(message: str) -> None:
            bar.console.print(f"[yellow]warning:[/] {message}", highlight=False)

        yield Listener(info=say, warn=warning, start=start, row=row, another_round=another_round)
        bar.update(task, description="done")


@contextmanager
def counting(total: int) -> Iterator[object]:
    """The counters pass's progress: variants done and kernels profiled under ncu."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[kernels]} kernels"), TimeElapsedColumn(), console=stderr,
                   transient=False)
    with bar:
        task = bar.add_task("counters (ncu)", total=total, kernels=0)

        def update(label: str, done: int, of: int, kernels: int) -> None:
            bar.update(task, description=label[:34], completed=done, total=of, kernels=kernels)

        yield update
