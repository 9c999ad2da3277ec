"""The terminal view of `roofline compare`: the rows table, the per-bound summary, the summary line and sources."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from roofline.analysis import compare

VERDICT_STYLE = {"SLOWER": "bold red", "SLOWER (clock)": "yellow", "FASTER": "green", "FASTER (clock)": "yellow",
                 "SAME": "", "AMBIGUOUS": "yellow", compare.UNMEASURED: "dim"}


def print_comparison(c: compare.Comparison, console: Console) -> None:
    """The rows table, the per-bound summary, then the one-line summary and what was compared."""
    t = Table(title=compare.title(c), title_style="bold", header_style="bold", pad_edge=False)
    for name in compare.COLUMNS:
        t.add_column(name, justify="left" if name in compare.TEXT_COLUMNS else "right", no_wrap=name != "why")
    for row in compare.table_rows(c):
        t.add_row(*row[:5], Text(row[5], style=VERDICT_STYLE[row[5]]), *row[6:])
    console.print(t)
    s = Table(header_style="bold", pad_edge=False)
    for name in ("bound", *compare.BOUND_COLUMNS):
        s.add_column(name, justify="left" if name == "bound" else "right")
    for label, cols in compare.bound_rows(c):
        s.add_row(label, *cols)
    console.print(s)
    for line in [compare.summary_line(c), *compare.sources(c), *compare.only_in_one(c)]:
        console.print(line, highlight=False, markup=False)
