"""Capture what the commands print for the committed reference results: the golden files of tests/test_golden.py.

    python tests/golden/capture.py            # rewrite tests/golden/*.txt from the code as it is now

Run it only when an output is meant to change, and read `git diff tests/golden` before committing: the golden
tests exist so that moving code (the layers refactor) changes no output by accident.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REF = ROOT / "reports" / "reference"

# name -> argv of `roofline …` (paths relative to reports/reference/)
COMMANDS: dict[str, list[str]] = {
    "compare-aa.json": ["compare", "h100/gpt-7b-s8192/results.json", "h100/gpt-7b-s8192-aa/results.json",
                        "--json", "-"],
    "compare-h100-h200.json": ["compare", "h100/gpt-7b-s8192/results.json", "h200/gpt-7b-s8192/results.json",
                               "--json", "-"],
    "compare-aa.md": ["compare", "h100/gpt-7b-s8192/results.json", "h100/gpt-7b-s8192-aa/results.json",
                      "--markdown", "-"],
    "compare-tp4-rerun.json": ["compare", "h200x4/gpt-7b-s8192-tp4/results.json",
                                 "h200x4/train/rerun/gpt-7b-s8192-tp4/results.json", "--json", "-"],
    "tp-scaling-4.txt": ["tp-scaling", "h200x4/gpt-7b-s8192-tp1/results.json", "h200x4/gpt-7b-s8192-tp4/results.json"],
    "ops-gpt.txt": ["ops", "--seq-len", "8192"],
    "ops-llama-train.txt": ["ops", "--model", "llama3-8b", "--mode", "train"],
    "ops-mixtral-tp2.txt": ["ops", "--model", "mixtral-8x7b", "--tp", "2"],
}
# name -> results files whose profile table (what `profile` prints at the end) is kept
TABLES: dict[str, str] = {
    "table-prefill.txt": "h100/gpt-7b-s8192/results.json",
    "table-train.txt": "h100/gpt-7b-train-s4096/results.json",
    "table-decode.txt": "h100/llama3-8b-decode-b64-kv8192/results.json",
    "table-tp4.txt": "h200x4/gpt-7b-s8192-tp4/results.json",
}
REPORTS: dict[str, list[str]] = {  # name -> results files rendered together by `roofline report`
    "report-prefill.html": ["h100/gpt-7b-s8192/results.json"],
    "report-tp.html": ["h200x4/gpt-7b-s8192-tp1/results.json", "h200x4/gpt-7b-s8192-tp2/results.json",
                       "h200x4/gpt-7b-s8192-tp4/results.json"],
}
SWEEP = "h100/gpt-7b-sweep/results.json"
WIDTH = 220


def run(argv: list[str]) -> str:
    from roofline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"roofline {' '.join(argv)} exited {code}: {err.getvalue()}")
    return out.getvalue()


def console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(file=io.StringIO(), width=WIDTH, force_terminal=False, no_color=True, soft_wrap=False)


def table_text(path: Path) -> str:
    from roofline.render.table import print_results
    from roofline.results import load

    c = console()
    print_results(load(path), c)
    return c.file.getvalue()


def sweep_text(path: Path) -> str:
    from roofline.render.table import sweep_table
    from roofline.results import load

    c = console()
    c.print(sweep_table(load(path)))
    return c.file.getvalue()


def strip_images(html: str) -> str:
    """The report without its embedded figures (their bytes depend on matplotlib's version, not on our code)."""
    return re.sub(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+", "data:…", html)


def report_html(paths: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        run(["report", *(str(REF / p) for p in paths), "--out", tmp, "--no-png", "--no-svg"])
        return strip_images((Path(tmp) / "report.html").read_text())


def outputs() -> dict[str, str]:
    os.environ["COLUMNS"] = str(WIDTH)
    found = {}
    for name, argv in COMMANDS.items():
        found[name] = run([str(REF / a) if a.endswith(".json") else a for a in argv])
    for name, path in TABLES.items():
        found[name] = table_text(REF / path)
    found["sweep-table.txt"] = sweep_text(REF / SWEEP)
    for name, paths in REPORTS.items():
        found[name] = report_html(paths)
    return {name: normalise(text) for name, text in found.items()}


def normalise(text: str) -> str:
    """Paths of this checkout replaced by a placeholder, trailing blanks dropped: the same on every machine."""
    text = text.replace(str(REF), "REF")
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


if __name__ == "__main__":
    for name, text in outputs().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}", file=sys.stderr)
