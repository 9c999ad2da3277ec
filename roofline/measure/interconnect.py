"""The interconnect roof: bus bandwidth of all-reduce, all-gather and reduce-scatter across N ranks (NCCL-tests'
convention), measured by `roofline calibrate` on a machine of several GPUs (cached per device and N) or, when
none is cached, by every `profile --tp N` run at its start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from roofline import fmt, results
from roofline.analysis.placement import Roofs
from roofline.config import BlockConfig
from roofline.errors import RooflineError
from roofline.measure import ceilings
from roofline.measure.ranks import CollectiveTimer, from_rank0, launch, start_rank
from roofline.measure.variant import measure
from roofline.ops import comm
from roofline.ops.linear import out_bytes
from roofline.results import DeviceInfo, Settings

IN_RUN_BYTES = {"cuda": 256 << 20, "cpu": 1 << 20}  # all-reduce buffer for the roof when none is calibrated


def measure_collectives(info: DeviceInfo, size_bytes: int, dtype: str, names: tuple[str, ...],
                        budget_s: float) -> dict[str, dict[str, float]]:
    """In every rank: bus and algorithm bandwidth (bytes/s, NCCL-tests sense) of each collective over ~size_bytes."""
    n, d_model, element_bytes = dist.get_world_size(), 1024, out_bytes(BlockConfig(dtype=dtype))
    tokens = max(n, size_bytes // (d_model * element_bytes) // n * n)
    c = BlockConfig(name="collective", d_model=d_model, seq_len=tokens, dtype=dtype, tp=n)
    timer = CollectiveTimer(info.torch_device, info.cache_bytes)
    out = {}
    for index, name in enumerate(names):
        op = comm.COLLECTIVES[name]
        row = measure(op, op.variants[0], c, info, Roofs({}, 0.0, {}, 0.0), timer, Settings(budget_s), index)
        if row.status != "ok" or not row.time_median_s:
            raise RuntimeError(f"{name} could not be measured: {row.note}")
        size = comm.elements(c) * element_bytes
        out[name] = {"busbw": row.min_bytes / row.time_median_s, "algbw": size / row.time_median_s,
                     "size_bytes": size, "time_s": row.time_median_s}
    return out


def interconnect_path(info: DeviceInfo, n: int) -> Path:
    return ceilings.cache_dir() / f"{info.slug}-interconnect-x{n}-{ceilings.cache_key(info)}.json"


def interconnect_roof(info: DeviceInfo, dtype: str) -> tuple[float, str, dict[str, object]]:
    """In every rank: (all-reduce busbw, source, details): `calibrate_interconnect`'s cache, or measured now."""
    n = dist.get_world_size()
    path = interconnect_path(info, n)
    cached = from_rank0(lambda: json.loads(path.read_text()) if path.is_file() else None)
    if cached:
        return cached["collectives"]["all_reduce"]["busbw"], "measured by calibrate", cached
    link = {"ranks": n, "backend": dist.get_backend(),
            "collectives": measure_collectives(info, IN_RUN_BYTES[info.kind], dtype, ("all_reduce",), 0.3)}
    return link["collectives"]["all_reduce"]["busbw"], "measured in this run", link  # type: ignore[index]


def calibrate_rank(kind: str, size_bytes: int, budget_s: float) -> dict[str, object]:
    info = start_rank(kind)
    try:
        dtype = "bf16" if kind == "cuda" else "fp32"
        collectives = measure_collectives(info, size_bytes, dtype, tuple(comm.COLLECTIVES), budget_s)
        return {"device": info.name, "ranks": dist.get_world_size(), "backend": dist.get_backend(), "dtype": dtype,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "collectives": collectives}
    finally:
        dist.destroy_process_group()


def calibrate_interconnect(info: DeviceInfo, ranks: tuple[int, ...] | None = None, size_bytes: int = 1 << 30,
                           force: bool = False, budget_s: float = 0.5,
                           say: Callable[[str], None] = lambda m: None) -> dict[int, dict]:
    """Bus bandwidth of all-reduce, all-gather and reduce-scatter across n GPUs (n = 2, 4, 8… up to all visible;
    1 GiB buffers, NCCL), cached per device and n: the roof of `profile --tp n`'s collectives."""
    if ranks is None:
        count = torch.cuda.device_count() if info.kind == "cuda" else 2
        ranks = tuple(sorted({n for n in (2, 4, 8) if n <= count} | ({count} if count > 1 else set())))
    if not ranks or min(ranks) < 2 or (info.kind == "cuda" and max(ranks) > torch.cuda.device_count()):
        raise RooflineError(f"the interconnect needs 2 or more GPUs; {torch.cuda.device_count()} visible")
    found = {}
    for n in ranks:
        path = interconnect_path(info, n)
        if path.is_file() and not force:
            found[n] = json.loads(path.read_text())
        else:
            found[n] = launch(n, calibrate_rank, info.kind, size_bytes, budget_s)[0]
            results.atomic_write(path, json.dumps(found[n], indent=1))
        bw = {k: fmt.bandwidth(v["busbw"]) for k, v in found[n]["collectives"].items()}
        say(f"interconnect, {n} ranks: bus bandwidth " + ", ".join(f"{k} {v}" for k, v in bw.items()) + f" ({path})")
    return found
