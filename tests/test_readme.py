"""The README's examples run as written, and running them changes no file the repository tracks.

Every `roofline …` line of the README's bash blocks is one example. Those that can run on a CPU — the ones that read
committed GPU results (`report`, `compare`, `tp-scaling`), list things (`ops`, `devices`), or say `--device cpu` —
run exactly as written, from the checkout's root; the ones that need a GPU run (a `profile`, `sweep`, `trace` or
`calibrate` on the default device) are listed as skipped. A line with a placeholder (`<run>`, `$VAR`, `…`) is a
template, not an example.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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
    before = tracked_changes()
    out = subprocess.run([sys.executable, "-m", "roofline", *shlex.split(line)[1:]], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env={**__import__("os").environ, "COLUMNS": "200"})
    assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"
    assert tracked_changes() == before, f"{line} changed tracked files"
