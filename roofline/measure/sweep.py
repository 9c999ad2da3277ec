"""`roofline sweep`'s measuring: every (dtype, N) of a grid, the attention variants and (with --block) the rest of
the block at each N, in one session and one results.json (run.sweep records the grid).

Naive attention writes the [b, h, N, N] scores to memory: at some N it no longer fits. variant.py predicts each
variant's bytes (inputs, outputs and declared scratch) and skips it with a note before allocating anything;
`predicted_skips` lists those predictions up front. analysis/sweep.py fits the slopes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from roofline.config import BlockConfig, make_config
from roofline.errors import RooflineError
from roofline.measure.session import Session
from roofline.measure.variant import predicted_bytes
from roofline.ops import Op, Variant, get_op, plan


@dataclass
class SweepPoint:
    """One (dtype, N) of the sweep and the (op, variant) pairs to measure there."""

    config: BlockConfig
    items: list[tuple[Op, Variant]]


@dataclass(frozen=True)
class PredictedSkip:
    """A variant variant.measure will skip at this N because its predicted bytes exceed the free memory."""

    op: str
    variant: str
    seq_len: int
    dtype: str
    need_bytes: int


def plan_sweep(model: str, seq_lens: list[int], dtypes: list[str], batch: int = 1,
               variants: list[str] | None = None, block: bool = True) -> list[SweepPoint]:
    """Every (dtype, N): the attention variants (all, or `variants`), plus every other op of the block if `block`."""
    known = [v.name for v in get_op("attention").variants]
    unknown = [v for v in variants or [] if v not in known]
    if unknown:
        raise RooflineError(f"unknown attention variant '{unknown[0]}' (known: {', '.join(known)})")
    points = []
    for dtype in dtypes:
        for n in seq_lens:
            c = make_config(model, seq_len=n, batch=batch, dtype=dtype)
            items = [(op, v) for op, v in plan(c, None if block else ["attention"])
                     if op.name != "attention" or not variants or v.name in variants]
            points.append(SweepPoint(c, items))
    return points


def predicted_skips(points: list[SweepPoint], free_bytes: int) -> list[PredictedSkip]:
    """What variant.measure will skip as not fitting: the same predicted_bytes against the same free memory."""
    return [PredictedSkip(op.name, v.name, p.config.seq_len, p.config.dtype, need)
            for p in points for op, v in p.items if (need := predicted_bytes(op, v, p.config)) > free_bytes]


def run_sweep(session: Session, points: list[SweepPoint],
              announce: Callable[[BlockConfig], None] = lambda c: None) -> None:
    """Measure every point in turn, into one session (variant.measure does the memory check and the skipping)."""
    for p in points:
        announce(p.config)
        session.measure(p.items, p.config)
