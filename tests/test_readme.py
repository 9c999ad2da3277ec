"""The README's examples run as written, and running them changes no file the repository tracks.

Every `roofline …` line of the README's bash blocks is one example. Those that can run on a CPU — the ones that read
committed GPU results (`report`, `compare`, `tp-scaling`), list things (`ops`, `devices`), or say `--device cpu` —
run exactly as written, from the checkout's root; the ones that need a GPU run (a `profile`, `sweep`, `trace` or
`calibrate` on the default device) are listed as skipped. A line with a placeholder (`<run>`, `$VAR`, `…`) is a
template, not an example.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
CPU_COMMANDS = ("report", "compare", "tp-scaling", "ops", "devices")
TEMPLATE = re.compile(r"[<>$…]|BASE\.json|NEW\.json|RESULTS|path/to")


def examples() -> list[str]:
    """The README's `roofline …` command lines, comments and line continuations resolved."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("roofline "):
                lines.append(" ".join(line.split()))
    return list(dict.fromkeys(lines))


def runs_on_a_cpu(line: str) -> bool:
    words = shlex.split(line)
    return not TEMPLATE.search(line) and (words[1] in CPU_COMMANDS or "--device cpu" in line)


CPU_EXAMPLES = [line for line in examples() if runs_on_a_cpu(line)]


def tracked_changes() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def test_the_readme_has_examples_of_every_command() -> None:
    commands = {shlex.split(line)[1] for line in examples()}
    assert {"profile", "ops", "devices", "calibrate", "report", "compare", "sweep", "tp-scaling"} <= commands
    assert len(CPU_EXAMPLES) >= 8


@pytest.mark.parametrize("line", CPU_EXAMPLES)
def test_a_readme_example_runs_as_written_and_changes_no_tracked_file(line: str) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to tell tracked files")
    before, folders = tracked_changes(), set(REPORTS.iterdir())
    try:
        out = subprocess.run([sys.executable, "-m", "roofline", *shlex.split(line)[1:]], cwd=REPO, capture_output=True,
                             text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    finally:  # the fresh folders an example writes (reports/cpu-gpt2-s64-tp2, -2, …) are the test's debris
        for folder in set(REPORTS.iterdir()) - folders:
            shutil.rmtree(folder, ignore_errors=True)
    assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"
    assert tracked_changes() == before, f"{line} changed tracked files"


# ---- figures the README quotes from committed results: computed here from the files ----

def test_the_sweep_figures_are_the_files() -> None:
    from roofline.analysis.sweep import sweep_series
    from roofline.results import load

    text = " ".join((REPO / "README.md").read_text().split())
    series = {s.name: s for s in sweep_series(load(REPO / "reports/reference/h100/gpt-7b-sweep/results.json"))}
    naive = {n: t for n, t, _ in series["naive"].points}
    fused = ("sdpa_flash", "sdpa_efficient", "sdpa_cudnn")
    speedups = {name: [naive[n] / t for n, t, _ in series[name].points if n in naive] for name in (*fused, "triton")}
    every = [x for values in speedups.values() for x in values]
    torch_slopes = sorted(series[name].time_slope() for name in fused)
    quoted = [
        f"peak memory grows as N^{series['naive'].memory_slope():.2f}",
        f"every fused kernel's as N^{max(series[name].memory_slope() for name in speedups):.2f}",
        f"time grows as N^{series['naive'].time_slope():.2f} for the naive chain",
        f"N^{torch_slopes[0]:.2f}–{torch_slopes[-1]:.2f} for PyTorch's fused kernels",
        f"N^{series['triton'].time_slope():.2f} for our Triton kernel",
        f"{min(every):.2f}–{max(every):.2f}× faster than the naive chain",
        f"sdpa_efficient {min(speedups['sdpa_efficient']):.2f}–{max(speedups['sdpa_efficient']):.2f}×",
        f"cuDNN {min(speedups['sdpa_cudnn']):.2f}–{max(speedups['sdpa_cudnn']):.2f}×",
        f"best variants: N^{series['block (best)'].time_slope():.2f} in time, "
        f"N^{series['block (best)'].memory_slope():.2f} in memory",
    ]
    assert [q for q in quoted if q not in text] == []


def test_the_quoted_projection_rate_is_the_file() -> None:
    from roofline.results import load

    text = " ".join((REPO / "README.md").read_text().split())
    qkv = load(REPO / "reports/reference/h100/gpt-7b-s8192/results.json").find("qkv_proj")
    assert f"prefill, {qkv.flops_per_s / 1e12:.0f} TFLOP/s in `gpt-7b-s8192/`" in text
    assert f"compute-bound at {qkv.pct_of_roof:.0f} % of roof" in text


def formula_table() -> str:
    """The README's formula table, as the catalog declares it (comm ops: see `roofline ops --tp`)."""
    from roofline.ops import CATALOG

    rows = ["| op | unit | FLOPs | minimum bytes |", "| --- | --- | --- | --- |"]
    for op in CATALOG:
        if op.unit != "comm":
            name = op.name + (f" ×{op.per_block}" if op.per_block > 1 else "")
            flops, nbytes = (f.expr.replace("*", "·") for f in (op.flops, op.min_bytes))
            rows.append(f"| {name} | {op.unit} | {flops} | {nbytes} |")
    return "\n".join(rows)


def test_the_formula_table_is_the_catalog() -> None:
    assert formula_table() in (REPO / "README.md").read_text()
