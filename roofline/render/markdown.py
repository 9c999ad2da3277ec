"""Markdown for CI: `roofline compare --markdown` (a job summary or a PR comment, GitHub-flavoured)."""

from __future__ import annotations

from roofline.analysis.compare import (
    BOUND_COLUMNS,
    COLUMNS,
    TEXT_COLUMNS,
    Comparison,
    bound_rows,
    only_in_one,
    sources,
    summary_line,
    table_rows,
    title,
)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def compare_markdown(comparisons: list[Comparison]) -> str:
    """Per comparison: the summary line, what was compared, the verdicts per bound class, then every row."""
    out = []
    for c in comparisons:
        out += [f"### roofline compare: {_md(title(c))}", "", f"**{summary_line(c)}**", "",
                *(f"- {_md(s)}" for s in sources(c)), "",
                "| bound | " + " | ".join(BOUND_COLUMNS) + " |", "|---" + "|---:" * len(BOUND_COLUMNS) + "|",
                *(f"| {label} | " + " | ".join(cols) + " |" for label, cols in bound_rows(c)), "",
                "| " + " | ".join(COLUMNS) + " |",
                "|" + "|".join("---" if name in TEXT_COLUMNS else "---:" for name in COLUMNS) + "|"]
        for row in table_rows(c):
            row[5] = f"**{row[5]}**" if row[5] == "SLOWER" else row[5]
            out.append("| " + " | ".join(_md(x) for x in row) + " |")
        lonely = only_in_one(c)
        if lonely:
            out += ["", f"<details><summary>{len(lonely)} rows in only one file</summary>", "",
                    *(f"- {_md(x)}" for x in lonely), "", "</details>"]
        out.append("")
    return "\n".join(out)
