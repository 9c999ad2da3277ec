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
`calibrate_interconnect` (cached per device and N) or else measured at the start of the run.
`roofline tp-scaling BASE TP` (tp_scaling.py) compares a TP=N run with the TP=1 run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from roofline import fmt, results
from roofline.config import BlockConfig
from roofline.device import DeviceInfo
from roofline.errors import CannotRun, RooflineError
from roofline.measure import Roofs, Settings
from roofline.ops import comm, plan
from roofline.ops.attention import attn_v, causal_mask, is_causal, masked_softmax, qk_t
from roofline.ops.ffn import swiglu
from roofline.ops.linear import out_bytes
from roofline.results import Results, Row
from roofline.timing import Timer, TimingStats, sample_until_stable
from roofline.tp_scaling import split_line

T = TypeVar("T")


def rank_timeout() -> timedelta:
    """How long a rank waits for the others in a collective before it fails (ROOFLINE_RANK_TIMEOUT_S, default 300 s):
    a rank that died or hangs then ends the run with one clear error instead of a hang."""
    return timedelta(seconds=float(os.environ.get("ROOFLINE_RANK_TIMEOUT_S", "300")))
IN_RUN_BYTES = {"cuda": 256 << 20, "cpu": 1 << 20}  # all-reduce buffer for the roof when none is calibrated


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


# --- ranks ---------------------------------------------------------------------------------------------------

def launch(n: int, fn: Callable[..., T], *args: object) -> dict[int, T]:
    """Run fn(*args) in n local processes (torch elastic, as `torchrun --standalone`); each rank's return value.

    A rank that raises ends the run: the others are stopped and its error becomes one line (exit code 3).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # the ranks inherit it
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=f"roofline-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.05)
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in loggers]
    if not os.environ.get("ROOFLINE_DEBUG"):  # a failing rank's traceback is in its error file; keep one line
        for log in loggers:
            log.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else ""  # "" if no file
        raise CannotRun(f"rank {rank} of {n} failed: {message or f'exit code {failure.exitcode}'}") from None
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def start_rank(kind: str) -> DeviceInfo:
    """In a launched rank: join the process group (NCCL on the rank's GPU, or gloo) and detect the device."""
    from roofline.device import detect

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    local, n = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if kind == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=rank_timeout(), device_id=torch.device("cuda", local))
        return detect(f"cuda:{local}")
    torch.set_num_threads(rank_threads(n))  # the ranks share the cores
    dist.init_process_group("gloo", timeout=rank_timeout())
    return detect("cpu")


def rank_threads(n: int) -> int:
    """CPU threads of each of n local CPU ranks: they share the cores."""
    return max(1, (os.cpu_count() or 1) // n)


def from_rank0(fn: Callable[[], T]) -> T:
    """fn() run on rank 0 only, its result sent to every rank: one decision for all (cache reads, calibration)."""
    box = [fn() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def agreed_max(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


class CollectiveTimer(Timer):
    """The Timer for collectives, which every rank must call the same number of times.

    Each sample starts after a barrier (the ranks enter together); a sample's time is the max over ranks (a
    collective is done when its slowest rank is); the stopping rule reads a clock agreed across ranks. So all
    ranks take the same samples and stop together. GPU: CUDA events; CPU (gloo): perf_counter.
    """

    def warm_up(self, fn: Callable[[], object], first_call_s: float, target_s: float = 0.03,
                setup: Callable[[], object] | None = None) -> None:
        slowest = agreed_max([first_call_s], self.device)[0]
        for _ in range(0 if slowest > 0.5 else min(100, max(1, int(target_s / max(slowest, 1e-6))))):
            if setup is not None:
                setup()
            fn()
        self.sync()

    def run_batch(self, fn: Callable[[], object], k: int, flush: bool = True,
                  setup: Callable[[], object] | None = None) -> list[float]:
        times = []
        for _ in range(k):
            if flush:
                self._flush.zero_()
            if setup is not None:
                setup()
            self.sync()
            dist.barrier()
            times += super().run_batch(fn, 1, flush=False)
        return agreed_max(times, self.device)

    def time(self, fn: Callable[[], object], budget_s: float, min_samples: int,
             setup: Callable[[], object] | None = None, first_s: float | None = None) -> TimingStats:
        """Agreed samples only: a first call (first_s) happened on each rank at its own time, it is not one."""
        return sample_until_stable(lambda k: self.run_batch(fn, k, setup=setup), budget_s, min_samples,
                                   clock=lambda: agreed_max([time.perf_counter()], self.device)[0])


# --- profile --tp N ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TPJob:
    """What every rank of `profile --tp` needs (picklable: it travels to the spawned ranks)."""

    config: BlockConfig  # the shard
    kind: str  # "cuda" | "cpu"
    only: list[str] | None
    variants: list[str] | None
    settings: Settings
    out_dir: Path
    argv: list[str]
    roofs: Roofs
    measured: dict[str, object] | None


def run_tp(tp: int, model: str, config: dict[str, object], device: str | None, only: list[str] | None,
           variants: list[str] | None, out: Path | None, json_out: str | None, csv_out: str | None,
           budget: float | None, calibrate: bool, plots: bool, seed: int, counters: bool, argv: list[str]) -> None:
    """`roofline profile --tp N` (or `--dp N`, in config): check the input, launch the ranks, show the merged
    results. Under --dp every rank profiles a whole replica, and the gradients' all-reduce joins the plan."""
    from roofline import cli
    from roofline import device as devices
    from roofline.config import make_config

    t_start = time.perf_counter()
    if counters:
        raise RooflineError("--counters does not combine with --tp/--dp (count one GPU's kernels without them)")
    dev = devices.detect(device)
    if device not in (None, "cpu", "cuda"):
        raise RooflineError(f"--tp runs one rank per GPU cuda:0..N-1: use --device cuda or cpu, not {device}")
    options = {"dtype": "bf16" if dev.kind == "cuda" else "fp32", **{k: v for k, v in config.items() if v is not None}}
    shard = make_config(model, **options).shard(tp)
    ranks, flag = shard.tp * shard.dp, f"tp{shard.tp}" if shard.tp > 1 else f"dp{shard.dp}"
    if not plan(shard, only, variants):
        raise RooflineError("nothing to measure: --ops/--variants selected no (op, variant) of this model")
    if dev.kind == "cuda" and torch.cuda.device_count() < ranks:
        raise RooflineError(f"--{flag[:2]} {ranks} needs {ranks} GPUs; {torch.cuda.device_count()} visible")
    settings = dataclasses.replace(Settings.for_device(dev, budget), seed=seed)
    out_dir = cli.writable_dir(out or Path(f"{cli.default_out_dir(dev.slug, shard)}-{flag}"))
    roofs, measured = rank_roofs(dev, ranks, calibrate, shard)
    what = f"1/{tp} of the block" if tp > 1 else "a whole replica of the block"
    cli.info(f"Launching {ranks} ranks ({'NCCL' if dev.kind == 'cuda' else 'gloo'}), each profiling {what}")
    launch(ranks, profile_rank, TPJob(shard, dev.kind, only, variants, settings, out_dir, argv, roofs, measured))
    res = results.load(out_dir)
    res.run["wall_s"] = time.perf_counter() - t_start
    results.save(res, out_dir)
    slowest = Results(run=res.run, rows=[r for r in res.rows if r.rank is None])
    cli._report_run(slowest, out_dir, json_out, csv_out, plots)  # --json/--csv: the max rows; results.json: all
    if "-" not in (json_out, csv_out):
        cli.stdout.print(split_line(slowest))
    cli.info(f"Wrote {out_dir}/results.json (max over ranks, then every rank's rows) in {res.run['wall_s']:.1f} s")
    if not res.ok_rows():
        raise CannotRun(f"no op could be measured (see the notes in {out_dir}/results.json)")


def rank_roofs(dev: DeviceInfo, ranks: int, calibrate: bool, shard: BlockConfig) -> tuple[Roofs, dict | None]:
    """The roofs every rank places its rows against, found before the ranks start: no rank waits at a collective
    while another calibrates. CPU ranks measure with their share of the cores, so the roofs are measured so too."""
    from roofline import cli, measure

    if dev.kind != "cpu":
        return measure.load_roofs(dev, calibrate, cli.warn, cli.info, shard)
    previous = torch.get_num_threads()
    torch.set_num_threads(rank_threads(ranks))
    try:
        rank_dev = dataclasses.replace(dev, cpu_threads=torch.get_num_threads())
        return measure.load_roofs(rank_dev, calibrate, cli.warn, cli.info, shard)
    finally:
        torch.set_num_threads(previous)


def profile_rank(job: TPJob) -> None:
    """One rank of `profile --tp`: measure every op of the shard; rank 0 merges and saves after each op."""
    from roofline import measure

    info = start_rank(job.kind)
    rank, n = dist.get_rank(), dist.get_world_size()
    say = (lambda m: print(f"[tp {n}] {m}", file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    step = "the interconnect roof"
    try:
        roofs, measured = dataclasses.replace(job.roofs), job.measured
        roofs.interconnect_bandwidth, roofs.interconnect_source, link = interconnect_roof(info, job.config.dtype)
        say(f"interconnect roof: all-reduce bus bandwidth {fmt.bandwidth(roofs.interconnect_bandwidth)} "
            f"({roofs.interconnect_source})")
        res = Results(run=measure.run_metadata(job.config, info, roofs, job.settings, job.argv, measured))
        res.run.update(tp=job.config.tp, dp=job.config.dp, ranks=n, backend=dist.get_backend(), interconnect=link)
        plain = Timer(info.torch_device, info.cache_bytes, info.max_sm_clock_mhz or 0)
        collective = CollectiveTimer(info.torch_device, info.cache_bytes)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = job.config.dtype == "tf32"
        for index, (op, variant) in enumerate(plan(job.config, job.only, job.variants)):
            step = f"{op.name} · {variant.name}"
            timer = collective if op.unit == "comm" else plain
            row = measure.measure(op, variant, job.config, info, roofs, timer, job.settings, index)
            row.rank = rank
            gathered: list[Row] | None = [None] * n if rank == 0 else None  # type: ignore[list-item]
            dist.gather_object(row, gathered, dst=0)
            if gathered:
                res.rows += merge(gathered)
                results.save(res, job.out_dir)
                top = res.rows[-n - 1]
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


# --- the interconnect roof -----------------------------------------------------------------------------------

def measure_collectives(info: DeviceInfo, size_bytes: int, dtype: str, names: tuple[str, ...],
                        budget_s: float) -> dict[str, dict[str, float]]:
    """In every rank: bus and algorithm bandwidth (bytes/s, NCCL-tests sense) of each collective over ~size_bytes."""
    from roofline import measure

    n, d_model, element_bytes = dist.get_world_size(), 1024, out_bytes(BlockConfig(dtype=dtype))
    tokens = max(n, size_bytes // (d_model * element_bytes) // n * n)
    c = BlockConfig(name="collective", d_model=d_model, seq_len=tokens, dtype=dtype, tp=n)
    timer = CollectiveTimer(info.torch_device, info.cache_bytes)
    out = {}
    for index, name in enumerate(names):
        op = comm.COLLECTIVES[name]
        row = measure.measure(op, op.variants[0], c, info, Roofs({}, 0.0, {}, 0.0), timer, Settings(budget_s), index)
        if row.status != "ok" or not row.time_median_s:
            raise RuntimeError(f"{name} could not be measured: {row.note}")
        size = comm.elements(c) * element_bytes
        out[name] = {"busbw": row.min_bytes / row.time_median_s, "algbw": size / row.time_median_s,
                     "size_bytes": size, "time_s": row.time_median_s}
    return out


def interconnect_path(info: DeviceInfo, n: int) -> Path:
    from roofline import ceilings

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
