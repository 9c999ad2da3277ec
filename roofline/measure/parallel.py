"""Tensor parallelism: `roofline profile --tp N` runs N ranks, each profiling its Megatron shard of the block.

The split (Shoeybi et al. 2019, "Megatron-LM", §3): QKV and FFN-up are column-parallel (each rank computes
its heads and its 1/N of the FFN columns), the output projection and FFN-down row-parallel (each rank's
partial [tokens, d_model] product), and an all-reduce after each sums the partials; norms, dropout and
residual adds are replicated. `block_forward` is that split as code (tests check it equals the unsharded
block), BlockConfig.shard gives one rank's shapes, ops/comm.py the two all-reduces, and ops.plan(shard)
the shard's ops in block order, each all-reduce after the projection it sums.

Ranks are local processes started with torch elastic (`launch`, what `torchrun --standalone` does): one per
GPU with NCCL (NVLink multicast off: NCCL_NVLS_ENABLE=0 in every rank), or N CPU processes with gloo. Each
rank measures every op of its shard; after each op rank 0 gathers the ranks' rows and saves one results.json:
per op and variant, first the max over ranks (rank None: a TP step waits for its slowest rank), then each
rank's row. Collectives are timed by `CollectiveTimer`, so that all ranks make the same calls.

The roof of a collective is the interconnect's all-reduce bus bandwidth across the N ranks, from
`calibrate_interconnect` (interconnect.py, cached per device and N) or else measured at the start of the run.
`roofline tp-scaling BASE TP` (analysis/scaling.py) compares a TP=N run with the TP=1 run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from roofline import fmt, results
from roofline.analysis.placement import Roofs
from roofline.config import BlockConfig
from roofline.errors import CannotRun, RooflineError
from roofline.measure import session
from roofline.measure.interconnect import interconnect_roof
from roofline.measure.ranks import CollectiveTimer, launch, rank_threads, rank_timeout, start_rank
from roofline.measure.timer import Timer
from roofline.measure.variant import measure
from roofline.ops import plan
from roofline.ops.attention import attn_v, causal_mask, is_causal, masked_softmax, qk_t
from roofline.ops.ffn import swiglu
from roofline.results import Ceilings, DeviceInfo, Parallel, Results, Row, Settings

# --- the split, as code --------------------------------------------------------------------------------------

def shard_weights(w: dict[str, torch.Tensor], c: BlockConfig, tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slices of the full block's weights (nn.Linear layout [out, in]; c is the full config).

    W_qkv rows are [Q heads; K heads; V heads]: a rank takes its heads of each. SwiGLU's W_up rows are
    [gate; up]: a rank takes its columns of each, so its local output splits into gate and up as the full one does.
    """
    def part(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.chunk(tp, dim)[rank]

    q, k, v = w["qkv"].split([c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim])
    halves = w["up"].chunk(2) if c.activation == "swiglu" else (w["up"],)
    return {"qkv": torch.cat([part(q, 0), part(k, 0), part(v, 0)]), "out": part(w["out"], 1),
            "up": torch.cat([part(h, 0) for h in halves]), "down": part(w["down"], 1)}


def block_forward(x: torch.Tensor, w: dict[str, torch.Tensor], c: BlockConfig,
                  all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """One pre-norm dense block (no dropout, norms without affine) on a shard: x [batch, seq, d_model] whole.

    c is the shard's config and w its weights; `all_reduce` sums the row-parallel partials across ranks (the
    identity for the unsharded block). The attention core is the catalog's qk_t → softmax → attn_v.
    """
    b, s, d = x.shape

    def norm(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(b * s, d)
        return F.rms_norm(t, (d,), eps=c.norm_eps) if c.norm == "rmsnorm" else F.layer_norm(t, (d,), eps=c.norm_eps)

    def heads(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.reshape(b, s, n, c.head_dim).transpose(1, 2)

    q, k, v = F.linear(norm(x), w["qkv"]).split([c.attn_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim], -1)
    mask = causal_mask(c, x.device) if is_causal(c) else None
    o = attn_v(masked_softmax(qk_t(heads(q, c.n_heads), heads(k, c.n_kv_heads), c), mask), heads(v, c.n_kv_heads), c)
    x = x + all_reduce(F.linear(o.transpose(1, 2).reshape(b * s, c.attn_dim), w["out"])).view(b, s, d)
    u = F.linear(norm(x), w["up"])
    return x + all_reduce(F.linear(swiglu(u) if c.activation == "swiglu" else F.gelu(u), w["down"])).view(b, s, d)


# --- profile --tp N ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankJob:
    """What every rank of `profile --tp/--dp` needs (picklable: it travels to the spawned ranks)."""

    config: BlockConfig  # the shard
    kind: str  # "cuda" | "cpu"
    only: list[str] | None
    variants: list[str] | None
    settings: Settings
    out_dir: Path
    argv: list[str]
    roofs: Roofs
    measured: Ceilings | None


def profile_ranks(shard: BlockConfig, dev: DeviceInfo, only: list[str] | None, variants: list[str] | None,
                  out_dir: Path, argv: list[str], settings: Settings, calibrate: bool,
                  listener: session.Listener) -> Results:
    """`roofline profile --tp N` (or `--dp N`, in the shard's config): launch one rank per GPU (or CPU process),
    each profiling its shard (or, under --dp, a whole replica plus the gradients' all-reduce); rank 0 saves the
    merged rows after every op. Returns every row: per (op, variant) the max over ranks, then each rank's."""
    t_start = time.perf_counter()
    ranks = shard.tp * shard.dp
    if dev.kind == "cuda" and torch.cuda.device_count() < ranks:
        flag = "--tp" if shard.tp > 1 else "--dp"
        raise RooflineError(f"{flag} {ranks} needs {ranks} GPUs; {torch.cuda.device_count()} visible")
    roofs, measured = rank_roofs(dev, ranks, calibrate, shard, listener)
    what = f"1/{shard.tp} of the block" if shard.tp > 1 else "a whole replica of the block"
    listener.info(f"Launching {ranks} ranks ({'NCCL' if dev.kind == 'cuda' else 'gloo'}), each profiling {what}")
    launch(ranks, profile_rank, RankJob(shard, dev.kind, only, variants, settings, out_dir, argv, roofs, measured))
    res = results.load(out_dir)
    res.run.wall_s = time.perf_counter() - t_start
    results.save(res, out_dir)
    if not res.ok_rows():
        raise CannotRun(f"no op could be measured (see the notes in {out_dir}/results.json)")
    return res


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


def profile_rank(job: RankJob) -> None:
    """One rank: measure every op of the shard; rank 0 merges the ranks' rows and saves after each op."""
    info = start_rank(job.kind)
    rank, n = dist.get_rank(), dist.get_world_size()
    say = (lambda m: print(f"[tp {n}] {m}", file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    step = "the interconnect roof"
    try:
        roofs = dataclasses.replace(job.roofs)
        roofs.interconnect_bandwidth, roofs.interconnect_source, link = interconnect_roof(info, job.config.dtype)
        say(f"interconnect roof: all-reduce bus bandwidth {fmt.bandwidth(roofs.interconnect_bandwidth)} "
            f"({roofs.interconnect_source})")
        run = session.start(info, job.config, job.out_dir, job.argv, job.settings, roofs=(roofs, job.measured))
        run.results.run.parallel = Parallel(job.config.tp, job.config.dp, n, dist.get_backend(), link)
        plain = Timer(info.torch_device, info.cache_bytes, info.max_sm_clock_mhz or 0)
        collective = CollectiveTimer(info.torch_device, info.cache_bytes)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = job.config.dtype == "tf32"
        for index, (op, variant) in enumerate(plan(job.config, job.only, job.variants)):
            step = f"{op.name} · {variant.name}"
            timer = collective if op.unit == "comm" else plain
            row = measure(op, variant, job.config, info, run.roofs, timer, job.settings, index)
            row.rank = rank
            gathered: list[Row] | None = [None] * n if rank == 0 else None  # type: ignore[list-item]
            dist.gather_object(row, gathered, dst=0)
            if gathered:
                run.add(merge(gathered))
                top = run.results.rows[-n - 1]
                say(f"{op.name} · {variant.name}: " + (fmt.seconds(top.time_median_s) if top.status == "ok"
                                                         else f"{top.status}: {top.note}"))
    except Exception as exc:
        if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
            raise RuntimeError(f"rank {rank} waited {rank_timeout().total_seconds():.0f} s for the other ranks at "
                               f"{step}: one of them died, hangs or is far slower (ROOFLINE_RANK_TIMEOUT_S sets "
                               "the wait)") from None
        raise
    finally:
        dist.destroy_process_group()


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
