"""Markdown for CI: `roofline compare --markdown` (a job summary or a PR comment, GitHub-flavoured)."""

from __future__ import annotations

from roofline.analysis import compare


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def compare_markdown(comparisons: list[compare.Comparison]) -> str:
    """Per comparison: the summary line, what was compared, the verdicts per bound class, then every row."""
    out = []
    for c in comparisons:
        out += [f"### roofline compare: {_md(compare.title(c))}", "", f"**{compare.summary_line(c)}**", "",
                *(f"- {_md(s)}" for s in compare.sources(c)), "",
                "| bound | " + " | ".join(compare.BOUND_COLUMNS) + " |",
                "|---" + "|---:" * len(compare.BOUND_COLUMNS) + "|",
                *(f"| {label} | " + " | ".join(cols) + " |" for label, cols in compare.bound_rows(c)), "",
                "| " + " | ".join(compare.COLUMNS) + " |",
                "|" + "|".join("---" if name in compare.TEXT_COLUMNS else "---:" for name in compare.COLUMNS) + "|"]
        for row in compare.table_rows(c):
            row[5] = f"**{row[5]}**" if row[5] == "SLOWER" else row[5]
            out.append("| " + " | ".join(_md(x) for x in row) + " |")
        noisy = [r for r in c.rows if r.verdict.noise is not None]
        if noisy:
            out += ["", "Noise floor of each op (the spread of its rounds; a change must exceed it and the threshold "
                    "to count): " + ", ".join(f"{r.base.op} · {r.base.variant} {100 * r.verdict.noise:.1f} %"
                                             for r in noisy)]
        lonely = compare.only_in_one(c)
        if lonely:
            out += ["", f"<details><summary>{len(lonely)} rows in only one file</summary>", "",
                    *(f"- {_md(x)}" for x in lonely), "", "</details>"]
        out.append("")
    return "\n".join(out)
