"""One style for every figure and the HTML report: colours, markers, run names, and how a figure becomes bytes.

matplotlib is imported inside the functions, so importing the renderers (and `roofline --help`) stays fast.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from roofline import fmt
from roofline.fmt import describe_run
from roofline.results import Results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPUTE_COLOR = "#1f6fb4"  # compute-bound: the same hue in plots, the HTML report and the terminal (cyan)
MEMORY_COLOR = "#c23b75"  # memory-bound (magenta in the terminal)
COMM_COLOR = "#2f9e8f"  # communication (a collective's time)
BUBBLE_COLOR = "#aab2bb"  # a pipeline step's bubble: stages idle, waiting for their neighbours
BOUND_COLORS = {"compute": COMPUTE_COLOR, "memory": MEMORY_COLOR}
KIND_COLORS = {**BOUND_COLORS, "comm": COMM_COLOR}
GROUP_COLORS = {"attention": "#e08a00", "norm": "#2a9d5c", "ffn": "#7b52c7", "moe": "#8c5a2b"}
OTHER_COLOR = "#666666"
VARIANT_MARKERS = {"torch": "o", "naive": "s", "eager": "p", "sdpa_flash": "^", "sdpa_efficient": "v",
                   "sdpa_cudnn": "D", "triton": "*", "compile": "P"}
SPARE_MARKERS = ("h", "p", "<", ">", "d", "8")
RUN_STYLES = ({"filled": True, "alpha": 0.95}, {"filled": False, "alpha": 1.0}, {"filled": True, "alpha": 0.55},
              {"filled": False, "alpha": 0.6}, {"filled": True, "alpha": 0.25}, {"filled": False, "alpha": 0.3})
MARKER_AREA = 70.0  # scatter size, points²
SPEEDUP_GOOD, SPEEDUP_BAD = "#1a7f37", "#b42318"


def group_color(group: str) -> str:
    return GROUP_COLORS.get(group, OTHER_COLOR)


def variant_marker(variant: str) -> str:
    if variant in VARIANT_MARKERS:
        return VARIANT_MARKERS[variant]
    return SPARE_MARKERS[sum(map(ord, variant)) % len(SPARE_MARKERS)]  # stable across runs and processes


def run_labels(results_list: list[Results]) -> list[str]:
    """A short name per run that tells overlaid runs apart: only the fields that differ ('seq 2048'), else when
    each was started ('run 2 (08:42:42)')."""
    fields = [fmt.run_fields(r) for r in results_list]
    at = lambda f, k: f[k] if k < len(f) else ""  # noqa: E731  (a run with more parallel axes has more fields)
    differing = [k for k in range(len(fields[0])) if len({at(f, k) for f in fields}) > 1]
    labels = [" · ".join(at(f, k) for k in differing) for f in fields]
    if len(set(labels)) == len(labels):
        return labels
    started = [r.run.started_at or "?" for r in results_list]
    same_day = len({s[:10] for s in started}) == 1
    return [f"run {i + 1} ({s[11:19] if same_day else s[:16].replace('T', ' ')})" for i, s in enumerate(started)]


def describe_runs(results_list: list[Results]) -> str:
    """The title of one run, or of several overlaid: what they share, then 'seq 2048 vs seq 8192'."""
    if len(results_list) == 1:
        return describe_run(results_list[0])
    fields = [fmt.run_fields(r) for r in results_list]
    shared = [value for k, value in enumerate(fields[0]) if all(k < len(f) and f[k] == value for f in fields)]
    return " · ".join([*shared, " vs ".join(run_labels(results_list))])


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A pyplot-free figure on the Agg canvas: no global state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_files(fig: Figure, formats: tuple[str, ...] = ("png", "svg")) -> dict[str, bytes]:
    """PNG (150 dpi) and/or SVG (text as paths: no fonts needed to view it) of a figure, reproducibly.

    The layout is done once: one draw without rendering runs the layout engine and measures the tight bounding
    box, then the layout is frozen and each format is rendered once. (`bbox_inches="tight"` would lay the
    figure out again and draw it twice per format.)
    """
    import matplotlib

    fig.draw_without_rendering()
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.15)  # type: ignore[attr-defined]
    fig.set_layout_engine("none")
    out = {}
    for fmt_name in formats:
        buf = io.BytesIO()
        metadata = {"Date": None} if fmt_name == "svg" else {"Software": None}
        with matplotlib.rc_context({"svg.hashsalt": "roofline", "svg.fonttype": "path"}):
            fig.savefig(buf, format=fmt_name, dpi=150, metadata=metadata, facecolor="white", bbox_inches=bbox)
        out[fmt_name] = buf.getvalue()
    return out


CHILD_TIMEOUT_S = 120.0  # a figure's child process that has not answered by then is stopped; the parent draws it


def render_figures(builders: dict[str, Callable[[], Figure]], formats: tuple[str, ...]) -> dict[str, dict[str, bytes]]:
    """Each figure's files (figure_files), the figures drawn at once: every one but the last in a forked child,
    one per spare core, the last here. matplotlib holds the GIL, so threads would not help; on the 2-core CPU a
    profile's two figures took 4.6 s one after the other. Serial where fork is not at hand (not Linux, one core);
    a child that fails or hangs is drawn here instead, so the worst case is the serial time plus the wait."""
    names = list(builders)
    spare = max(0, (os.cpu_count() or 1) - 1) if sys.platform.startswith("linux") else 0
    forked = names[:-1][:spare]
    children = {name: _fork_figure(builders[name], formats) for name in forked}
    out = {name: figure_files(builders[name](), formats) for name in names if name not in forked}
    for name, (process, conn) in children.items():
        try:
            files = conn.recv() if conn.poll(CHILD_TIMEOUT_S) else None
        except (EOFError, OSError):  # the child died without a word (killed, out of memory)
            files = None
        process.join(timeout=1)
        if process.is_alive():
            process.kill()
        out[name] = files if isinstance(files, dict) else figure_files(builders[name](), formats)
    return {name: out[name] for name in names}


def _fork_figure(builder: Callable[[], Figure], formats: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A forked child that draws one figure and sends its files (or None on any failure) back through a pipe."""
    import multiprocessing
    import warnings

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def draw() -> None:
        try:
            child.send(figure_files(builder(), formats))
        except Exception:  # the parent draws it instead
            child.send(None)

    process = ctx.Process(target=draw, daemon=True)
    with warnings.catch_warnings():  # Python ≥ 3.12 warns on fork in a threaded process; the child only draws
        warnings.simplefilter("ignore", DeprecationWarning)
        process.start()
    child.close()
    return process, parent


def figure_bytes(fig: Figure, fmt_name: str) -> bytes:
    """One format of figure_files."""
    return figure_files(fig, (fmt_name,))[fmt_name]
