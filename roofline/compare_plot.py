"""How `roofline compare` looks: the terminal table, the overlay roofline and the self-contained HTML report.

The overlay is plot.roofline_figure of every run (BASE first: each device's roofs, each run's ops in its own
marker fill) plus a grey line joining the same row across runs. A row's intensity is the same in both runs
(same FLOPs, same model bytes), so the line is vertical and its length on the log axis is the speedup.

The HTML is one file with inline CSS and the PNG embedded as base64: it opens from a CI artifact offline.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from roofline import compare
from roofline.compare import Comparison
from roofline.results import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

JOIN_COLOR = "#888888"  # the same row in BASE and NEW
VERDICT_STYLE = {"SLOWER": "bold red", "FASTER": "green", "SAME": "", "AMBIGUOUS": "yellow",
                 compare.UNMEASURED: "dim"}


def print_comparison(c: Comparison, console: Console) -> None:
    """The rows table, the per-bound summary, then the one-line summary and what was compared."""
    from rich.table import Table
    from rich.text import Text

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


def overlay_figure(comparisons: list[Comparison]) -> Figure:
    """plot.roofline_figure of all runs (BASE first), plus a line joining each row measured in both runs."""
    from roofline.plot import roofline_figure

    fig = roofline_figure([comparisons[0].base, *(c.new for c in comparisons)])
    ax = fig.axes[0]
    for c in comparisons:
        for r in c.rows:
            if r.ok and r.base.flops_per_s and r.new.flops_per_s:
                ax.plot([r.base.intensity, r.new.intensity], [r.base.flops_per_s, r.new.flops_per_s],
                        color=JOIN_COLOR, lw=1.0, zorder=4)
    return fig


def png_bytes(comparisons: list[Comparison]) -> bytes:
    from roofline.plot import figure_bytes

    return figure_bytes(overlay_figure(comparisons), "png")


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1280px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0}th,td{padding:3px 9px;border-bottom:1px solid #e2e2e2}
th{background:#f5f5f5;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.SLOWER{color:#b00020;font-weight:bold}.FASTER{color:#1a7f37}.AMBIGUOUS{color:#9a6700}.UNMEASURED{color:#888}
img{max-width:100%;border:1px solid #eee}summary{cursor:pointer}"""


def _table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        tds = []
        for name, value in zip(headers, row, strict=True):
            cls = value if name == "verdict" else ("" if name in (*compare.TEXT_COLUMNS, "bound") else "num")
            tds.append(f'<td class="{cls}">' if cls else "<td>")
            tds.append(f"{html.escape(value)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(comparisons: list[Comparison], image: bytes | None) -> str:
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>roofline compare · {html.escape(compare.title(comparisons[0]))}</title>",
             f"<style>{CSS}</style></head><body>", "<h1>roofline compare</h1>"]
    if image:
        data = base64.b64encode(image).decode()
        parts.append(f'<img alt="overlay roofline" src="data:image/png;base64,{data}">')
    for c in comparisons:
        bounds = [[label, *cols] for label, cols in compare.bound_rows(c)]
        parts += [f"<h2>{html.escape(compare.title(c))}</h2>",
                  f"<p><b>{html.escape(compare.summary_line(c))}</b></p>",
                  "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in compare.sources(c)) + "</ul>",
                  _table(("bound", *compare.BOUND_COLUMNS), bounds),
                  _table(compare.COLUMNS, compare.table_rows(c))]
        lonely = compare.only_in_one(c)
        if lonely:
            parts.append(f"<details><summary>{len(lonely)} rows in only one file</summary><ul>"
                         + "".join(f"<li>{html.escape(x)}</li>" for x in lonely) + "</ul></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(comparisons: list[Comparison], png: Path | None, html_path: Path | None) -> None:
    """Render the overlay once; write it as PNG and/or embed it in the HTML report."""
    image = png_bytes(comparisons)
    if png:
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(image)
    if html_path:
        atomic_write(html_path, to_html(comparisons, image))
