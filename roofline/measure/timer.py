"""One timer for GPU (CUDA events, L2 flushed before every sample) and CPU (perf_counter).

Why our own loop and not `triton.testing.do_bench`: we need an adaptive stopping rule (stop when the median
is known to ±0.5 %, NVBench's default, or when the per-op budget is spent), the raw samples kept for
`compare`, and the same statistics on the CPU, where Triton's timer does not run.

Launch overhead (GPU): the host's time to launch an op (Python, the dispatcher, a Triton launcher, an autograd
graph) is not the GPU's. When the Timer knows the SM clock, a sleep kernel longer than that host time runs
before each sample (NVBench's "blocking kernel"), so the host has enqueued the op by the time the events start
and they measure its GPU execution only; the host time per call is kept beside it (`host_s`): an op whose host
time exceeds its GPU time is host-bound, which a training loop pays unless something hides it (CUDA graphs).

Stopping rule: the standard error of the median is √(π/2)·σ/√n; σ is estimated robustly from the
inter-quartile range (σ ≈ IQR / 1.349) so that one slow outlier does not keep us sampling forever.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

TARGET_REL_ERR = 0.005
FIRST_CALL_SAMPLE_S = 0.1  # a CPU op's first call this long counts as a timing sample (Timer.time)
LONG_CALL_BUDGETS = 1  # a CPU op whose one call takes this many per-variant budgets takes 2 samples (Timer.time)


@dataclass
class TimingStats:
    median_s: float
    p20_s: float
    p80_s: float
    samples: int
    rel_err: float  # estimated relative standard error of the median
    stop_reason: str  # "converged" | "budget" | "max_samples"
    samples_s: list[float] = field(default_factory=list)
    host_s: float | None = None  # host time to launch one call (GPU timers with a clock only)


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def median_rel_error(samples: list[float]) -> float:
    """Relative standard error of the median: √(π/2)·(IQR/1.349)/√n / median (inf for < 3 samples)."""
    if len(samples) < 3:
        return math.inf
    s = sorted(samples)
    med = statistics.median(s)
    iqr = quantile(s, 0.75) - quantile(s, 0.25)
    return math.sqrt(math.pi / 2) * (iqr / 1.349) / math.sqrt(len(s)) / med if med > 0 else math.inf


def summarize(samples: list[float], stop_reason: str) -> TimingStats:
    s = sorted(samples)
    return TimingStats(median_s=statistics.median(s), p20_s=quantile(s, 0.2), p80_s=quantile(s, 0.8),
                       samples=len(s), rel_err=median_rel_error(s), stop_reason=stop_reason,
                       samples_s=list(samples))


def sample_until_stable(run_batch: Callable[[int], list[float]], budget_s: float, min_samples: int = 5,
                        max_samples: int = 2000, target_rel_err: float = TARGET_REL_ERR,
                        clock: Callable[[], float] = time.perf_counter,
                        initial: list[float] | None = None) -> TimingStats:
    """Call run_batch(k) (which returns k sample times) until the median is stable or the budget is spent.

    At least `min_samples` are always taken (counting `initial`, samples already taken), even past the budget,
    so that every row has statistics.
    """
    start = clock()
    samples: list[float] = list(initial or [])
    batch = max(1, min_samples - len(samples))
    while True:
        samples.extend(run_batch(batch))
        n = len(samples)
        elapsed = clock() - start
        if n >= min_samples and median_rel_error(samples) <= target_rel_err:
            return summarize(samples, "converged")
        if n >= max_samples:
            return summarize(samples, "max_samples")
        if n >= min_samples and elapsed >= budget_s:
            return summarize(samples, "budget")
        per_sample = elapsed / n if elapsed > 0 else 0.0
        left = budget_s - elapsed
        affordable = int(left / per_sample) if per_sample > 0 else max_samples
        batch = max(1, min(max(n, 5), affordable, max_samples - n))


class Timer:
    """Times a closure on one device: GPU events or the CPU's perf_counter around the closure only, the last-level
    cache (the GPU's L2, the CPU's L3) flushed before each sample, so an op reads its inputs from DRAM as in a block
    (without it a CPU op whose data fits in L3 beats the DRAM roof)."""

    def __init__(self, device: torch.device, cache_bytes: int = 0, sm_clock_mhz: int = 0) -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"
        self._cycles_per_s = sm_clock_mhz * 1e6 if self.is_cuda and hasattr(torch.cuda, "_sleep") else 0.0
        self._sleep_cycles = 0
        self._flush_bytes = max(2 * cache_bytes, 64 << 20)
        self._flush_buffer: torch.Tensor | None = None

    @property
    def _flush(self) -> torch.Tensor:
        """The buffer written before each sample (allocated on first use: calibration never flushes)."""
        if self._flush_buffer is None:
            self._flush_buffer = torch.empty(self._flush_bytes // 4, dtype=torch.int32, device=self.device)
        return self._flush_buffer

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def first_call(self, fn: Callable[[], object]) -> tuple[object, float]:
        """Run once (compilation, autotuning, cuDNN plans happen here) and return (output, seconds)."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t0

    def warm_up(self, fn: Callable[[], object], first_call_s: float, target_s: float = 0.03,
                setup: Callable[[], object] = lambda: None) -> None:
        """A few more calls so caches, clocks and allocator settle; none when one call is already long, or on a CPU
        when the first call counts as a sample (Timer.time): a call that long warms the caches it needs."""
        if first_call_s > 0.5 or (not self.is_cuda and first_call_s >= FIRST_CALL_SAMPLE_S):
            return
        t0 = time.perf_counter()
        for _ in range(100):
            setup()
            fn()
            self.sync()
            if time.perf_counter() - t0 >= target_s:
                break

    def run_batch(self, fn: Callable[[], object], k: int, flush: bool = True,
                  setup: Callable[[], object] = lambda: None) -> list[float]:
        """k samples of fn; `setup` runs before each, untimed (e.g. the forward whose backward is timed)."""
        if not self.is_cuda:
            times = []
            for _ in range(k):
                setup()
                if flush:
                    self._flush.zero_()
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return times
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
        for start, end in zip(starts, ends, strict=True):
            setup()
            if flush:
                self._flush.zero_()
            if self._sleep_cycles:
                torch.cuda._sleep(self._sleep_cycles)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]

    def host_seconds(self, fn: Callable[[], object], setup: Callable[[], object] = lambda: None,
                     reps: int = 7) -> float:
        """Median host time of one call that is not waited for: what launching fn costs the CPU."""
        times = []
        for _ in range(reps):
            setup()
            self.sync()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        self.sync()
        return statistics.median(times)

    def time(self, fn: Callable[[], object], budget_s: float, min_samples: int,
             setup: Callable[[], object] = lambda: None, first_s: float | None = None) -> TimingStats:
        """Samples of fn until stable. `first_s`, the time of fn's first call, counts as a sample on a CPU when it is
        longer than FIRST_CALL_SAMPLE_S: nothing compiles or autotunes there (CPU variants are eager PyTorch), and
        for the long ops where it saves minutes (a projection at seq 8192 takes seconds) its one-time cost,
        first-touch of the output pages, is under 1 %. A CPU op whose first call outlasts its budget takes two samples,
        not min_samples: one call is then already past the budget, a 1-second matmul's call-to-call noise is small
        beside the CPU roof's own 25 %, and a third call would cost another second at seq 1024 (10 s at 8192)."""
        counts = first_s is not None and not self.is_cuda and first_s >= FIRST_CALL_SAMPLE_S
        initial = [first_s] if counts else None
        if counts and first_s > LONG_CALL_BUDGETS * budget_s:
            min_samples = min(min_samples, 2)
        host_s = None
        if self._cycles_per_s:  # sleep twice the launch time (≥ 50 µs, ≤ 50 ms) ahead of each sample
            host_s = self.host_seconds(fn, setup)
            self._sleep_cycles = int(min(max(2 * host_s + 20e-6, 50e-6), 0.05) * self._cycles_per_s)
        try:
            stats = sample_until_stable(lambda k: self.run_batch(fn, k, setup=setup), budget_s, min_samples,
                                        initial=initial)
        finally:
            self._sleep_cycles = 0
        stats.host_s = host_s
        return stats
