"""Measure each planned (op, variant): predict memory, build fresh inputs, check against the reference, time.

Order of work for one variant, and why:
1. requires / memory prediction — skip with a note before allocating anything that cannot fit;
2. fresh random inputs (a new seed per variant) and the first call — compile/autotune time recorded apart;
3. correctness on a random sample of output rows against the float64 reference — a wrong variant is
   reported failed and never timed;
4. peak memory of one call beyond its inputs (CUDA allocator statistics);
5. timing (timing.py), then clocks and throttle reasons from NVML.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from roofline import model, train
from roofline.config import BlockConfig
from roofline.device import DeviceInfo, free_memory_bytes, read_clocks
from roofline.errors import RooflineError, Unsupported
from roofline.ops.base import TOLERANCE, CheckFailed, Op, Variant, default_check, primary
from roofline.results import SCHEMA_VERSION, Row
from roofline.timing import Timer

CHECK_ROWS = 64


@dataclass
class Settings:
    """How hard to measure. budget_s is per variant; timing stops earlier once the median is stable."""

    budget_s: float = 0.5
    min_samples: int = 5
    seed: int = 0

    @classmethod
    def for_device(cls, info: DeviceInfo, budget_s: float | None = None) -> Settings:
        if budget_s is not None and not budget_s > 0:
            raise RooflineError(f"--budget must be a positive number of seconds, got {budget_s}")
        if info.kind == "cuda":
            return cls(budget_s=budget_s or 0.5, min_samples=10)
        return cls(budget_s=budget_s or 0.5, min_samples=3)


@dataclass
class Roofs:
    """The roofs the rows are placed against: measured where calibrated, datasheet otherwise."""

    datasheet_flops: dict[str, float]
    datasheet_bandwidth: float
    measured_flops: dict[str, float]
    measured_bandwidth: float
    interconnect_bandwidth: float = 0.0  # `profile --tp`: all-reduce bus bandwidth across the ranks (comm.busbw)
    interconnect_source: str = ""

    def peak(self, key: str) -> tuple[float, str]:
        if key == model.COMM_ROOF:  # a collective's reduction adds run on the CUDA cores
            key = "vector.fp32"
        for flops, source in ((self.measured_flops, "measured"), (self.datasheet_flops, "datasheet")):
            if key in flops:
                return flops[key], source
        fallback = self.measured_flops or self.datasheet_flops
        best = max(fallback.values()) if fallback else float("nan")
        return best, "nearest"

    def bandwidth(self, key: str = "") -> tuple[float, str]:
        if key == model.COMM_ROOF:
            return self.interconnect_bandwidth or float("nan"), self.interconnect_source or "none"
        if self.measured_bandwidth:
            return self.measured_bandwidth, "measured"
        return self.datasheet_bandwidth, "datasheet"


def load_roofs(info: DeviceInfo, calibrate: bool = False, warn: Callable[[str], None] = lambda m: None,
               say: Callable[[str], None] = lambda m: None,
               config: BlockConfig | None = None) -> tuple[Roofs, dict[str, object] | None]:
    """The roofs to place rows against, and the measured ceilings (as saved in run metadata) if any.

    Measured roofs come from `roofline calibrate`'s cache; `calibrate` measures them first. The CPU has no
    datasheet, so its roofs are always measured: quickly, the run's dtype and its block's GEMM shapes only
    (`config`), bounded to ~30 s, then cached.
    """
    from roofline import ceilings
    from roofline.ops import gemm_shapes

    measured = None
    if calibrate or info.kind == "cpu":
        dtypes = (config.dtype,) if config is not None and config.dtype != "fp8" else ()
        shapes = gemm_shapes(config) if config is not None and info.kind == "cpu" else ()
        if ceilings.load_cached(info) is None or calibrate:
            say(f"Calibrating {info.name} (first run on this device; bounded, ~30 s on a CPU)")
        measured, cached = ceilings.get_ceilings(info, force=calibrate, quick=not calibrate, warn=warn, dtypes=dtypes,
                                                 shapes=shapes, say=lambda m: say(f"  calibrating: {m}"))
        say(f"{'Using cached' if cached else 'Measured'} roofs of {info.name}")
    else:
        measured = ceilings.load_cached(info, warn)
        say(f"Using measured roofs of {info.name} cached by `roofline calibrate`" if measured
            else "Using datasheet roofs (run `roofline calibrate` once for measured ones)")
    roofs = Roofs(info.peak_flops, info.memory_bandwidth, measured.peak_flops if measured else {},
                  measured.memory_bandwidth if measured else 0.0)
    return roofs, measured.to_dict() if measured else None


def base_row(op: Op, variant: Variant, c: BlockConfig) -> Row:
    flops, min_bytes = op.step_flops(c), op.step_bytes(c)
    row = Row(op=op.name, variant=variant.name, group=op.group, fused=variant.fused, unit=op.unit, model=c.name,
               batch=c.batch, seq_len=c.seq_len, q_len=c.q_len, kv_len=c.kv_len, dtype=c.dtype, mode=c.mode,
               per_block=op.per_block, flops=flops, min_bytes=min_bytes,
               intensity=model.intensity(flops, min_bytes))
    if c.mode == "train" and op.backward_flops and op.backward_bytes:
        row.backward_flops, row.backward_min_bytes = op.backward_flops(c), op.backward_bytes(c)
    return row


def predicted_bytes(op: Op, variant: Variant, c: BlockConfig) -> int:
    """Inputs + outputs + the variant's scratch, plus room for the float64 check (a generous 25 %).

    Train mode: the backward's bytes too (the gradients), and the scratch twice (its gradient is as large).
    """
    scratch = variant.scratch_bytes(c) * (2 if c.mode == "train" else 1)
    return int(1.25 * (op.step_bytes(c) + scratch))


def measure(op: Op, variant: Variant, c: BlockConfig, info: DeviceInfo, roofs: Roofs, timer: Timer,
            settings: Settings, index: int = 0) -> Row:
    """Measure one variant; never raises for the variant's own failures (they become the row's status)."""
    row = base_row(op, variant, c)
    reason = variant.requires(c, info.torch_device)
    if reason is None and c.dtype not in variant.dtypes:
        reason = f"no {c.dtype} path in this variant"
    if reason:
        return _finish(row, "skipped", reason)
    need, free = predicted_bytes(op, variant, c), free_memory_bytes(info)
    if need > free:
        return _finish(row, "skipped", f"would need {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    try:
        _measure_into(row, op, variant, c, info, roofs, timer, settings, index)
    except Unsupported as exc:
        _finish(row, "skipped", str(exc))
    except torch.OutOfMemoryError:
        _finish(row, "skipped", "out of memory on the device")
    except CheckFailed as exc:
        _finish(row, "failed", f"wrong result: {exc}")
    except Exception as exc:  # a broken variant must not stop the run
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        _finish(row, "failed", f"{type(exc).__name__}: {first_line}")
    finally:
        if row.status != "ok":
            gc.collect()  # a traceback's frames may still hold the inputs (gc costs ~0.1 s, so only here)
        if info.kind == "cuda":
            torch.cuda.empty_cache()
    row.measure_s = time.perf_counter() - t0
    return row


def _finish(row: Row, status: str, note: str) -> Row:
    row.status, row.note = status, note
    return row


def _measure_into(row: Row, op: Op, variant: Variant, c: BlockConfig, info: DeviceInfo, roofs: Roofs,
                  timer: Timer, settings: Settings, index: int) -> None:
    device = info.torch_device
    phases = _Phases(f"{op.name}·{variant.name}")
    gen = torch.Generator(device=device).manual_seed(settings.seed * 1000 + index)
    inputs = op.make_inputs(c, device, gen)
    grad_names = train.require_grads(inputs) if c.mode == "train" and op.unit != "comm" else []
    fn = variant.build(c, inputs)
    out, row.first_call_s = timer.first_call(fn)
    phases.mark("inputs+first call")

    rows_gen = torch.Generator().manual_seed(settings.seed * 1000 + index)
    n_rows = primary(out).shape[-2]
    rows = torch.randperm(n_rows, generator=rows_gen)[:CHECK_ROWS].sort().values
    check = op.check or (lambda cfg, i, o, r: default_check(op, cfg, i, o, r))
    with torch.no_grad():
        row.error, row.tolerance = check(c, inputs, out, rows), TOLERANCE[c.dtype]
    if not row.error <= row.tolerance:
        raise CheckFailed(f"relative error {row.error:.2e} > tolerance {row.tolerance:.0e}")
    if grad_names:
        row.grad_error = train.grad_error(op, c, inputs, grad_names, out, rows, rows_gen)
        if not row.grad_error <= row.tolerance:
            raise CheckFailed(f"gradient relative error {row.grad_error:.2e} > tolerance {row.tolerance:.0e}")
    del out
    phases.mark("check")

    timed, closures = fn, None
    if grad_names:
        closures = train.closures(fn, inputs, grad_names, gen)
        timed, row.saved_bytes, row.saved_new_bytes = closures.step, closures.saved_bytes, closures.saved_new_bytes
    if info.kind == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = timed()
        torch.cuda.synchronize(device)
        row.peak_mem_bytes = torch.cuda.max_memory_allocated(device) - base
        del out

    phases.mark("peak memory")
    timer.warm_up(timed, row.first_call_s)
    phases.mark("warm-up")
    stats = timer.time(timed, settings.budget_s, settings.min_samples, first_s=None if grad_names else row.first_call_s)
    phases.mark(f"timing ({stats.samples} samples)")
    row.time_median_s, row.time_p20_s, row.time_p80_s = stats.median_s, stats.p20_s, stats.p80_s
    row.samples, row.rel_err, row.stop_reason = stats.samples, stats.rel_err, stats.stop_reason
    row.time_samples_s, row.host_time_s = stats.samples_s, stats.host_s
    if closures is not None:
        _time_backward(row, closures, timer, settings)
        phases.mark(f"backward timing ({row.backward_samples} samples)")
    clocks = read_clocks(info)
    row.sm_clock_mhz, row.mem_clock_mhz = clocks.get("sm_clock_mhz"), clocks.get("mem_clock_mhz")  # type: ignore
    row.throttle = str(clocks.get("throttle", ""))
    place_row(row, roofs)
    phases.report()


def _time_backward(row: Row, closures: train.TrainClosures, timer: Timer, settings: Settings) -> None:
    """The backward alone: each sample after an untimed forward that builds its graph."""
    timer.warm_up(closures.backward, 0.0, setup=closures.forward)
    stats = timer.time(closures.backward, settings.budget_s, settings.min_samples, setup=closures.forward)
    row.backward_time_s, row.backward_samples = stats.median_s, stats.samples


class _Phases:
    """Wall time per measurement phase, printed to stderr when ROOFLINE_DEBUG is set (why was a run slow?)."""

    def __init__(self, name: str) -> None:
        self.name, self.t, self.parts = name, time.perf_counter(), []  # type: ignore[var-annotated]

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.parts.append(f"{phase} {now - self.t:.3f}s")
        self.t = now

    def report(self) -> None:
        if os.environ.get("ROOFLINE_DEBUG"):
            print(f"[roofline] {self.name}: " + ", ".join(self.parts), file=sys.stderr, flush=True)


def place_row(row: Row, roofs: Roofs) -> None:
    """Fill the roofline columns of a timed row."""
    row.ceiling = model.ceiling_key(row.unit, row.dtype)
    peak, source = roofs.peak(row.ceiling)
    bandwidth, bw_source = roofs.bandwidth(row.ceiling)
    row.ceiling_source = source if source == bw_source else f"{source} compute, {bw_source} memory"
    point = model.place(row.flops, row.min_bytes, row.time_median_s or float("nan"), peak, bandwidth)
    row.peak_flops_per_s, row.peak_bytes_per_s = peak, bandwidth
    row.flops_per_s, row.bytes_per_s = point.achieved_flops, point.achieved_bytes
    row.attainable_flops_per_s, row.bound = point.attainable_flops, point.bound
    row.pct_of_roof, row.floor_s = point.pct_of_roof, point.floor_s


def run_plan(items: list[tuple[Op, Variant]], c: BlockConfig, info: DeviceInfo, roofs: Roofs,
             settings: Settings, on_start: Callable[[Op, Variant], None] = lambda o, v: None,
             on_row: Callable[[Row], None] = lambda r: None) -> list[Row]:
    """Measure every planned variant in order; on_row is called after each (the caller saves results)."""
    timer = Timer(info.torch_device, info.cache_bytes, info.max_sm_clock_mhz or 0)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = c.dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = c.dtype == "tf32"
    rows = []
    try:
        for index, (op, variant) in enumerate(items):
            on_start(op, variant)
            row = measure(op, variant, c, info, roofs, timer, settings, index)
            rows.append(row)
            on_row(row)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return rows


def git_commit() -> str:
    """The commit of the roofline checkout that ran, with '-dirty' when it had local changes.

    ROOFLINE_GIT_COMMIT overrides it, for copies of a checkout that travel without their .git folder.
    """
    if os.environ.get("ROOFLINE_GIT_COMMIT"):
        return os.environ["ROOFLINE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{sha}-dirty" if sha and dirty else sha
    except (OSError, subprocess.SubprocessError):
        return ""


def run_metadata(c: BlockConfig, info: DeviceInfo, roofs: Roofs, settings: Settings, argv: list[str],
                 measured: dict[str, object] | None) -> dict[str, object]:
    from roofline import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "roofline_version": __version__,
        "git_commit": git_commit(),
        "command": " ".join(["roofline", *argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "device": info.to_dict(),
        "clocks_at_start": read_clocks(info),
        "config": {**asdict(c), "q_len": c.q_len, "kv_len": c.kv_len, "tokens": c.tokens},
        "settings": asdict(settings),
        "peaks": {
            "datasheet": {"flops": roofs.datasheet_flops, "memory_bandwidth": roofs.datasheet_bandwidth,
                          "source": info.datasheet_source or info.peaks_source},
            "measured": measured,
        },
        "warnings": list(info.warnings),
    }
