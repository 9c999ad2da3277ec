"""`roofline devices` and `roofline calibrate`: what was detected, and this device's measured roofs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import info, stdout, warn
from roofline.cli.options import writable_dir


def devices(device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None) -> None:
    """What was detected: name, SMs, memory, clocks, datasheet peaks and measured roofs side by side."""
    from roofline.measure import ceilings
    from roofline.measure.device import detect
    from roofline.render.catalog import device_table, roofs_table

    dev = detect(device)
    stdout.print(device_table(dev))
    measured = ceilings.load_cached(dev, warn)
    stdout.print(roofs_table(dev, measured))
    if not measured:
        info("No measured roofs cached for this device: run `roofline calibrate`.")
    for w in dev.warnings:
        warn(w)


def calibrate(
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Measure again even when cached.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write ceilings.json into this folder.")] = None,
) -> None:
    """Measure this device's roofs (bandwidths, GEMM FLOP/s per dtype) once; cached per device."""
    import torch

    from roofline.measure import ceilings
    from roofline.measure.device import detect

    dev = detect(device)
    t0 = time.perf_counter()
    measured, cached = ceilings.get_ceilings(dev, force=force, warn=warn, say=lambda m: info(f"  calibrating: {m}"))
    info(f"{'Cached' if cached else 'Measured'} roofs of {dev.name} in {time.perf_counter() - t0:.1f} s "
         f"({ceilings.cache_path(dev)})")
    if out:
        ceilings.save(measured, writable_dir(out) / "ceilings.json")
    if dev.kind == "cuda" and torch.cuda.device_count() > 1:  # the interconnect roofs of `profile --tp/--dp/--pp`
        from roofline.measure.interconnect import calibrate_interconnect

        calibrate_interconnect(dev, force=force, say=info)
    devices(device)
