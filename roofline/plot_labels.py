"""Point labels that never overlap: a greedy placement in display pixels, with no dependency beyond matplotlib.

Each label tries positions on rings of growing radius around its anchor (right, left, the diagonals, above,
below) and takes the first whose box covers no placed label, no marker, no roof label and stays inside the
axes; when every candidate collides it takes the one that overlaps least. Lines (the fusion arrows) are soft
obstacles: crossing one costs less than covering a label. A label pushed away from its point gets a thin
leader line back to it. Call it last, after the axes limits and the layout are final (`fig.canvas.draw()`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels
Obstacle = tuple[Box, float]  # a box and the cost of covering one pixel of it

RADII_PX = (7, 13, 21, 32, 46, 64, 86, 112, 145)
ANGLES_DEG = (0, 180, 28, -28, 152, -152, 90, -90, 60, -60, 120, -120)
LEADER_FROM_PX = 15  # a label farther than this from its point gets a leader line
OUTSIDE_COST = 20.0  # per pixel of label outside the axes
LINE_COST = 0.3
AMBIGUOUS_COST = 150.0


@dataclass(frozen=True)
class Label:
    x: float  # anchor, data coordinates
    y: float
    text: str
    color: str = "#222222"
    bold: bool = False
    size: float = 7.5


def point_obstacles(ax: Axes, points: Sequence[tuple[float, float]], marker_area: float) -> list[Obstacle]:
    """A square box per marker (scatter size in points²), with a margin so no label touches a marker and reads
    as naming it."""
    half = math.sqrt(marker_area) / 2 * ax.figure.dpi / 72 + 3
    out = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        out.append(((px - half, py - half, px + half, py + half), 1.0))
    return out


def line_obstacles(ax: Axes, paths: Sequence[Sequence[tuple[float, float]]], step_px: float = 5) -> list[Obstacle]:
    """Small soft boxes every few pixels along each polyline (data coordinates)."""
    out = []
    for path in paths:
        pts = ax.transData.transform(path)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
            n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step_px))
            for k in range(n + 1):
                x, y = x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n
                out.append(((x - 2, y - 2, x + 2, y + 2), LINE_COST))
    return out


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box: Box, bounds: Box) -> float:
    area = (box[2] - box[0]) * (box[3] - box[1])
    return area - _overlap(box, bounds)


def _candidates(width: float, height: float) -> Iterator[tuple[float, float, float]]:
    """(dx, dy, radius): label-centre offsets whose nearest box edge lies `radius` pixels from the anchor."""
    for r in RADII_PX:
        for angle in ANGLES_DEG:
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            yield c * (r + width / 2), s * (r + height / 2), r


def centred_box(cx: float, cy: float, width: float, height: float) -> Box:
    return cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2


def rotated_boxes(x: float, y: float, angle_deg: float, width: float, height: float) -> list[Box]:
    """Squares of side `height` covering a text box rotated by angle_deg about its lower-left corner (x, y)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    n = max(1, math.ceil(width / height))
    centres = [(x + c * height * (k + 0.5) - s * height / 2, y + s * height * (k + 0.5) + c * height / 2)
               for k in range(n)]
    return [centred_box(cx, cy, height, height) for cx, cy in centres]


def _distance(box: Box, point: tuple[float, float]) -> float:
    dx = max(box[0] - point[0], 0.0, point[0] - box[2])
    dy = max(box[1] - point[1], 0.0, point[1] - box[3])
    return math.hypot(dx, dy)


def ambiguity(box: Box, own: tuple[float, float], others: Sequence[tuple[float, float]]) -> float:
    """A cost when the label sits nearer another point than its own one (it would read as naming that one)."""
    mine = _distance(box, own)
    return AMBIGUOUS_COST if any(_distance(box, p) < mine for p in others if p != own) else 0.0


def cost(boxes: Sequence[Box], taken: Sequence[Obstacle], bounds: Box) -> float:
    """Pixels of other labels, markers and lines covered (weighted) plus pixels outside the axes (heavily)."""
    if not taken:
        return sum(OUTSIDE_COST * _outside(box, bounds) for box in boxes)
    others = np.array([box for box, _ in taken])
    weights = np.array([weight for _, weight in taken])
    total = 0.0
    for box in boxes:
        w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
        h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
        covered = np.clip(w, 0, None) * np.clip(h, 0, None)
        total += OUTSIDE_COST * _outside(box, bounds) + float(np.dot(weights, covered))
    return total


def choose(candidates: Sequence[Sequence[Box]], taken: Sequence[Obstacle], bounds: Box,
           extra: Callable[[Box], float] = lambda box: 0.0) -> int:
    """Index of the first candidate (a label's boxes) that collides with nothing, else of the least colliding."""
    costs = []
    for i, boxes in enumerate(candidates):
        c = cost(boxes, taken, bounds) + sum(extra(box) for box in boxes)
        if c == 0:
            return i
        costs.append(c + 0.5 * i)  # among colliding candidates, prefer the earlier (nearer)
    return min(range(len(costs)), key=costs.__getitem__) if costs else 0


def axes_bounds(ax: Axes) -> Box:
    frame = ax.get_window_extent(ax.figure.canvas.get_renderer())  # type: ignore[attr-defined]
    return frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2


def text_size(ax: Axes, text: str, **style: object) -> tuple[float, float]:
    """Width and height in pixels of `text` drawn with `style`, plus a little room for its background."""
    probe = ax.text(0, 0, text, **style)  # type: ignore[arg-type]
    extent = probe.get_window_extent(ax.figure.canvas.get_renderer())  # type: ignore[attr-defined]
    probe.remove()
    return extent.width + 4, extent.height + 2


def place_labels(ax: Axes, labels: Sequence[Label], obstacles: Sequence[Obstacle]) -> None:
    """Annotate each label at a free spot near its anchor, in the order given (earlier labels get closer spots)."""
    bounds = axes_bounds(ax)
    taken = list(obstacles)
    pt_per_px = 72 / ax.figure.dpi
    anchors = [tuple(ax.transData.transform((label.x, label.y))) for label in labels]
    for label in labels:
        style = {"fontsize": label.size, "fontweight": "bold" if label.bold else "normal"}
        width, height = text_size(ax, label.text, **style)
        ax_, ay = ax.transData.transform((label.x, label.y))
        offsets = list(_candidates(width, height))
        boxes = [[centred_box(ax_ + dx, ay + dy, width, height)] for dx, dy, _ in offsets]
        i = choose(boxes, taken, bounds, lambda box: ambiguity(box, (ax_, ay), anchors))  # noqa: B023
        dx, dy, radius = offsets[i]
        taken.append((boxes[i][0], 1.0))
        leader = {"arrowstyle": "-", "color": "#9a9a9a", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}
        ax.annotate(label.text, (label.x, label.y), xytext=(dx * pt_per_px, dy * pt_per_px),
                    textcoords="offset points", ha="center", va="center", color=label.color, zorder=6,
                    bbox={"boxstyle": "square,pad=0.08", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
                    arrowprops=leader if radius > LEADER_FROM_PX else None, annotation_clip=False, **style)


def flat_label(ax: Axes, text: str, color: str, span: tuple[float, float], y: float, above: bool,
                taken: list[Obstacle]) -> None:
    """A label just above (or below) a horizontal roof, slid leftwards from its right end until it is free,
    then tried on the other side of the line."""
    width, height = text_size(ax, text, fontsize=8.5)
    left, right = (ax.transData.transform((x, y))[0] for x in span)
    line_y = ax.transData.transform((span[1], y))[1]
    xs = [right - 6 - width / 2 - 12 * k for k in range(int(max(right - left - width - 12, 0) / 12) + 1)]
    centres = [(x, line_y + (height / 2 + 3) * side) for side in ((1, -1) if above else (-1, 1)) for x in xs]
    boxes = [[centred_box(cx, cy, width, height)] for cx, cy in centres]
    i = choose(boxes, taken, axes_bounds(ax))
    taken.append((boxes[i][0], 1.0))
    x, y_data = ax.transData.inverted().transform(centres[i])
    ax.text(x, y_data, text, color=color, ha="center", va="center", fontsize=8.5, zorder=4)


def slope_label(ax: Axes, text: str, color: str, slope: float, span: tuple[float, float], above: bool,
                 taken: list[Obstacle]) -> None:
    """A label along the line y = slope·x (a memory roof), rotated to its on-screen angle, at the first free spot."""
    width, height = text_size(ax, text, fontsize=8.5)
    p0 = ax.transData.transform((span[0], span[0] * slope))
    p1 = ax.transData.transform((span[1], span[1] * slope))
    angle = math.degrees(math.atan2(p1[1] - p0[1], p1[0] - p0[0]))
    length = math.hypot(p1[0] - p0[0], p1[1] - p0[1])
    normal = (-math.sin(math.radians(angle)), math.cos(math.radians(angle)))
    shift = 3 if above else -(3 + height)
    starts = []
    for frac in (0.1, 0.16, 0.05, 0.22, 0.28, 0.34, 0.4, 0.46, 0.52, 0.58):
        if frac * length + width < length:
            t = frac * length
            starts.append((p0[0] + (p1[0] - p0[0]) * t / length + normal[0] * shift,
                           p0[1] + (p1[1] - p0[1]) * t / length + normal[1] * shift))
    starts = starts or [(p0[0] + normal[0] * shift, p0[1] + normal[1] * shift)]
    boxes = [rotated_boxes(x, y, angle, width, height) for x, y in starts]
    i = choose(boxes, taken, axes_bounds(ax))
    taken += [(box, 1.0) for box in boxes[i]]
    x, y = ax.transData.inverted().transform(starts[i])
    ax.text(x, y, text, color=color, rotation=angle, rotation_mode="anchor", ha="left", va="bottom",
            fontsize=8.5, zorder=4)
