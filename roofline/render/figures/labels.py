"""Point labels that never overlap: a greedy placement in display pixels, with no dependency beyond matplotlib.

Each label tries positions on rings of growing radius around its anchor, in several directions. A position is
free when its box covers no placed label and no marker and stays inside the axes; of the free ones it takes
the nearest, lines (roofs, fusion arrows, leaders) crossed and sitting nearer another point costing a little
more; when none is free, the one that covers least. A label pushed away from its point gets a thin leader line
back to it, and the leader too must not cross a label or a marker. Labels of points that sit on one another
merge ('ffn_up / ffn_down'). Call it after the axes limits and position are final: all is in display pixels.

What is taken lives in two occupancy maps of the figure (solid, lines) read through summed-area tables, so all
the candidate positions of a label, with their leaders, are scored at once in a few numpy operations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels

RADII_PX = (9, 14, 20, 30, 44, 62, 84, 110, 140, 175, 215)  # a marker and its margin reach 9 px
ANGLES_DEG = (0, 180, 20, -20, 160, -160, 40, -40, 140, -140, 90, -90, 65, -65, 115, -115)
LEADER_FROM_PX = 15  # a label farther than this from its point gets a leader line
LEADER_STEP_PX = 5
LINE_COST = 0.3  # per pixel of a line (roof, arrow, leader) under a label, against 1 for a label or a marker
OUTSIDE_COST = 20.0  # per pixel of label outside the axes
LEADER_COST = 3.0  # a leader line crossing something: × the covered pixels of its small boxes
AMBIGUOUS_COST = 150.0  # a label nearer another point than its own reads as naming that one (a leader helps)
HARD_WEIGHT = 10.0  # when nothing is free: a pixel of label covered outweighs ten of soft cost
RING_COST = 10.0  # each ring farther from the point: a nearby spot across a line beats a far one with a leader
CELL_PX = 2  # resolution of the occupancy maps
COINCIDENT_PX = 6  # points closer than this hide each other: one label names them all
ROOF_FONT_SIZE = 8.5


@dataclass(frozen=True)
class Label:
    x: float  # anchor, data coordinates
    y: float
    text: str
    color: str = "#222222"
    bold: bool = False
    size: float = 7.5
    angles: tuple[int, ...] = ANGLES_DEG  # directions to try, in order of preference


class Obstacles:
    """What the figure already shows, as two occupancy maps of its pixels (in cells of CELL_PX): solid (labels,
    markers: never to be covered) and lines (roofs, arrows, leaders: may be crossed). How much of a box is taken
    is read from a summed-area table in four lookups, so scoring thousands of candidate boxes is cheap."""

    def __init__(self, width_px: float, height_px: float) -> None:
        shape = (math.ceil(height_px / CELL_PX) + 1, math.ceil(width_px / CELL_PX) + 1)
        self._maps = {False: np.zeros(shape, dtype=bool), True: np.zeros(shape, dtype=bool)}
        self._tables: dict[bool, np.ndarray] = {}

    def add(self, boxes: np.ndarray | Sequence[Box], line: bool = False) -> None:
        taken = self._maps[line]
        for x0, y0, x1, y1 in self._cells(np.asarray(boxes, dtype=float).reshape(-1, 4)):
            taken[y0:y1, x0:x1] = True
        self._tables.pop(line, None)

    def covered(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of solid obstacles and of lines under each of `boxes` (n × 4): two arrays of n."""
        x0, y0, x1, y1 = self._cells(boxes).T
        solid, lines = (self._table(line) for line in (False, True))
        return tuple((t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]) * CELL_PX ** 2  # type: ignore[return-value]
                     for t in (solid, lines))

    def _cells(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in whole cells (to the nearest cell edge), clipped to the figure."""
        rows, cols = self._maps[False].shape
        cells = np.round(boxes / CELL_PX).astype(int)
        return np.clip(cells, 0, [cols, rows, cols, rows])

    def _table(self, line: bool) -> np.ndarray:
        """Summed-area table of one map: t[y, x] = taken cells below and left of (x, y)."""
        if line not in self._tables:
            taken = self._maps[line]
            table = np.zeros((taken.shape[0] + 1, taken.shape[1] + 1), dtype=np.int32)
            table[1:, 1:] = taken.cumsum(axis=0, dtype=np.int32).cumsum(axis=1)
            self._tables[line] = table
        return self._tables[line]


def point_obstacles(ax: Axes, points: Sequence[tuple[float, float]], marker_area: float) -> np.ndarray:
    """A square box per marker (scatter size in points²), with a margin so no label touches a marker and reads
    as naming it."""
    half = math.sqrt(marker_area) / 2 * ax.figure.dpi / 72 + 3
    xy = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    return np.hstack([xy - half, xy + half])


def line_obstacles(ax: Axes, paths: Sequence[Sequence[tuple[float, float]]], step_px: float = 5,
                   half_px: float = 2) -> np.ndarray:
    """Small boxes every few pixels along each polyline (data coordinates)."""
    out = [np.empty((0, 4))]
    for path in paths:
        pts = ax.transData.transform(np.asarray(path, dtype=float))
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            n = max(1, int(np.hypot(*(p1 - p0)) / step_px))
            xy = p0 + np.linspace(0, 1, n + 1)[:, None] * (p1 - p0)
            out.append(np.hstack([xy - half_px, xy + half_px]))
    return np.vstack(out)


def axes_bounds(ax: Axes) -> Box:
    frame = ax.get_window_extent()
    return frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2


def outside(boxes: np.ndarray, bounds: Box) -> np.ndarray:
    """Pixels of each box outside `bounds`."""
    w = np.clip(np.minimum(boxes[:, 2], bounds[2]) - np.maximum(boxes[:, 0], bounds[0]), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], bounds[3]) - np.maximum(boxes[:, 1], bounds[1]), 0, None)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - w * h


def choose(hard: np.ndarray, soft: np.ndarray, penalty: np.ndarray) -> int:
    """Among the candidates that cover no label or marker and stay inside (hard = 0), the one with the least
    soft cost (lines crossed, ambiguity) + penalty (the farther, the dearer); when every one collides, the one
    that covers least, soft cost and penalty breaking near-ties."""
    score = soft + penalty
    free = hard <= 0
    return int(np.argmin(np.where(free, score, np.inf)) if free.any() else np.argmin(HARD_WEIGHT * hard + score))


def text_size(ax: Axes, text: str, size: float, bold: bool = False) -> tuple[float, float]:
    """Width and height in pixels of one line of `text`, plus a little room for its background. Asks the
    renderer for the font metrics directly (no Text artist is made), as matplotlib's Text lays out one line."""
    from matplotlib.font_manager import FontProperties

    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    width, _, _ = renderer.get_text_width_height_descent(text, prop, ismath=False)
    _, line_height, _ = renderer.get_text_width_height_descent("lp", prop, ismath=False)
    return width + 8, line_height + 3


def _leaders(anchor: np.ndarray, boxes: np.ndarray, skip_px: float = 12) -> tuple[np.ndarray, np.ndarray]:
    """Small boxes along each box's leader line, from the anchor (past its marker) to the box's centre, stopping
    at the box; returns (the small boxes, the index of the box each belongs to)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    length = np.hypot(*(centres - anchor).T)
    steps = np.arange(int(skip_px / LEADER_STEP_PX) + 1, int(length.max() / LEADER_STEP_PX) + 1) * LEADER_STEP_PX
    t = steps[None, :] / np.maximum(length[:, None], 1e-9)
    xy = anchor + t[..., None] * (centres - anchor)[:, None, :]  # boxes × steps × 2
    inside = ((xy[..., 0] >= boxes[:, None, 0]) & (xy[..., 0] <= boxes[:, None, 2])
              & (xy[..., 1] >= boxes[:, None, 1]) & (xy[..., 1] <= boxes[:, None, 3]))
    keep = (t < 1) & ~inside
    owner = np.broadcast_to(np.arange(len(boxes))[:, None], keep.shape)[keep]
    points = xy[keep]
    return np.hstack([points - 1.5, points + 1.5]), owner


def place_labels(ax: Axes, labels: Sequence[Label], taken: Obstacles) -> None:
    """Annotate each label at a free spot near its anchor, in the order given (earlier labels get closer spots);
    the placed boxes and leaders are added to `taken`."""
    bounds = axes_bounds(ax)
    pt_per_px = 72 / ax.figure.dpi
    labels = _merge_coincident(ax, labels)
    anchors = ax.transData.transform(np.array([(label.x, label.y) for label in labels], dtype=float).reshape(-1, 2))
    for k, label in enumerate(labels):
        width, height = text_size(ax, label.text, label.size, label.bold)
        anchor = anchors[k]
        radii = np.repeat(RADII_PX, len(label.angles)).astype(float)
        angles = np.radians(np.tile(label.angles, len(RADII_PX)))
        offsets = np.column_stack([np.cos(angles) * (radii + width / 2), np.sin(angles) * (radii + height / 2)])
        centres = anchor + offsets
        boxes = np.hstack([centres - (width / 2, height / 2), centres + (width / 2, height / 2)])
        solid, lines = taken.covered(boxes)
        hard = solid + OUTSIDE_COST * outside(boxes, bounds)
        soft = LINE_COST * lines + AMBIGUOUS_COST * _ambiguous(boxes, anchor, np.delete(anchors, k, axis=0))
        needs = radii > LEADER_FROM_PX
        if needs.any():
            leaders, owner = _leaders(anchor, boxes[needs])
            solid, lines = taken.covered(leaders)
            hard[needs] += LEADER_COST * np.bincount(owner, solid, minlength=int(needs.sum()))
            soft[needs] += LEADER_COST * LINE_COST * np.bincount(owner, lines, minlength=int(needs.sum()))
        rings = np.repeat(np.arange(len(RADII_PX)), len(label.angles))
        i = choose(hard, soft, RING_COST * rings + 0.5 * np.tile(np.arange(len(label.angles)), len(RADII_PX)))
        taken.add(boxes[i])
        if needs[i]:
            taken.add(_leaders(anchor, boxes[i:i + 1])[0], line=True)
        dx, dy = offsets[i]
        leader = {"arrowstyle": "-", "color": "#9a9a9a", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3}
        ax.annotate(label.text, (label.x, label.y), xytext=(dx * pt_per_px, dy * pt_per_px),
                    textcoords="offset points", ha="center", va="center", color=label.color, zorder=6,
                    fontsize=label.size, fontweight="bold" if label.bold else "normal",
                    bbox={"boxstyle": "square,pad=0.08", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
                    arrowprops=leader if needs[i] else None, annotation_clip=False)


def _merge_coincident(ax: Axes, labels: Sequence[Label]) -> list[Label]:
    """One label 'a / b / c' for points that sit on one another (chains of points closer than COINCIDENT_PX)
    with labels of the same style: ffn_up and ffn_down, at one intensity and within a few % of one FLOP/s, show
    as one marker."""
    xy = ax.transData.transform(np.array([(label.x, label.y) for label in labels], dtype=float).reshape(-1, 2))
    group = list(range(len(labels)))
    for k, label in enumerate(labels):
        for j in range(k):
            style = (labels[j].color, labels[j].bold, labels[j].size) == (label.color, label.bold, label.size)
            if style and np.hypot(*(xy[j] - xy[k])) < COINCIDENT_PX:
                old, new = group[k], group[j]
                group = [new if g == old else g for g in group]
    merged: dict[int, Label] = {}
    for k, label in enumerate(labels):
        first = merged.get(group[k])
        merged[group[k]] = dataclasses.replace(first, text=f"{first.text} / {label.text}") if first else label
    return list(merged.values())


def _distance(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixels from each box (n × 4) to each point (m × 2): n × m."""
    dx = np.maximum(np.maximum(boxes[:, None, 0] - points[None, :, 0], 0), points[None, :, 0] - boxes[:, None, 2])
    dy = np.maximum(np.maximum(boxes[:, None, 1] - points[None, :, 1], 0), points[None, :, 1] - boxes[:, None, 3])
    return np.hypot(dx, dy)


def _ambiguous(boxes: np.ndarray, own: np.ndarray, others: np.ndarray) -> np.ndarray:
    """1 where a candidate box lies nearer another anchor than its own one, else 0."""
    if not len(others):
        return np.zeros(len(boxes))
    mine = _distance(boxes, own[None, :])[:, 0]
    return (_distance(boxes, others).min(axis=1) < mine).astype(float)


def flat_label(ax: Axes, text: str, color: str, span: tuple[float, float], y_above: float, y_below: float,
               taken: Obstacles) -> None:
    """A label just above the line at y_above (or, failing that, just below the line at y_below), slid leftwards
    from the span's right end until it is free."""
    width, height = text_size(ax, text, ROOF_FONT_SIZE)
    left, right = (ax.transData.transform((x, y_above))[0] for x in span)
    xs = right - 6 - width / 2 - 12 * np.arange(int(max(right - left - width - 12, 0) / 12) + 1)
    above = ax.transData.transform((span[1], y_above))[1] + height / 2 + 3
    below = ax.transData.transform((span[1], y_below))[1] - height / 2 - 3
    centres = np.array([(x, y) for y in (above, below) for x in xs])
    boxes = np.hstack([centres - (width / 2, height / 2), centres + (width / 2, height / 2)])
    solid, lines = taken.covered(boxes)
    i = choose(solid + OUTSIDE_COST * outside(boxes, axes_bounds(ax)), LINE_COST * lines, 0.5 * np.arange(len(boxes)))
    taken.add(boxes[i])
    x, y_data = ax.transData.inverted().transform(centres[i])
    ax.text(x, y_data, text, color=color, ha="center", va="center", fontsize=ROOF_FONT_SIZE, zorder=4)


def _rotated_boxes(x: float, y: float, angle_deg: float, width: float, height: float, rows: int = 3) -> np.ndarray:
    """Small squares tiling a text box rotated by angle_deg about its lower-left corner (x, y): `rows` rows of
    squares of side height / rows, so they follow the box closely at any angle."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    side = height / rows
    along = (np.arange(max(1, math.ceil(width / side))) + 0.5) * side
    across = (np.arange(rows) + 0.5) * side
    u, v = np.meshgrid(along, across)
    cx, cy = (x + c * u - s * v).ravel(), (y + s * u + c * v).ravel()
    return np.column_stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def slope_label(ax: Axes, text: str, color: str, slopes: tuple[float, float], span: tuple[float, float],
                taken: Obstacles) -> None:
    """A label along the memory roofs y = slope·x, rotated to their on-screen angle, at the first free spot just
    above the line of slopes[0], else a little higher (nothing measured sits above a memory roof, only other
    labels), else just below the line of slopes[1]; of the free spots, the one farthest from markers and labels
    (memory-bound ops crowd the memory roof), so that their labels keep the room next to them."""
    width, height = text_size(ax, text, ROOF_FONT_SIZE)
    starts = []
    for slope, shift in ((slopes[0], 3), (slopes[0], 3 + height), (slopes[0], 3 + 2 * height),
                         (slopes[1], -(3 + height))):
        p0 = ax.transData.transform((span[0], span[0] * slope))
        p1 = ax.transData.transform((span[1], span[1] * slope))
        angle = math.degrees(math.atan2(p1[1] - p0[1], p1[0] - p0[0]))
        length = math.hypot(p1[0] - p0[0], p1[1] - p0[1])
        normal = np.array((-math.sin(math.radians(angle)), math.cos(math.radians(angle))))
        fracs = [f for f in np.arange(0.02, 1, 0.02) if f * length + width < length] or [0]
        starts += [p0 + (p1 - p0) * f + normal * shift for f in fracs]
    # The roofs are parallel on a log-log plot: one angle for all.
    candidates = np.stack([_rotated_boxes(x, y, angle, width, height) for x, y in starts])  # n × squares × 4
    flat = candidates.reshape(-1, 4)
    solid, lines = (c.reshape(len(starts), -1).sum(axis=1) for c in taken.covered(flat))
    near, _ = (c.reshape(len(starts), -1).sum(axis=1) for c in taken.covered(flat + (-24, -24, 24, 24)))
    off = outside(flat, axes_bounds(ax)).reshape(len(starts), -1).sum(axis=1)
    i = choose(solid + OUTSIDE_COST * off, LINE_COST * lines + near, 0.5 * np.arange(len(starts)))
    taken.add(candidates[i])
    x, y = ax.transData.inverted().transform(starts[i])
    ax.text(x, y, text, color=color, rotation=angle, rotation_mode="anchor", ha="left", va="bottom",
            fontsize=ROOF_FONT_SIZE, zorder=4)
