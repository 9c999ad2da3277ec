"""Ranks: local processes started with torch elastic (what `torchrun --standalone` does), one per GPU with NCCL
(NVLink multicast off: NCCL_NVLS_ENABLE=0 in every rank) or N CPU processes with gloo; and the timer for
collectives, which every rank must call the same number of times.
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
from roofline.measure.timer import Timer, TimingStats, sample_until_stable
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


def start_rank(kind: str) -> DeviceInfo:
    """In a launched rank: join the process group (NCCL on the rank's GPU, or gloo) and detect the device."""
    from roofline.measure.device import detect

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
                setup: Callable[[], object] = lambda: None) -> None:
        slowest = agreed_max([first_call_s], self.device)[0]
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
            dist.barrier()
            times += super().run_batch(fn, 1, flush=False)
        return agreed_max(times, self.device)

    def time(self, fn: Callable[[], object], budget_s: float, min_samples: int,
             setup: Callable[[], object] = lambda: None, first_s: float | None = None) -> TimingStats:
        """Agreed samples only: a first call (first_s) happened on each rank at its own time, it is not one."""
        return sample_until_stable(lambda k: self.run_batch(fn, k, setup=setup), budget_s, min_samples,
                                   clock=lambda: agreed_max([time.perf_counter()], self.device)[0])


