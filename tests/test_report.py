"""Plots and the HTML report, rendered from REAL results: the committed GPU references under reports/reference/
when they exist, else one small CPU profile made by the tool itself once per session."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import run_cli

from roofline import fmt, results
from roofline.analysis import block as time_split
from roofline.analysis import fusion
from roofline.analysis.fusion import summarize
from roofline.render import html as report
from roofline.render import style as plot
from roofline.render.figures.roofline import roofline_figure
from roofline.results import Results

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reports" / "reference"
PROFILE_OPS = "layernorm,attention,softmax,qk_t,attn_v,residual_dropout_norm,dropout,residual_add"
_made: list[Path] = []  # the session's CPU profile, shared with test_report_browser.py


def reference_results() -> list[Path]:
    """Committed results measured on real GPUs (e.g. reports/reference/h100/gpt-7b-s8192/results.json), the
    top-level runs first (histories such as h100/aa-history/<commit>/… after), a run measured with --counters
    (which renders a third figure, tested on its own) after the plain ones."""
    return sorted(REFERENCE_DIR.glob("**/results.json"), key=lambda p: (len(p.parts), "counters" in p.parts, p))


def real_results_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    found = reference_results()
    if found:
        return found
    if not _made:
        out = tmp_path_factory.mktemp("report-profile")
        code, _, err = run_cli(["profile", "--seq-len", "64", "--ops", PROFILE_OPS, "--out", str(out),
                                "--no-plots", "--budget", "0.05"])
        assert code == 0, err
        _made.append(out / "results.json")
    return list(_made)


@pytest.fixture(scope="session")
def results_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return real_results_files(tmp_path_factory)


@pytest.fixture(scope="session")
def loaded(results_files: list[Path]) -> list[Results]:
    return [results.load(p) for p in results_files]


@pytest.fixture(scope="session")
def rendered(loaded: list[Results], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The first run rendered once: (folder, paths written)."""
    out = tmp_path_factory.mktemp("report")
    return out, report.render_all(loaded[:1], out)


def test_render_all_writes_every_file(rendered: tuple[Path, list[Path]]) -> None:
    out, paths = rendered
    names = {"roofline.png", "roofline.svg", "time_split.png", "time_split.svg", "report.html"}
    assert {p.name for p in paths} == names
    assert all((out / n).stat().st_size > 10_000 for n in names)


@pytest.mark.parametrize("name", ["roofline.png", "time_split.png"])
def test_png_is_a_real_picture(rendered: tuple[Path, list[Path]], name: str) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(rendered[0] / name)[..., :3]
    height, width = pixels.shape[:2]
    assert width >= 1200 and height >= 500
    colours = np.unique((pixels[::3, ::3].reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50  # roofs, points, shading, text: not a flat image
    inked = float(np.mean(np.any(pixels < 0.97, axis=-1)))
    assert 0.03 < inked < 0.9


@pytest.mark.parametrize("name", ["roofline.svg", "time_split.svg"])
def test_svg_parses(rendered: tuple[Path, list[Path]], name: str) -> None:
    root = ElementTree.parse(rendered[0] / name).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 100


class _Collector(HTMLParser):
    """Every tag's attributes, and the cell texts of each row of the tables of one class (the ops table)."""

    def __init__(self, table: str = "ops") -> None:
        super().__init__()
        self.table = table
        self.attrs: list[tuple[str, dict[str, str]]] = []
        self.op_rows: list[list[str]] = []
        self.styles: list[str] = []
        self._in_ops = self._in_cell = self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.attrs.append((tag, a))
        if tag == "table":
            self._in_ops = self.table in a.get("class", "").split()
        elif tag == "tr" and self._in_ops:
            self.op_rows.append([])
        elif tag == "td" and self._in_ops:
            self._in_cell = True
            self.op_rows[-1].append("")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_cell = False
        elif tag == "table":
            self._in_ops = False
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.op_rows[-1][-1] += data
        if self._in_style:
            self.styles.append(data)


def _parse(html: str, table: str = "ops") -> _Collector:
    collector = _Collector(table)
    collector.feed(html)
    return collector


def test_html_lists_every_row(rendered: tuple[Path, list[Path]], loaded: list[Results]) -> None:
    page = _parse((rendered[0] / "report.html").read_text())
    shown = {(cells[1].split(" ×")[0].strip(), cells[2].replace("⚡", "").strip()) for cells in page.op_rows if cells}
    assert shown == {(r.op, r.variant) for r in loaded[0].rows}
    html = (rendered[0] / "report.html").read_text()
    for f in summarize(loaded[0]):
        assert f.fused_variant in html and " → ".join(f.chain_ops) in html


def test_html_is_self_contained(rendered: tuple[Path, list[Path]]) -> None:
    html = (rendered[0] / "report.html").read_text()
    page = _parse(html)
    for tag, attrs in page.attrs:
        for name in ("src", "href", "srcset", "poster", "action", "data", "xlink:href"):
            value = attrs.get(name, "").strip()
            assert not re.match(r"(https?:)?//", value, re.I), f"<{tag} {name}={value[:60]}> reaches the network"
            assert not (tag == "img" and name == "src" and not value.startswith("data:image/")), "image not embedded"
        assert not (tag == "script" and "src" in attrs) and not (tag == "link" and attrs.get("rel") == "stylesheet")
    css = "".join(page.styles)
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(?!data:)", css)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert sum(tag == "img" for tag, _ in page.attrs) == 2
    assert "default-src 'none'" in html  # the CSP: the browser itself refuses any request


def test_time_split_matches_fusion_module(loaded: list[Results]) -> None:
    """Before = the unfused block (each plain op's baseline row); after = each chain swapped for its fastest fused
    variant, where that is faster than the chain."""
    for res in loaded:
        before, after = time_split.block_before_after(res)
        split = time_split.kind_split(before)
        for kind in ("compute", "memory", "comm"):
            assert sum(o.time_s for o in before if o.kind == kind) == pytest.approx(split[kind])
        baselines = {r.op: r for r in fusion.unfused_block(res)}
        assert [o.op for o in before] == [op for op, r in baselines.items() if r.bound in ("compute", "memory")]
        fused = {f.group: min(x.fused_time_s for x in summarize(res) if x.group == f.group) for f in summarize(res)}
        after_ops = {o.op for o in after}
        for group, best in fused.items():
            if group in after_ops:
                entry = next(o for o in after if o.op == group)
                assert entry.time_s == pytest.approx(best * res.find(group, entry.variant).per_block)  # type: ignore
                chain = next(f.chain_ops for f in summarize(res) if f.group == group)
                assert not set(chain) - {group} & after_ops
                was = sum(o.time_s for o in before if o.op in chain)  # the bar's "(was …)": the chain it replaced
                assert entry.replaced_s == pytest.approx(was)


def _label_shapes(fig: object) -> list[tuple[str, np.ndarray]]:
    """The four corners (display pixels) of every label on the roofline axes, leader lines left out; a rotated
    label (a memory roof's) as its rotated rectangle, not the much larger box around it."""
    from matplotlib.text import Annotation, Text

    ax = fig.axes[0]  # type: ignore[attr-defined]
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    shapes = []
    for child in ax.get_children():
        if not (isinstance(child, Text) and child.get_text() and child.get_visible()):
            continue
        if isinstance(child, Annotation):
            child.update_positions(renderer)  # what a draw does; Text's own extent then leaves the leader out
        angle = child.get_rotation()
        child.set_rotation(0)  # rotation_mode "anchor": the unrotated box keeps the anchor corner in place
        e = Text.get_window_extent(child, renderer)
        child.set_rotation(angle)
        corners = np.array([(e.x0, e.y0), (e.x1, e.y0), (e.x1, e.y1), (e.x0, e.y1)])
        if angle:
            c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
            corners = (corners - corners[0]) @ np.array([[c, s], [-s, c]]) + corners[0]
        shapes.append((child.get_text(), corners))
    return shapes


def _overlap(a: np.ndarray, b: np.ndarray, tolerance_px: float = 1.0) -> bool:
    """Whether two convex quadrilaterals overlap by more than tolerance_px (no separating axis among their edges)."""
    for shape in (a, b):
        for p, q in zip(shape, np.roll(shape, -1, axis=0), strict=True):
            normal = np.array([p[1] - q[1], q[0] - p[0]]) / np.hypot(*(q - p))
            pa, pb = a @ normal, b @ normal
            if min(pa.max(), pb.max()) - max(pa.min(), pb.min()) <= tolerance_px:
                return False
    return True


def test_roofline_labels_do_not_overlap(loaded: list[Results]) -> None:
    """Every distinct real run alone (repeats of one configuration once), and the first two overlaid: every op
    with a point named, no label over another."""
    distinct = {(fmt.describe_run(r), tuple((row.op, row.variant, row.status) for row in r.rows)): r for r in loaded}
    for runs in [[r] for r in distinct.values()] + ([loaded[:2]] if len(loaded) > 1 else []):
        shapes = _label_shapes(roofline_figure(runs))
        labelled = " ".join(text for text, _ in shapes)
        # every op with a point: a FLOP-free one (a trace's data movement, repeat_kv) has no place on a FLOP axis
        assert all(r.op in labelled for res in runs for r in res.ok_rows() if r.flops_per_s and r.intensity > 0)
        for i, (a_text, a) in enumerate(shapes):
            for b_text, b in shapes[i + 1:]:
                assert not _overlap(a, b), f"labels {a_text!r} and {b_text!r} overlap ({plot.run_labels(runs)})"


def _slower_copy(res: Results, factor: float, device: str) -> Results:
    """A derived copy of a real run (every time × factor, another device name): an overlay partner."""
    other = Results(run=copy.deepcopy(res.run), rows=copy.deepcopy(res.rows))
    other.run.device.name = device
    for r in other.rows:
        if r.status == "ok":
            for name in ("time_median_s", "time_p20_s", "time_p80_s"):
                setattr(r, name, getattr(r, name) * factor)
            r.flops_per_s, r.bytes_per_s = r.flops_per_s / factor, r.bytes_per_s / factor  # type: ignore[operator]
    return other


def test_overlay_of_two_runs(loaded: list[Results], tmp_path: Path) -> None:
    runs = [loaded[0], _slower_copy(loaded[0], 2.0, "Slower twin")]
    labels = plot.run_labels(runs)
    assert len(set(labels)) == 2 and "Slower twin" in labels[1]
    fig = roofline_figure(runs)
    legend_texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert set(labels) <= legend_texts
    paths = report.render_all(runs, tmp_path, png=False, svg=False)
    assert [p.name for p in paths] == ["report.html"]
    html = paths[0].read_text()
    assert all(label in html for label in labels)
    title = plot.describe_runs(runs)  # what both runs share, then what tells them apart
    assert title.endswith(" vs ".join(labels)) and loaded[0].run.config.name in title


def test_an_a_a_overlay_tells_the_runs_apart_by_start_time(loaded: list[Results]) -> None:
    twin = Results(run=dataclasses.replace(loaded[0].run, started_at="2026-11-26T08:42:42+0000"), rows=loaded[0].rows)
    first = Results(run=dataclasses.replace(loaded[0].run, started_at="2026-11-26T08:42:08+0000"), rows=loaded[0].rows)
    assert plot.run_labels([first, twin]) == ["run 1 (08:42:08)", "run 2 (08:42:42)"]


def test_rows_without_a_point_are_named_under_the_plot(loaded: list[Results]) -> None:
    """A real run with one measured row turned into a failure: the plot says which variant it leaves out."""
    rows = copy.deepcopy(loaded[0].rows)
    victim = rows[-1]
    victim.status, victim.note = "failed", "wrong result (test)"
    fig = roofline_figure([Results(run=loaded[0].run, rows=rows)])
    notes = [text for text, _ in _label_shapes(fig) if text.startswith("Not shown:")]
    assert len(notes) == 1 and "1 failed: " in notes[0] and victim.op in notes[0].split("1 failed: ")[1]


def test_render_all_refuses_a_run_with_nothing_measured(loaded: list[Results], tmp_path: Path) -> None:
    empty = Results(run=loaded[0].run, rows=[r for r in loaded[0].rows if r.status != "ok"])
    with pytest.raises(results.RooflineError, match="nothing to plot"):
        report.render_all([empty], tmp_path)


# The `roofline report` command ------------------------------------------------------------------------------


def test_report_command_renders(results_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from roofline.cli import main

    assert main(["report", str(results_files[0]), "--no-png", "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "roofline.svg", "time_split.svg"]
    assert "Wrote" in capsys.readouterr().err


def test_report_command_defaults_to_a_fresh_folder(results_files: list[Path], tmp_path: Path, monkeypatch) -> None:
    """The run's own folder (maybe committed results) is never written over: reports/report-<run>, then -2…"""
    from roofline.cli import main

    run = tmp_path / "gpt-run"
    run.mkdir()
    (run / "results.json").write_text(results_files[0].read_text())
    monkeypatch.chdir(tmp_path)
    for folder in ("report-gpt-run", "report-gpt-run-2"):
        assert main(["report", str(run / "results.json"), "--no-png", "--no-svg"]) == 0
        assert (tmp_path / "reports" / folder / "report.html").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]


def _bad_files(real: Path) -> dict[str, str]:
    data = json.loads(real.read_text())
    old = {**data, "schema_version": 0}
    no_rows = {**data, "rows": []}
    nothing_ok = {**data, "rows": [{**r, "status": "skipped", "note": "test"} for r in data["rows"]]}
    return {"corrupt.json": "{not json", "old.json": json.dumps(old), "norows.json": json.dumps(no_rows),
            "skipped.json": json.dumps(nothing_ok)}


@pytest.mark.parametrize("name", ["missing.json", "corrupt.json", "old.json", "norows.json", "skipped.json"])
def test_report_command_bad_input_is_one_line_exit_2(results_files: list[Path], tmp_path: Path, name: str,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from roofline.cli import main

    monkeypatch.chdir(tmp_path)  # short relative paths: the message is about the file, not the temp folder
    for file_name, text in _bad_files(results_files[0]).items():
        Path(file_name).write_text(text)
    capsys.readouterr()
    assert main(["report", name]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roofline: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out and name in lines[0]
    assert not Path("report.html").exists()


def test_report_help_and_light_import() -> None:
    """`roofline --help` must not pay for matplotlib or jinja2: they load inside the functions."""
    import subprocess
    import sys

    code = "import sys, roofline.cli; print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # Nor do the rendering modules import the op catalog (and torch) when they load (tests/test_layers.py: nor
    # when they render).
    code = "import sys, roofline.render.html, roofline.render.table; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    code, stdout, _ = run_cli(["report", "--help"])
    assert code == 0 and "--no-html" in stdout and "RESULTS" in stdout


def test_counters_section_from_the_real_h100_counters_run(tmp_path: Path) -> None:
    """A run measured with --counters gets the hierarchical roofline and the analytic-vs-measured table."""
    source = Path(__file__).resolve().parent.parent / "reports/reference/h100/counters/results.json"
    if not source.is_file():
        pytest.skip("the committed H100 counters run is not in this checkout")
    res = results.load(source)
    assert tmp_path / "all" / "counters_roofline.png" in report.render_all([res], tmp_path / "all")
    paths = report.render_all([res], tmp_path, png=False, svg=False)  # the figures only inside the page
    html = (tmp_path / "report.html").read_text()
    assert paths == [tmp_path / "report.html"]
    assert "Hardware counters" in html and html.count("data:image/svg+xml;base64,") == 3
    counted = [r for r in res.rows if r.measured_kernels]
    assert counted and all(f"{r.op} · {r.variant}" in html for r in counted)



def _small_figure(label: str):  # type: ignore[no-untyped-def]
    fig = plot.new_figure(2, 1.5)
    fig.add_subplot().plot([0, 1], [1, 0], label=label)
    return fig


def test_figures_drawn_at_once_are_the_figures_drawn_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    builders = {name: (lambda name=name: _small_figure(name)) for name in ("a", "b", "c")}
    serial = {name: plot.figure_files(build(), ("svg", "png")) for name, build in builders.items()}
    monkeypatch.setattr(plot.os, "cpu_count", lambda: 3)  # two children, the last figure drawn here
    assert plot.render_figures(builders, ("svg", "png")) == serial
    here = __import__("os").getpid()
    where = lambda: _small_figure("here" if __import__("os").getpid() == here else "child")  # noqa: E731
    drawn = plot.render_figures({"a": where, "b": where}, ("svg",))
    assert drawn == {"a": plot.figure_files(_small_figure("child"), ("svg",)),
                     "b": plot.figure_files(_small_figure("here"), ("svg",))}


def test_a_figure_whose_child_fails_hangs_or_dies_is_drawn_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    here = os.getpid()

    def fails_in_a_child():  # type: ignore[no-untyped-def]
        if os.getpid() != here:
            raise RuntimeError("only in the child")
        return _small_figure("x")

    def hangs_in_a_child():  # type: ignore[no-untyped-def]
        if os.getpid() != here:
            time.sleep(60)
        return _small_figure("y")

    def dies_in_a_child():  # type: ignore[no-untyped-def]
        if os.getpid() != here:
            os._exit(9)
        return _small_figure("w")

    monkeypatch.setattr(plot, "CHILD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(plot.os, "cpu_count", lambda: 4)
    files = plot.render_figures({"x": fails_in_a_child, "y": hangs_in_a_child, "w": dies_in_a_child,
                                 "z": lambda: _small_figure("z")}, ("svg",))
    assert files == {name: plot.figure_files(_small_figure(name), ("svg",)) for name in "xywz"}
