"""Several ranks: `roofline profile --tp N`, `--dp N`, `--pp N` and their products run tp·dp·pp ranks, each
profiling its part of the model; rank 0 merges their rows.

- TP: each rank its Megatron shard of the block (split.py is the split as code, BlockConfig.shard its shapes) and
  the all-reduces after the row-parallel projections, ops of their own (ops/comm.py), each after the projection
  it sums (ops.plan);
- DP (train): each rank a whole replica, plus the all-reduce of the block's weight gradients;
- PP: each rank a stage of layers/pp blocks. Its rows are one block's ops (every layer of every stage is the same
  block) plus the stage boundary's send/recv; then the pipeline itself is measured (pipeline.py).

Ranks are laid out TP fastest, then DP, then PP (groups.py); each collective runs on its axis's group, timed by
`CollectiveTimer` over that group, and is placed on that group's roof (interconnect.link_roofs: cached by
`calibrate` for a group within one node, else measured at the start of the run). The ranks are local processes the
tool starts with torch elastic (`launch`, what `torchrun --standalone` does), one per GPU with NCCL (NVLink
multicast off) or N CPU processes with gloo; or the world an external launcher started (torchrun on several nodes,
SLURM), which each process joins (`join_world`). After each op rank 0 gathers the ranks' rows and saves one
results.json: per op and variant, first the max over ranks (rank None: a step waits for its slowest rank), then
each rank's row. `roofline tp-scaling BASE TP` (analysis/scaling.py) compares a TP=N run with the TP=1 run.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from roofline import fmt, results
from roofline.analysis.placement import Roofs
from roofline.config import BlockConfig
from roofline.errors import CannotRun, RooflineError
from roofline.measure import session
from roofline.measure.groups import make_axes
from roofline.measure.interconnect import link_roofs
from roofline.measure.pipeline import measure_pipeline
from roofline.measure.ranks import (
    CollectiveTimer,
    external_world,
    from_rank0,
    launch,
    rank_threads,
    rank_timeout,
    start_rank,
)
from roofline.measure.split import block_forward, shard_weights
from roofline.measure.timer import Timer
from roofline.measure.variant import measure
from roofline.ops import comm, plan
from roofline.results import Ceilings, DeviceInfo, Parallel, Results, Row, Settings

__all__ = ["RankJob", "block_forward", "join_world", "merge", "profile_rank", "profile_ranks", "shard_weights"]

# --- profile --tp/--dp/--pp ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankJob:
    """What every rank of `profile --tp/--dp/--pp` needs (picklable: it travels to the spawned ranks). roofs None:
    rank 0 finds them once the world is up (an external launcher's ranks start without a parent to find them)."""

    config: BlockConfig  # the shard
    kind: str  # "cuda" | "cpu"
    only: list[str] | None
    variants: list[str] | None
    settings: Settings
    out_dir: Path
    argv: list[str]
    roofs: Roofs | None
    measured: Ceilings | None
    calibrate: bool = False


def label(c: BlockConfig) -> str:
    """'TP=2', 'DP=2 PP=2': a run's parallel axes of more than one rank."""
    return " ".join(f"{name.upper()}={getattr(c, name)}" for name in ("tp", "dp", "pp") if getattr(c, name) > 1)


def profile_ranks(shard: BlockConfig, dev: DeviceInfo, only: list[str] | None, variants: list[str] | None,
                  out_dir: Path, argv: list[str], settings: Settings, calibrate: bool,
                  listener: session.Listener) -> Results:
    """`roofline profile --tp/--dp/--pp`: launch tp·dp·pp ranks here, one per GPU (or CPU process), each profiling its
    part; rank 0 saves the merged rows after every op. Returns every row: per (op, variant) the max over ranks, then
    each rank's."""
    t_start = time.perf_counter()
    ranks = shard.ranks
    if dev.kind == "cuda" and torch.cuda.device_count() < ranks:
        raise RooflineError(f"{label(shard)} needs {ranks} GPUs; {torch.cuda.device_count()} visible")
    roofs, measured = rank_roofs(dev, ranks, calibrate, shard, listener)
    listener.info(f"Launching {ranks} ranks ({'NCCL' if dev.kind == 'cuda' else 'gloo'}), {describe(shard)}")
    launch(ranks, profile_rank, RankJob(shard, dev.kind, only, variants, settings, out_dir, argv, roofs, measured))
    return finish(out_dir, t_start)


def join_world(shard: BlockConfig, dev: DeviceInfo, only: list[str] | None, variants: list[str] | None,
               out_dir: Path, argv: list[str], settings: Settings, calibrate: bool) -> Results | None:
    """`roofline profile` started by an external launcher (torchrun, SLURM) as one rank of its world: join it and
    profile this rank's part. Rank 0 writes the merged results and returns them; the other ranks return None."""
    t_start = time.perf_counter()
    rank, world = external_world() or (0, 1)
    if world != shard.ranks:
        raise RooflineError(f"the launcher started {world} ranks but {label(shard) or 'one device'} needs "
                            f"tp·dp·pp = {shard.ranks}: set --tp/--dp/--pp to multiply to the world size")
    job = RankJob(shard, dev.kind, only, variants, settings, out_dir, argv, None, None, calibrate)
    try:
        profile_rank(job)
    except RuntimeError as exc:
        raise CannotRun(str(exc).splitlines()[0] + (f" (rows measured so far: {out_dir}/results.json)"
                                                    if rank == 0 else "")) from None
    return finish(out_dir, t_start) if rank == 0 else None


def finish(out_dir: Path, t_start: float) -> Results:
    res = results.load(out_dir)
    res.run.wall_s = time.perf_counter() - t_start
    results.save(res, out_dir)
    if not res.ok_rows():
        raise CannotRun(f"no op could be measured (see the notes in {out_dir}/results.json)")
    return res


def describe(c: BlockConfig) -> str:
    parts = [f"1/{c.tp} of each block" if c.tp > 1 else "whole blocks"]
    if c.pp > 1:
        parts.append(f"a stage of {c.stage_layers} of {c.layers} layers, {c.microbatches} microbatches a step")
    if c.dp > 1:
        parts.append(f"{c.dp} replicas")
    return "each rank profiling " + ", ".join(parts)


def rank_roofs(dev: DeviceInfo, ranks: int, calibrate: bool, shard: BlockConfig,
               listener: session.Listener) -> tuple[Roofs, Ceilings | None]:
    """The roofs every rank places its rows against, found before the ranks start: no rank waits at a collective
    while another calibrates. CPU ranks measure with their share of the cores, so the roofs are measured so too."""
    if dev.kind != "cpu":
        return session.load_roofs(dev, calibrate, listener, shard)
    previous = torch.get_num_threads()
    torch.set_num_threads(rank_threads(ranks))
    try:
        rank_dev = dataclasses.replace(dev, cpu_threads=torch.get_num_threads())
        return session.load_roofs(rank_dev, calibrate, listener, shard)
    finally:
        torch.set_num_threads(previous)


def _links(roofs: Roofs, info: DeviceInfo, c: BlockConfig, say: Callable[[str], None]) -> dict[str, dict]:
    """Each axis's roof over this rank's group, into `roofs`; their details, by axis."""
    found = link_roofs(info, c.dtype)
    what = {"tp": "TP all-reduce bus bandwidth", "dp": "DP all-reduce bus bandwidth", "pp": "PP send/recv bandwidth"}
    fields = {"tp": "interconnect", "dp": "dp", "pp": "p2p"}
    for name, (bandwidth, source, _) in found.items():
        setattr(roofs, f"{fields[name]}_bandwidth", bandwidth)
        setattr(roofs, f"{fields[name]}_source", source)
        say(f"interconnect roof: {what[name]} {fmt.bandwidth(bandwidth)} ({source})")
    return {name: link for name, (_, _, link) in found.items()}


def profile_rank(job: RankJob) -> None:
    """One rank: measure every op of its part; rank 0 merges the ranks' rows and saves after each op. Then, with
    --pp, the pipeline itself (pipeline.py), saved into the run's record."""
    info = start_rank(job.kind)
    rank, n, c = dist.get_rank(), dist.get_world_size(), job.config
    say = (lambda m: print(f"[{label(c)}] {m}", file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    step = "the process groups"
    try:
        make_axes(c.tp, c.dp, c.pp)
        step = "the roofs"
        found = (job.roofs, job.measured) if job.roofs else from_rank0(
            lambda: session.load_roofs(info, job.calibrate, session.Listener(), c))
        roofs = dataclasses.replace(found[0])
        step = "the interconnect roofs"
        links = _links(roofs, info, c, say)
        run = session.start(info, c, job.out_dir, job.argv, job.settings, roofs=(roofs, found[1]))
        first = next(iter(links.values()), {})
        run.results.run.parallel = Parallel(c.tp, c.dp, n, dist.get_backend(), first, c.pp, links)
        plain = Timer(info.torch_device, info.cache_bytes, info.max_sm_clock_mhz or 0)
        timers = {name: CollectiveTimer(info.torch_device, info.cache_bytes, comm.axis(name).group)
                  for name in ("tp", "dp", "pp")}
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = c.dtype == "tf32"
        for index, (op, variant) in enumerate(plan(c, job.only, job.variants)):
            step = f"{op.name} · {variant.name}"
            timer = timers[comm.axis_of(op)] if op.unit == "comm" else plain
            row = measure(op, variant, c, info, run.roofs, timer, job.settings, index)
            row.rank = rank
            gathered: list[Row] | None = [None] * n if rank == 0 else None  # type: ignore[list-item]
            dist.gather_object(row, gathered, dst=0)
            if gathered:
                run.add(merge(gathered))
                top = run.results.rows[-n - 1]
                say(f"{op.name} · {variant.name}: " + (fmt.seconds(top.time_median_s) if top.status == "ok"
                                                         else f"{top.status}: {top.note}"))
        if c.pp > 1:
            step = "the pipeline step"
            pipe = measure_pipeline(c, info, job.settings, say)
            if pipe is not None:
                p2p = run.results.find("p2p_activation")
                if p2p and p2p.time_median_s:  # the row times both ways in train mode
                    pipe.transfer_s = p2p.time_median_s / (2 if c.mode == "train" else 1)
                else:
                    pipe.note = "no p2p_activation row (--ops): the model counts no transfer time"
                run.results.run.parallel.pipeline = pipe
                run.add([])
                say(f"pipeline step of {c.microbatches} microbatches: {fmt.seconds(pipe.step_s)}")
    except Exception as exc:
        raise RuntimeError(failure(exc, rank, step)) from None
    finally:
        comm.set_axes({})
        dist.destroy_process_group()


def failure(exc: Exception, rank: int, step: str) -> str:
    """One line for a rank that failed: which rank, where, and why; a lost or late peer said as such."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # gloo's "[.../pair.cc:537] " source location
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return (f"rank {rank} waited {rank_timeout().total_seconds():.0f} s for the other ranks at {step}: one of "
                "them died, hangs or is far slower (ROOFLINE_RANK_TIMEOUT_S sets the wait)")
    if any(word in text.lower() for word in ("connection closed", "connection reset", "broken pipe", "peer")):
        return f"rank {rank} lost a peer at {step}: another rank died or was killed ({text[:100]})"
    return f"rank {rank} failed at {step}: {type(exc).__name__}: {text[:200]}"


def merge(rows: list[Row]) -> list[Row]:
    """[max over ranks, then each rank's row] for one (op, variant) measured on every rank (in rank order).

    The max row is the slowest rank's, with rank None and a note; a rank that failed or skipped makes it
    failed or skipped, with that rank's note (prefixed with the rank unless every rank says the same). It
    comes first, so readers that take the first row of an op (fusion, compare, Results.find) read the max.
    Its peak memory is the largest rank's.
    """
    bad = [r for r in rows if r.status != "ok"]
    if bad:
        pick = next((r for r in bad if r.status == "failed"), bad[0])
        same = all((r.status, r.note) == (pick.status, pick.note) for r in rows)
        note = pick.note if same else f"rank {pick.rank}: {pick.note}"
    else:
        pick = max(rows, key=lambda r: r.time_median_s or 0.0)
        note = f"max over {len(rows)} ranks (slowest: rank {pick.rank})"
    mems = [r.peak_mem_bytes for r in rows if r.peak_mem_bytes is not None]
    return [dataclasses.replace(pick, rank=None, note=note, peak_mem_bytes=max(mems) if mems else None), *rows]
