"""Ranks: local processes started with torch elastic (what `torchrun --standalone` does), one per GPU with NCCL
(NVLink multicast off: NCCL_NVLS_ENABLE=0 in every rank) or N CPU processes with gloo, or the world an external
launcher (torchrun, SLURM) started, which a rank joins (`external_world`); and the timer for collectives, which
every rank of a group must call the same number of times.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from roofline.errors import CannotRun
from roofline.measure.timer import LONG_CALL_BUDGETS, Timer, TimingStats, sample_until_stable
from roofline.results import DeviceInfo

T = TypeVar("T")


def rank_timeout() -> timedelta:
    """How long a rank waits for the others in a collective before it fails (ROOFLINE_RANK_TIMEOUT_S, default 300 s):
    a rank that died or hangs then ends the run with one clear error instead of a hang."""
    return timedelta(seconds=float(os.environ.get("ROOFLINE_RANK_TIMEOUT_S", "300")))


def launch(n: int, fn: Callable[..., T], *args: object) -> dict[int, T]:
    """Run fn(*args) in n local processes (torch elastic, as `torchrun --standalone`); each rank's return value.

    A rank that raises ends the run: the others are stopped and its error becomes one line (exit code 3). The
    launcher's logs and error files (torchelastic_*, pytorch-errorfile-*) go to a temporary folder of this launch,
    removed with it: nothing is left in the system's temp folder.
    """
    with tempfile.TemporaryDirectory(prefix="roofline-ranks-") as scratch:
        previous = tempfile.tempdir, os.environ.get("TMPDIR")
        tempfile.tempdir, os.environ["TMPDIR"] = scratch, scratch  # the agent and the spawned ranks write there
        try:
            return _launch(n, fn, *args)
        finally:
            tempfile.tempdir = previous[0]
            if previous[1] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous[1]


def _launch(n: int, fn: Callable[..., T], *args: object) -> dict[int, T]:
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


SLURM_ENV = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID"}


def external_world() -> tuple[int, int] | None:
    """(rank, world size) when an external launcher started this process as one rank of a world: torchrun (and
    `srun torchrun`) set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; plain `srun` sets SLURM_PROCID and
    SLURM_NTASKS, which count when the batch script exported MASTER_ADDR and MASTER_PORT (they are copied into
    the torch names). None otherwise: the tool starts its own ranks."""
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        return None
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        for torch_name, slurm_name in SLURM_ENV.items():
            os.environ.setdefault(torch_name, os.environ.get(slurm_name, "0"))
        tasks = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "4(x2)": 4 per node on 2 nodes
        os.environ.setdefault("LOCAL_WORLD_SIZE", tasks if tasks.isdigit() else "1")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def start_rank(kind: str) -> DeviceInfo:
    """In a launched rank: join the process group (NCCL on the rank's GPU, or gloo) and detect the device."""
    from roofline.measure.device import detect

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=rank_timeout(), device_id=torch.device("cuda", local))
        return detect(f"cuda:{local}")
    torch.set_num_threads(rank_threads(local_ranks()))  # the node's ranks share its cores
    dist.init_process_group("gloo", timeout=rank_timeout())
    return detect("cpu")


def local_ranks() -> int:
    """Ranks on this node: LOCAL_WORLD_SIZE (torchrun, torch elastic), else the world."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)


def rank_threads(n: int) -> int:
    """CPU threads of each of n local CPU ranks: they share the cores."""
    return max(1, (os.cpu_count() or 1) // n)


def from_rank0(fn: Callable[[], T]) -> T:
    """fn() run on rank 0 only, its result sent to every rank: one decision for all (cache reads, calibration)."""
    box = [fn() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def agreed_max(values: list[float], device: torch.device, group: dist.ProcessGroup | None = None) -> list[float]:
    """The element-wise max over the group's ranks (None: the world)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


class CollectiveTimer(Timer):
    """The Timer for collectives, which every rank of its group must call the same number of times.

    Each sample starts after a barrier of the group (its ranks enter together); a sample's time is the max over
    the group's ranks (a collective is done when its slowest rank is); the stopping rule reads a clock agreed
    across them. So the group's ranks take the same samples and stop together, while other groups (the other TP
    groups of a TP × PP run) time their own collectives beside them. GPU: CUDA events; CPU (gloo): perf_counter.
    """

    def __init__(self, device: torch.device, cache_bytes: int = 0, group: dist.ProcessGroup | None = None) -> None:
        super().__init__(device, cache_bytes)
        self.group = group

    def warm_up(self, fn: Callable[[], object], first_call_s: float, target_s: float = 0.03,
                setup: Callable[[], object] = lambda: None) -> None:
        slowest = agreed_max([first_call_s], self.device, self.group)[0]
        for _ in range(0 if slowest > 0.5 else min(100, max(1, int(target_s / max(slowest, 1e-6))))):
            setup()
            fn()
        self.sync()

    def run_batch(self, fn: Callable[[], object], k: int, flush: bool = True,
                  setup: Callable[[], object] = lambda: None) -> list[float]:
        times = []
        for _ in range(k):
            if flush:
                self._flush.zero_()
            setup()
            self.sync()
            dist.barrier(group=self.group)
            times += super().run_batch(fn, 1, flush=False)
        return agreed_max(times, self.device, self.group)

    def time(self, fn: Callable[[], object], budget_s: float, min_samples: int,
             setup: Callable[[], object] = lambda: None, first_s: float | None = None) -> TimingStats:
        """Agreed samples only: a first call (first_s) happened on each rank at its own time, it is not one. But as in
        Timer.time, a CPU call that outlasts its budget on the group's slowest rank takes two samples (a CPU
        pipeline step of 1.6 s took three)."""
        long_s = LONG_CALL_BUDGETS * budget_s  # first_s is given on every rank of the group or on none: all agree
        if first_s is not None and not self.is_cuda and agreed_max([first_s], self.device, self.group)[0] > long_s:
            min_samples = min(min_samples, 2)
        return sample_until_stable(lambda k: self.run_batch(fn, k, setup=setup), budget_s, min_samples,
                                   clock=lambda: agreed_max([time.perf_counter()], self.device, self.group)[0])


