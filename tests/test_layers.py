"""The layers keep to ../shared/DESIGN.md: one-way imports, and rendering never loads torch.

cli → measure → analysis → render, over the catalog (ops), the contract (results) and the base modules:
- nothing outside roofline/cli imports roofline.cli;
- measure never imports render; render never imports measure, the catalog or torch; analysis imports none of
  measure, render, the catalog, torch;
- the catalog (ops) imports no layer but the contract and the base modules;
- the contract and base modules (results, config, hf_config, errors, fmt) import no layer;
- the package root is the Python API (`roofline.trace`): it may reach measure, inside its function only (importing
  roofline loads no torch), never cli;
- kernels/ imports nothing of roofline outside itself;
- no import cycle among roofline's modules.
Every import counts, also one inside a function. And at call time: in a fresh interpreter where importing torch
raises, `report`, `compare` and `tp-scaling` run on committed results and the profile table renders.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "reports" / "reference"
BASE = {"roofline.results", "roofline.config", "roofline.hf_config", "roofline.errors", "roofline.fmt"}
HEAVY = ("torch", "triton")


def module_name(path: Path) -> str:
    """roofline/render/html.py → roofline.render.html; kernels/softmax.py → roofline.kernels.softmax."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts[0:1] = ["roofline", "kernels"]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from roofline.measure import session`
    return found


def import_graph() -> dict[str, set[str]]:
    files = [*REPO.glob("roofline/**/*.py"), *REPO.glob("kernels/*.py")]
    modules = {module_name(f) for f in files}
    graph = {}
    for f in files:
        wanted = imports_of(f)
        graph[module_name(f)] = {m for m in wanted if m in modules} | {m for m in wanted if m.split(".")[0] in HEAVY}
    return graph


def layer(module: str) -> str:
    """The layer of a roofline module: cli, measure, analysis, render, ops, kernels, or base."""
    parts = module.split(".")
    if module == "roofline.__main__":  # `python -m roofline` is the command line
        return "cli"
    if module == "roofline":  # the package root: the Python API
        return "api"
    if module in BASE or len(parts) < 2:
        return "base"
    return parts[1] if parts[1] in ("cli", "measure", "analysis", "render", "ops", "kernels") else "base"


FORBIDDEN = {  # layer -> layers (and heavy packages) it may not import
    "api": {"cli", "render", "torch", "triton"},
    "measure": {"cli", "render"},
    "analysis": {"cli", "measure", "render", "ops", "torch", "triton"},
    "render": {"cli", "measure", "ops", "torch", "triton"},
    "ops": {"cli", "measure", "analysis", "render"},
    "base": {"cli", "measure", "analysis", "render", "ops"},
    "kernels": {"cli", "measure", "analysis", "render", "ops", "base"},
}


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in graph.items():
        mine = layer(module)
        for target in targets:
            theirs = target.split(".")[0] if target.split(".")[0] in HEAVY else layer(target)
            if mine != theirs and theirs in FORBIDDEN.get(mine, set()):
                out.append(f"{module} → {target}")
    return sorted(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among roofline's modules (each found once, from its smallest module)."""
    found, nodes = [], sorted(graph)
    for start in nodes:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start and len(path) > 1:
                    found.append(path)
                elif nxt in graph and nxt > start and nxt not in path and nxt != node:
                    stack.append((nxt, [*path, nxt]))
    return found


def test_no_import_goes_against_the_layers() -> None:
    assert violations(import_graph()) == []


def test_no_import_cycle() -> None:
    graph = import_graph()
    # a package's __init__ importing its own modules is not a cycle of theirs
    graph = {m: {t for t in ts if not m.startswith(t + ".") and t not in HEAVY} for m, ts in graph.items()}
    assert cycles(graph) == []


@pytest.mark.parametrize(("module", "target"), [
    ("roofline.render.html", "roofline.measure.session"),  # rendering reaching into measuring
    ("roofline.measure.counters", "roofline.render.figures.counters"),  # measuring reaching into rendering
    ("roofline.analysis.fusion", "roofline.ops"),  # analysis reading the live catalog
    ("roofline.measure.parallel", "roofline.cli.console"),  # the CLI as a hub
    ("roofline.render.table", "torch"),
    ("roofline.kernels.softmax", "roofline.results"),
    ("roofline", "roofline.cli.console"),  # the Python API reaching for the command line
    ("roofline.hf_config", "roofline.measure.hf"),  # a base module reaching into measuring
])
def test_a_reintroduced_back_arrow_is_caught(module: str, target: str) -> None:
    """The check is not vacuous: each of today's old back-arrows, put back, is reported."""
    graph = import_graph()
    graph[module] = graph[module] | {target}
    assert f"{module} → {target}" in violations(graph)


def test_a_reintroduced_cycle_is_caught() -> None:
    graph = {m: set(ts) for m, ts in import_graph().items()}
    graph["roofline.measure.timer"].add("roofline.measure.session")  # session → variant → timer → session
    assert cycles(graph)


NO_TORCH = """
import importlib.abc, json, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "triton"):
            raise ImportError(f"{name} imported while rendering")
sys.meta_path.insert(0, NoTorch())
import io
from rich.console import Console
from roofline.cli import main
from roofline.results import load
from roofline.render.table import print_results
args = json.loads(sys.argv[1])
codes = [main(argv) for argv in args["commands"]]
print_results(load(args["table"]), Console(file=io.StringIO()))
print(json.dumps({"codes": codes, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton"))}))
"""


def test_report_compare_and_tp_scaling_never_load_torch(tmp_path: Path) -> None:
    s8192, aa = REFERENCE / "h100/gpt-7b-s8192", REFERENCE / "h100/gpt-7b-s8192-aa"
    tp1, tp4 = REFERENCE / "h200x4/gpt-7b-s8192-tp1", REFERENCE / "h200x4/gpt-7b-s8192-tp4"
    commands = [["report", str(s8192), str(tp4), "--out", str(tmp_path / "report")],
                ["compare", str(s8192), str(aa), "--markdown", str(tmp_path / "c.md"),
                 "--html", str(tmp_path / "c.html"), "--json", str(tmp_path / "c.json")],
                ["tp-scaling", str(tp1), str(tp4)]]
    out = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps({"commands": commands, "table": str(tp4)})],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0], "loaded": []}
    assert (tmp_path / "report" / "report.html").stat().st_size > 0 and (tmp_path / "c.html").stat().st_size > 0


def test_importing_roofline_loads_no_torch() -> None:
    """The Python API (roofline.trace) loads torch when called, not when roofline is imported."""
    code = ("import sys, roofline; assert callable(roofline.trace); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
