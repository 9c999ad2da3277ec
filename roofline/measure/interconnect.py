"""The interconnect roofs: bus bandwidth of all-reduce, all-gather and reduce-scatter across N ranks (NCCL-tests'
convention) and the point-to-point bandwidth of a pipeline's send/recv (each rank sends to the next of N ranks in a
chain, as stages do), measured by `roofline calibrate` on a machine of several GPUs (cached per device and N) or,
when none is cached, by every `profile --tp/--dp/--pp` run at its start: each axis's roof over its own group (TP
all-reduce, DP all-reduce, PP send/recv). A cached roof is used only for a group within one node, where calibrate
measured it; a group that spans nodes measures its own.
"""

from __future__ import annotations

import contextlib
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
from roofline.measure.groups import one_node
from roofline.measure.ranks import CollectiveTimer, from_rank0, launch, start_rank
from roofline.measure.variant import measure
from roofline.ops import comm
from roofline.ops.linear import out_bytes
from roofline.results import DeviceInfo, Settings

IN_RUN_BYTES = {"cuda": 256 << 20, "cpu": 1 << 20}  # buffer of an axis's roof when none is calibrated
ROOF_OF = {"tp": "all_reduce", "dp": "all_reduce", "pp": "p2p"}  # what each axis's roof measures


def measure_collectives(info: DeviceInfo, size_bytes: int, dtype: str, names: tuple[str, ...],
                        budget_s: float) -> dict[str, dict[str, float]]:
    """In every rank of the groups: bus and algorithm bandwidth (bytes/s, NCCL-tests sense) of each collective over
    ~size_bytes, on its axis's group (comm.axis: the world unless groups are set; "p2p" on the PP axis)."""
    d_model, element_bytes = 1024, out_bytes(BlockConfig(dtype=dtype))
    out = {}
    for index, name in enumerate(names):
        op, group = comm.COLLECTIVES[name], comm.axis("pp" if name == "p2p" else "tp")
        n = group.size
        tokens = max(n, size_bytes // (d_model * element_bytes) // n * n)
        c = BlockConfig(name="collective", d_model=d_model, seq_len=tokens, dtype=dtype)
        c = c.replace(pp=n, layers=n, microbatches=1) if name == "p2p" else c.replace(tp=n)
        timer = CollectiveTimer(info.torch_device, info.cache_bytes, group.group)
        row = measure(op, op.variants[0], c, info, Roofs({}, 0.0, {}, 0.0), timer, Settings(budget_s), index)
        if row.status != "ok" or not row.time_median_s:
            raise RuntimeError(f"{name} could not be measured: {row.note}")
        size = comm.elements(c) * element_bytes
        out[name] = {"busbw": row.min_bytes / row.time_median_s, "algbw": size / row.time_median_s,
                     "size_bytes": size, "time_s": row.time_median_s}
    return out


def interconnect_path(info: DeviceInfo, n: int) -> Path:
    return ceilings.cache_dir() / f"{info.slug}-interconnect-x{n}-{ceilings.cache_key(info)}.json"


def link_roofs(info: DeviceInfo, dtype: str) -> dict[str, tuple[float, str, dict[str, object]]]:
    """In every rank: per axis of 2 or more ranks ("tp", "dp", "pp"), (bandwidth, source, details) of this rank's
    group: its all-reduce bus bandwidth (TP, DP) or send/recv bandwidth (PP), from `calibrate_interconnect`'s cache
    for a group within one node, or else measured now on the group (the groups of one axis measure side by side,
    as their collectives will run)."""
    out = {}
    for name in ("tp", "dp", "pp"):
        group, what = comm.axis(name), ROOF_OF[name]
        if group.size < 2:
            continue
        path = interconnect_path(info, group.size)
        cached = from_rank0(lambda path=path: json.loads(path.read_text()) if path.is_file() else None)  # every rank
        if cached and what in cached["collectives"] and one_node(group.ranks):
            out[name] = (cached["collectives"][what]["busbw"], "measured by calibrate", cached)
            continue
        with comm.axes_bound(tp=group) if name == "dp" else contextlib.nullcontext():
            found = measure_collectives(info, IN_RUN_BYTES[info.kind], dtype, (what,), 0.3)
        link = {"ranks": group.size, "backend": dist.get_backend(), "collectives": found}
        out[name] = (found[what]["busbw"], "measured in this run", link)
    return out


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
    1 GiB buffers, NCCL) and the send/recv bandwidth of a chain of n, cached per device and n: the roofs of
    `profile --tp n`'s collectives and `--pp n`'s stage boundaries."""
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
