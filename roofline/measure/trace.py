"""`roofline trace`: a user's model on the roofline — every kernel of a real step, its aten op, its module, its
FLOPs and compulsory bytes, placed against the same measured roofs as `profile`.

A run, and why in this order (results are saved after each part, atomically: an out-of-memory error or an
interrupt keeps what was measured):
1. roofs (session.load_roofs, as `profile`) and the run record;
2. warm-up steps (compile, autotune, allocator);
3. whole steps timed by CUDA events (CPU: perf_counter), and the memory one step allocates;
4. `repeats` steps under torch.profiler with the OpRecorder (op_recorder.py): every aten op call with the kernels
   it launched (CPU: its own time), its module and caller, FLOPs (aten_flops.py) and bytes; a call's time is the
   median over the repeats of its kernels' summed durations; calls are attributed to the block's ops and placed
   (analysis/trace.py);
5. one step under torch's FlopCounterMode, the check of the FLOPs.
The summed kernel time is set beside the step timed whole (they agree when the GPU never waits for the host).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from roofline.analysis.placement import Roofs, intensity, place_row
from roofline.analysis.trace import attribute, base_name, explain_cache_hits, unit_of
from roofline.errors import CannotRun, RooflineError
from roofline.measure import session
from roofline.measure.op_recorder import RANGE, ModuleStack, OpCall, OpRecorder
from roofline.measure.targets import Target, make_step
from roofline.measure.timer import quantile
from roofline.results import DeviceInfo, Results, Row, Settings, TraceOp, TraceRun, save

_CPU = torch.autograd.DeviceType.CPU
PROFILED = {"cuda": 3, "cpu": 2}  # profiled steps; a call's time is the median over them
TIMED = {"cuda": 10, "cpu": 3}  # steps timed whole
WARM_UP = {"cuda": 2, "cpu": 1}


def trace_callable(fn: Callable[..., object], args: tuple, kwargs: dict[str, object], mode: str = "prefill",
                   name: str | None = None, out: Path | None = None, repeats: int | None = None,
                   calibrate: bool = False, seed: int = 0) -> Results:
    """The Python API (roofline.trace): trace fn(*args, **kwargs) where its tensors are, as they are."""
    from roofline.measure.device import detect
    from roofline.measure.targets import api_config, api_target

    label = name or getattr(fn, "__name__", None) or type(fn).__name__
    config = api_config(label, mode, (args, kwargs), fn)
    target = api_target(fn, args, kwargs, config, label, "api")
    info = detect("cpu" if target.device.type == "cpu" else f"cuda:{target.device.index or 0}")
    return trace(target, info, out, ["(python) roofline.trace", label], repeats, calibrate, seed=seed)


def trace(target: Target, info: DeviceInfo, out_dir: Path | None, argv: list[str], repeats: int | None = None,
          calibrate: bool = False, listener: session.Listener | None = None, seed: int = 0) -> Results:
    """Trace one target (see the module docstring); returns the saved Results."""
    say = listener or session.Listener()
    started = time.perf_counter()
    repeats = repeats or PROFILED[info.kind]
    if repeats < 1:
        raise RooflineError(f"--repeats must be a positive integer, got {repeats}")
    roofs, measured = session.load_roofs(info, calibrate, say, target.config)
    settings = Settings(budget_s=0.0, min_samples=repeats, seed=seed)
    run = session.run_record(target.config, info, roofs, settings, argv, measured)
    run.fusion_groups, run.moe = [], None
    run.trace = TraceRun(target=target.name, kind=target.kind, attn_impl=target.attn_impl, layers=target.layers,
                         repeats=repeats, timer="cuda events" if info.kind == "cuda" else "perf_counter",
                         model_type=target.model_type, notes=list(target.notes))
    results = Results(run=run)
    keep = (lambda: save(results, out_dir)) if out_dir is not None else (lambda: None)
    keep()
    with _tf32(target.config.dtype == "tf32"):
        _measure(results, make_step(target), target, info, roofs, out_dir, repeats, say, keep)
    run.wall_s = time.perf_counter() - started
    keep()
    return results


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    """fp32 matmuls on TF32 tensor cores for --dtype tf32 only (as `profile`), restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _measure(results: Results, step: Callable[[], object], target: Target, info: DeviceInfo, roofs: Roofs,
             out_dir: Path | None, repeats: int, say: session.Listener, keep: Callable[[], None]) -> None:
    """Steps 2–5 of the module docstring, saving after each."""
    run = results.run
    assert run.trace is not None
    with _guard("the first step", out_dir):
        for _ in range(WARM_UP[info.kind]):
            step()
        _sync(info)
    say.info(f"Timing {TIMED[info.kind]} steps of {target.name}")
    with _guard("timing the step", out_dir):
        run.trace.peak_mem_bytes = _peak_memory(step, info)
        run.trace.step_samples_s = _time_steps(step, info, TIMED[info.kind])
        run.trace.step_time_s = statistics.median(run.trace.step_samples_s)
    keep()
    say.info(f"Profiling {repeats} steps (every kernel, its aten op and module)")
    with _guard("profiling the step", out_dir):
        results.rows = _profile(step, target, info, repeats, run.trace)
    attribute(results.rows, target.config)
    for row in results.rows:
        if row.time_median_s and row.min_bytes > 0:
            place_row(row, roofs)
    explain_cache_hits(results.rows, info.cache_bytes, roofs.error)
    keep()
    with _guard("counting FLOPs with FlopCounterMode", out_dir):
        run.trace.flop_counter_flops, run.trace.flop_counter_error = _flop_counter(step)


@contextlib.contextmanager
def _guard(doing: str, out_dir: Path | None) -> Iterator[None]:
    """Out of memory: one line, exit 3, what was measured saved. The target's own error: one line, exit 2."""
    saved = f"; what was measured is saved in {out_dir}" if out_dir is not None else ""
    try:
        yield
    except RooflineError:
        raise
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError, AssertionError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc) or "not enough memory" in str(exc):
            raise CannotRun(f"out of memory while {doing}: {_first_line(exc)}{saved}") from None
        if os.environ.get("ROOFLINE_DEBUG"):
            raise
        raise RooflineError(f"the traced step failed while {doing}: {type(exc).__name__}: {_first_line(exc)}"
                            f"{saved}") from None


def _sync(info: DeviceInfo) -> None:
    if info.kind == "cuda":
        torch.cuda.synchronize(info.torch_device)


def _time_steps(step: Callable[[], object], info: DeviceInfo, n: int) -> list[float]:
    """Seconds per step: CUDA events around each step on a GPU (after a sync), perf_counter on a CPU."""
    samples = []
    for _ in range(n):
        if info.kind == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            _sync(info)
            start.record()
            step()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            samples.append(time.perf_counter() - t0)
    return samples


def _peak_memory(step: Callable[[], object], info: DeviceInfo) -> int | None:
    """Bytes one step allocates beyond what was allocated before it (activations, scores, saved tensors)."""
    if info.kind != "cuda":
        return None
    _sync(info)
    torch.cuda.reset_peak_memory_stats(info.torch_device)
    base = torch.cuda.memory_allocated(info.torch_device)
    step()
    _sync(info)
    return torch.cuda.max_memory_allocated(info.torch_device) - base


def _profile(step: Callable[[], object], target: Target, info: DeviceInfo, repeats: int,
             record: TraceRun) -> list[Row]:
    """`repeats` steps under torch.profiler and the OpRecorder; one Row per call that did work."""
    from torch.profiler import ProfilerActivity, profile

    modules = ModuleStack()
    recorder = OpRecorder(modules)
    if target.root is not None:
        modules.attach(target.root)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if info.kind == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            for r in range(repeats):
                with recorder, recorder.step(r, record=r == 0):
                    out = step()
                if r == 0:
                    record.outputs = _escaping(recorder, target, out)
                _sync(info)
    finally:
        modules.detach()
    times, kernels, outside = _kernel_times(prof.events(), info.kind == "cuda")
    totals = [sum(per.values()) for per in times.values()]
    record.kernel_time_s = statistics.median(totals) if totals else None
    record.kernel_launches = sum(len(k) for k in kernels.values()) if info.kind == "cuda" else \
        sum(1 for call in recorder.calls if call.did_work)
    record.outside_launches, record.outside_time_s = len(outside) // repeats, sum(outside) / repeats
    return _rows(recorder.calls, times, kernels, target, info)


def _escaping(recorder: OpRecorder, target: Target, out: object) -> list[str]:
    """Ids of what the step hands back: its outputs and, after a backward, every gradient."""
    handed = list(target.output(out)) if out is not None else []
    if target.config.mode == "train":
        params = list(target.root.parameters()) if target.root is not None else []
        handed += [t.grad for t in [*params, *target.inputs] if t.grad is not None]
    return sorted({i for i in (recorder.tensor_id(t) for t in handed) if i})


def _kernel_times(events: list, cuda: bool) -> tuple[dict[int, dict[int, float]], dict[int, list[str]],
                                                     list[float]]:
    """From the profiler's events: seconds per (repeat, call), the kernels of each call of repeat 0, and the
    durations of kernels launched outside any call."""
    times: dict[int, dict[int, float]] = {}
    names: dict[int, list[str]] = {}
    outside: list[float] = []
    for e in events:
        if getattr(e, "device_type", _CPU) != _CPU:  # a kernel, or a range's annotation on the GPU's timeline
            continue
        if e.name.startswith(RANGE):
            repeat, index = (int(x) for x in e.name[len(RANGE):].split(":"))
            found = list(_kernels(e)) if cuda else []
            seconds = sum(k.duration for k in found) / 1e6 if cuda else e.time_range.elapsed_us() / 1e6
            times.setdefault(repeat, {})[index] = seconds
            if repeat == 0:
                names[index] = [k.name for k in found]
        elif cuda and e.kernels and not _inside_a_call(e):
            outside += [k.duration / 1e6 for k in e.kernels]
    return times, names, outside


def _kernels(e) -> Iterator:  # type: ignore[no-untyped-def]
    yield from e.kernels
    for child in e.cpu_children:
        yield from _kernels(child)


def _inside_a_call(e) -> bool:  # type: ignore[no-untyped-def]
    node = e.cpu_parent
    while node is not None:
        if node.name.startswith(RANGE):
            return True
        node = node.cpu_parent
    return False


def _rows(calls: list[OpCall], times: dict[int, dict[int, float]], kernels: dict[int, list[str]], target: Target,
          info: DeviceInfo) -> list[Row]:
    c = target.config
    creator: dict[int, OpCall] = {}
    for call in calls:
        if call.phase == "forward" and call.sequence_nr is not None:
            creator.setdefault(call.sequence_nr, call)
    rows = []
    for call in calls:
        launched = kernels.get(call.index, [])
        if (info.kind == "cuda" and not launched) or (info.kind != "cuda" and not call.did_work):
            continue
        forward = creator.get(call.node_sequence_nr) if call.node_sequence_nr is not None else None
        where = forward or call  # a backward op is where its forward op was: module, caller
        samples = [per[call.index] for per in times.values() if call.index in per]
        ordered = sorted(samples)
        nbytes = float(sum(call.reads.values()) + sum(call.writes.values()))
        flops = call.flops or 0.0
        rows.append(Row(
            op="", variant=base_name(call.aten_op), group="", fused=False, unit=unit_of(call.aten_op), model=c.name,
            batch=c.batch, seq_len=c.seq_len, q_len=c.q_len, kv_len=c.kv_len, dtype=call.dtype or c.dtype,
            mode=c.mode, per_block=1, flops=flops, min_bytes=nbytes, intensity=intensity(flops, nbytes),
            time_median_s=statistics.median(samples) if samples else None,
            time_p20_s=quantile(ordered, 0.2) if ordered else None,
            time_p80_s=quantile(ordered, 0.8) if ordered else None, samples=len(samples), time_samples_s=samples,
            note=_note(call),
            trace=TraceOp(index=call.index, aten_op=call.aten_op, phase=call.phase, module=where.module,
                          module_class=where.module_class, functions=where.functions, source=where.source,
                          kernels=launched, shapes=call.shapes, reads=call.reads, writes=call.writes,
                          torch_flops=call.torch_flops, flop_rule=call.flop_rule,
                          forward_index=forward.index if forward else None, node=call.node)))
    return rows


def _note(call: OpCall) -> str:
    from roofline import fmt

    if call.flop_rule == "none":
        return "no FLOP formula: placed by its bytes" + (f" ({call.flop_note})" if call.flop_note else "")
    if call.flop_rule == "attention" and call.torch_flops != call.flops:
        theirs = fmt.si(call.torch_flops) if call.torch_flops is not None else f"none ({call.flop_note})"
        return f"FLOPs of the pairs attended (torch's formula: {theirs})"
    return ""


def _flop_counter(step: Callable[[], object]) -> tuple[float | None, str]:
    """torch's FlopCounterMode over one step; its error in one line if it cannot count (GQA shapes in old torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops()), ""
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        return None, f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
