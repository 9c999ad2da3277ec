"""The terminal view of `roofline compare`: the rows table, the per-bound summary, the summary line and sources."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from roofline.analysis.compare import (
    BOUND_COLUMNS,
    COLUMNS,
    TEXT_COLUMNS,
    UNMEASURED,
    Comparison,
    bound_rows,
    only_in_one,
    sources,
    summary_line,
    table_rows,
    title,
)

VERDICT_STYLE = {"SLOWER": "bold red", "FASTER": "green", "SAME": "", "AMBIGUOUS": "yellow", UNMEASURED: "dim"}


def print_comparison(c: Comparison, console: Console) -> None:
    """The rows table, the per-bound summary, then the one-line summary and what was compared."""
    t = Table(title=title(c), title_style="bold", header_style="bold", pad_edge=False)
    for name in COLUMNS:
        t.add_column(name, justify="left" if name in TEXT_COLUMNS else "right", no_wrap=name != "why")
    for row in table_rows(c):
        t.add_row(*row[:5], Text(row[5], style=VERDICT_STYLE[row[5]]), *row[6:])
    console.print(t)
    s = Table(header_style="bold", pad_edge=False)
    for name in ("bound", *BOUND_COLUMNS):
        s.add_column(name, justify="left" if name == "bound" else "right")
    for label, cols in bound_rows(c):
        s.add_row(label, *cols)
    console.print(s)
    for line in [summary_line(c), *sources(c), *only_in_one(c)]:
        console.print(line, highlight=False, markup=False)
