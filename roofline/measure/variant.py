"""Measure one (op, variant): predict memory, build fresh inputs, check against the reference, time, place.

Order of work for one variant, and why:
1. requires / memory prediction — skip with a note before allocating anything that cannot fit;
2. fresh random inputs (a new seed per variant) and the first call — compile/autotune time recorded apart;
3. correctness on a random sample of output rows against the float64 reference — a wrong variant is
   reported failed and never timed;
4. peak memory of one call beyond its inputs (CUDA allocator statistics);
5. timing (timer.py), then clocks and throttle reasons from NVML, then the row's place under the roofs.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import torch

from roofline.analysis.placement import Roofs, intensity, place_row
from roofline.config import BlockConfig
from roofline.errors import Unsupported
from roofline.measure import train
from roofline.measure.device import ClockSampler, free_memory_bytes
from roofline.measure.timer import Timer, TimingStats, quantile
from roofline.ops.base import TOLERANCE, CheckFailed, Op, Variant, default_check, primary
from roofline.results import DeviceInfo, Row, Settings

CHECK_ROWS = 64


def base_row(op: Op, variant: Variant, c: BlockConfig) -> Row:
    flops, min_bytes = op.step_flops(c), op.step_bytes(c)
    row = Row(op=op.name, variant=variant.name, group=op.group, fused=variant.fused, unit=op.unit, model=c.name,
               batch=c.batch, seq_len=c.seq_len, q_len=c.q_len, kv_len=c.kv_len, dtype=c.dtype, mode=c.mode,
               per_block=op.per_block, flops=flops, min_bytes=min_bytes,
               intensity=intensity(flops, min_bytes))
    if c.mode == "train" and op.backward_flops and op.backward_bytes:
        row.backward_flops, row.backward_min_bytes = op.backward_flops(c), op.backward_bytes(c)
    return row


def predicted_bytes(op: Op, variant: Variant, c: BlockConfig) -> int:
    """Inputs + outputs + the variant's scratch, plus room for the float64 check (a generous 25 %).

    A causal mask halves the bytes an op must move, not the tensors it holds: the N×N scores are allocated whole,
    so the inputs and outputs are counted as the unmasked block's. Train mode: the backward's bytes too (the
    gradients), and the scratch twice (its gradient is as large).
    """
    scratch = variant.scratch_bytes(c) * (2 if c.mode == "train" else 1)
    return int(1.25 * (op.step_bytes(c.replace(causal=False)) + scratch))


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
    with ClockSampler(info) as clocks:
        stats = timer.time(timed, settings.budget_s, settings.min_samples,
                           first_s=None if grad_names else row.first_call_s)
    phases.mark(f"timing ({stats.samples} samples)")
    row.host_time_s = stats.host_s
    add_round(row, stats, clocks)
    if closures is not None:
        _time_backward(row, closures, timer, settings)
        phases.mark(f"backward timing ({row.backward_samples} samples)")
    place_row(row, roofs, op.roof)
    phases.report()


def add_round(row: Row, stats: TimingStats, clocks: ClockSampler) -> None:
    """One more round of samples into the row: its median joins round_medians_s, its samples the pool. The row's
    time is the median of the round medians (each round's median, so a slow stretch of the GPU that hits one round
    moves one value); p20/p80 are over every sample; the clocks are those of every round."""
    row.round_medians_s.append(stats.median_s)
    row.time_samples_s.extend(stats.samples_s)
    row.rounds = len(row.round_medians_s)
    row.samples = len(row.time_samples_s)
    ordered = sorted(row.time_samples_s)
    row.time_median_s = statistics.median(row.round_medians_s)
    row.time_p20_s, row.time_p80_s = quantile(ordered, 0.2), quantile(ordered, 0.8)
    row.rel_err, row.stop_reason = stats.rel_err, stats.stop_reason
    sm, sm_min, mem, throttle = clocks.summary()
    if sm is not None:  # a row's clock is the median over rounds of each round's median
        row.sm_clock_mhz = sm if row.rounds == 1 else int(statistics.median([row.sm_clock_mhz or sm, sm]))
        row.sm_clock_min_mhz = min(filter(None, (row.sm_clock_min_mhz, sm_min)))
        row.mem_clock_mhz = mem
    row.throttle = ",".join(sorted(set(filter(None, (row.throttle + "," + throttle).split(",")))))


def retime(row: Row, op: Op, variant: Variant, c: BlockConfig, info: DeviceInfo, roofs: Roofs, timer: Timer,
           settings: Settings, index: int) -> None:
    """Another round of an ok row (`--rounds N`): fresh inputs, a short warm-up, samples, no check (the first
    round checked this variant) — then the row is placed again. A failure ends the row's rounds, not the run."""
    device = info.torch_device
    gen = torch.Generator(device=device).manual_seed(settings.seed * 1000 + index + 7919 * row.rounds)
    try:
        inputs = op.make_inputs(c, device, gen)
        fn = variant.build(c, inputs)
        timed = fn
        if c.mode == "train" and op.unit != "comm":
            timed = train.closures(fn, inputs, train.require_grads(inputs), gen).step
        timer.warm_up(timed, row.first_call_s or 0.0)
        with ClockSampler(info) as clocks:
            stats = timer.time(timed, settings.budget_s, settings.min_samples)
        add_round(row, stats, clocks)
        place_row(row, roofs, op.roof)
    except Exception as exc:  # keep what the earlier rounds measured
        row.note = "; ".join(filter(None, (row.note, f"round {row.rounds + 1} failed: {type(exc).__name__}")))
    finally:
        if info.kind == "cuda":
            torch.cuda.empty_cache()


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
