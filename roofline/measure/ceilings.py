"""Measured ceilings ("the honest roof"), cached per device.

Datasheet peaks are marketing numbers; these are what the device really does:
- DRAM bandwidth: copy (bytes read + written), read-only (a sum) and write-only (a fill) on buffers far
  larger than L2; L2 bandwidth: a copy whose source and destination both fit in L2.
- Tensor-core FLOP/s per dtype: the best over a small search of GEMM shapes (the MAMF-finder method), since
  one shape can miss the library's best tile; fp8 through torch._scaled_mm on Hopper.
- CUDA-core fp32 FLOP/s: an fp32 GEMM with TF32 off (FFMA on the CUDA cores).
- CPU: the same copy/read/write bandwidths and fp32/bf16 GEMM FLOP/s, so the CPU roofline is measured too.

The cache key is the device name, driver and max clocks; a corrupt cache file is re-measured with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from roofline.measure.timer import Timer, sample_until_stable
from roofline.results import CEILINGS_VERSION, Ceilings, DeviceInfo, atomic_write

# The MAMF-finder's cubes and the default block's own projections (gpt-7b at seq 8192: QKV, out, FFN up and down,
# M×N×K), so that the roof bounds the block's GEMMs; each measured in short bursts after an idle pause (the
# sustained-burst peak, not the power-capped steady state of a long loop).
GPU_GEMM_SHAPES = ((8192, 8192, 8192), (4096, 4096, 4096), (6144, 6144, 6144), (8192, 8192, 4096),
                   (16384, 8192, 8192), (4096, 16384, 4096), (8192, 12288, 4096), (8192, 4096, 4096),
                   (8192, 16384, 4096), (8192, 4096, 16384))
CPU_GEMM_SHAPES = ((512, 512, 512), (768, 768, 768), (1024, 1024, 1024), (1536, 4096, 1536))
CPU_CALL_BUDGET_S = 0.15  # a CPU GEMM of the calibration takes about this long at most (its rows M are cut to fit)
CPU_MIN_ROWS = 256  # a block shape cut below this many rows says nothing about the block's GEMM: left out
CPU_PROBE_SIZE = 512  # the probe that estimates a dtype's GEMM rate before the shapes are sized


def roof_key(dtype: str) -> str:
    """The peak_flops key a GEMM of this dtype measures: fp32 without TF32 runs on the CUDA cores / CPU vector units."""
    return "vector.fp32" if dtype == "fp32" else f"tensor.{dtype}"


def cache_key(info: DeviceInfo) -> str:
    """Name + driver + max clocks (+ threads on CPU): a new driver or clock setting invalidates the cache."""
    parts = [info.name, info.driver, str(info.max_sm_clock_mhz), str(info.max_mem_clock_mhz),
             str(info.cpu_threads)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("ROOFLINE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "roofline")
    return Path(base) / "ceilings"


def cache_path(info: DeviceInfo) -> Path:
    return cache_dir() / f"{info.slug}-{cache_key(info)}.json"


def load_cached(info: DeviceInfo, warn: Callable[[str], None] = lambda m: None) -> Ceilings | None:
    """The cached ceilings for this device, or None (missing, other key, or corrupt: with a warning)."""
    path = cache_path(info)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        ceilings = Ceilings(**data)
        if ceilings.key != cache_key(info) or ceilings.version != CEILINGS_VERSION or not ceilings.peak_flops:
            raise ValueError("stale entry")
        return ceilings
    except (ValueError, TypeError) as exc:
        warn(f"ceilings cache {path} is unreadable ({exc}); measuring again")
        return None


def forget(info: DeviceInfo) -> None:
    """Drop this device's cached ceilings (a run beat them: they are no ceiling)."""
    cache_path(info).unlink(missing_ok=True)


def save(ceilings: Ceilings, path: Path) -> None:
    atomic_write(path, json.dumps(ceilings.to_dict(), indent=2))


def get_ceilings(info: DeviceInfo, force: bool = False, quick: bool = False,
                 warn: Callable[[str], None] = lambda m: None, dtypes: tuple[str, ...] = (),
                 shapes: tuple[tuple[int, int, int], ...] = (),
                 say: Callable[[str], None] = lambda m: None) -> tuple[Ceilings, bool]:
    """(ceilings, from_cache): the cached ceilings, else measure and cache them.

    A cached entry is used unless `force`, or it is a quick one and a full calibration is asked for. A CPU entry
    that lacks a GEMM dtype the run needs (`dtypes`) gets just that dtype measured and added.
    """
    cached = None if force else load_cached(info, warn)
    if cached is not None and cached.quick and not quick:
        say("the cached roofs came from a quick calibration: measuring them fully")
        cached = None
    if cached is not None:
        missing = tuple(d for d in dtypes if roof_key(d) not in cached.peak_flops)
        if not missing or info.kind != "cpu":
            return cached, True
        _measure_gemms(cached, info, Timer(info.torch_device), missing, shapes, say)
        save(cached, cache_path(info))
        return cached, False
    ceilings = calibrate(info, quick=quick, dtypes=dtypes, shapes=shapes, say=say)
    save(ceilings, cache_path(info))
    return ceilings, False


def calibrate(info: DeviceInfo, quick: bool = False, dtypes: tuple[str, ...] = (),
              shapes: tuple[tuple[int, int, int], ...] = (), say: Callable[[str], None] = lambda m: None) -> Ceilings:
    """Measure the roofs of this device: a few seconds on a GPU, at most ~30 s on a CPU.

    GPU: every dtype, the GEMM shapes of GPU_GEMM_SHAPES (`quick`: the first two) and `shapes`. CPU: `dtypes`
    (quick; all of fp32 and bf16 otherwise), the shapes of CPU_GEMM_SHAPES and `shapes` (the block's own GEMMs,
    so that the roof bounds them), each cut to CPU_CALL_BUDGET_S per call: a CPU that emulates bf16 runs it at
    ~1 GFLOP/s, where one full-size GEMM would take minutes.
    """
    t0 = time.perf_counter()
    timer = Timer(info.torch_device)
    c = Ceilings(device=info.name, key=cache_key(info), measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 torch=torch.__version__, quick=quick)
    say("memory bandwidth (copy, read, write" + (", add)" if info.kind == "cpu" else ")"))
    if info.kind == "cuda":
        _gpu_bandwidths(c, info, timer)
        gemm_dtypes = tuple(gpu_gemm_dtypes(info))
        all_shapes = (GPU_GEMM_SHAPES[:2] if quick else GPU_GEMM_SHAPES) + tuple(shapes)
    else:
        _cpu_bandwidths(c, timer, quick)
        gemm_dtypes = tuple(dict.fromkeys(("fp32", *dtypes))) if quick or dtypes else ("fp32", "bf16")
        all_shapes = CPU_GEMM_SHAPES + tuple(shapes)
    _measure_gemms(c, info, timer, gemm_dtypes, all_shapes, say)
    c.wall_s = time.perf_counter() - t0
    return c


def _measure_gemms(c: Ceilings, info: DeviceInfo, timer: Timer, dtypes: tuple[str, ...],
                   shapes: tuple[tuple[int, int, int], ...], say: Callable[[str], None]) -> None:
    """GEMM rates of each dtype over the shapes; each dtype's best is its roof (the MAMF-finder method)."""
    for dtype in dtypes:
        say(f"{dtype} matmul rates")
        if info.kind == "cpu":
            sized = cpu_shapes(shapes, _probe_rate(timer, info, dtype))
        else:
            sized = tuple(dict.fromkeys(shapes or GPU_GEMM_SHAPES))
        rates = {f"{m}x{n}x{k}": _gemm_rate(timer, info, dtype, m, n, k) for m, n, k in sized}
        if rates:
            c.gemm_shapes[dtype] = rates
            c.peak_flops[roof_key(dtype)] = max(rates.values())


def cpu_shapes(shapes: tuple[tuple[int, int, int], ...], rate: float,
               budget_s: float = CPU_CALL_BUDGET_S) -> tuple[tuple[int, int, int], ...]:
    """The shapes cut so that one call takes about budget_s at `rate` FLOP/s. A shape keeps its N and K and loses
    rows M (a CPU GEMM's rate barely changes with M past a few hundred rows); one that would keep fewer than
    CPU_MIN_ROWS is left out, and a cube too large for the budget shrinks to one that fits."""
    out = []
    for m, n, k in shapes:
        fit = int(budget_s * rate / (2 * n * k))
        if fit >= min(m, CPU_MIN_ROWS):
            out.append((min(m, fit), n, k))
        elif m == n == k:
            side = max(16, int((budget_s * rate / 2) ** (1 / 3)) // 16 * 16)
            out.append((side, side, side))
    return tuple(dict.fromkeys(out))


def _probe_rate(timer: Timer, info: DeviceInfo, dtype: str) -> float:
    """A GEMM rate of this dtype from a warm cube (best of three calls), to size the calibration's shapes."""
    n = CPU_PROBE_SIZE
    a, b = (torch.randn(n, n, dtype=_TORCH_DTYPES[dtype]) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / max(best, 1e-9)


def gpu_gemm_dtypes(info: DeviceInfo) -> list[str]:
    dtypes = ["fp32", "tf32", "bf16", "fp16"]
    major, minor = (int(x) for x in (info.compute_capability or "0.0").split("."))
    if (major, minor) >= (8, 9) and hasattr(torch, "_scaled_mm"):
        dtypes.append("fp8")
    return dtypes


_TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _rate(timer: Timer, fn: Callable[[], object], work: float, budget_s: float = 0.3) -> float:
    """work / median time of fn (after a warm-up call)."""
    _, first = timer.first_call(fn)
    timer.warm_up(fn, first)
    stats = sample_until_stable(lambda k: timer.run_batch(fn, k, flush=False), budget_s, min_samples=5)
    return work / stats.median_s


def _bandwidths(timer: Timer, device: torch.device, n: int, budget_s: float) -> tuple[float, float, float]:
    """(copy, read, write) bytes/s on fp32 buffers of n bytes; copy counts bytes read plus bytes written."""
    src = torch.empty(n // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return (_rate(timer, lambda: dst.copy_(src), 2 * n, budget_s), _rate(timer, lambda: src.sum(), n, budget_s),
            _rate(timer, lambda: dst.fill_(1.0), n, budget_s))


def _gpu_bandwidths(c: Ceilings, info: DeviceInfo, timer: Timer) -> None:
    device = info.torch_device
    c.memory_bandwidth, c.read_bandwidth, c.write_bandwidth = _bandwidths(timer, device, 1 << 30, 0.3)
    small = max(info.l2_bytes // 4, 1 << 20)  # source + destination fill half of L2
    try:
        c.l2_bandwidth = _l2_copy_bandwidth(timer, device, small)
    except RuntimeError:  # no CUDA graphs here: one launch per copy (launch-bound, so it reads low)
        c.l2_bandwidth = _bandwidths(timer, device, small, 0.2)[0]


def _l2_copy_bandwidth(timer: Timer, device: torch.device, n: int, copies: int = 50) -> float:
    """Copy bandwidth of a buffer pair that fits in L2, with `copies` copies replayed as one CUDA graph.

    One 12 MB copy takes a few microseconds from L2, about what a kernel launch costs, so timing launches
    one by one measures the launcher (≈2 TB/s on an H100, below its DRAM copy rate); a graph replay has no
    launch gaps between the copies.
    """
    src = torch.empty(n // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            dst.copy_(src)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(copies):
            dst.copy_(src)
    return _rate(timer, graph.replay, copies * 2 * n, 0.2)


def _cpu_bandwidths(c: Ceilings, timer: Timer, quick: bool) -> None:
    """Copy, read and write on buffers far beyond the last-level cache; the best of a few bursts, so that a moment of
    other work on a shared machine does not become the roof. The memory roof is the better of copy and STREAM's
    add (two reads, one write): a CPU's add outruns its copy (a residual add reached 118 % of a copy roof on the
    2-core EPYC), and a roof the block's own element-wise ops beat is no roof. Copy and add are the best of bursts
    spread over half a second: back-to-back bursts all met one slow moment of the shared VM once (add 20.9 GB/s,
    then the run's residual add reached 27.4, 131 % of that roof; 25–27 GB/s is the machine's usual add)."""
    n = (96 if quick else 256) << 20
    # every page touched before timing (first-touch faults are not bandwidth); the values do not matter to the
    # traffic, so constant fills, not random ones (0.4 s of a single-threaded normal_ on the 2-core VM)
    src, other, dst = (torch.full((n // 4,), value, dtype=torch.float32) for value in (1.0, 2.0, 0.0))
    spread = {"bursts": 6, "per_burst": 3, "pause_s": 0.05}  # the best of six moments over ~0.5 s, not one
    copy = _burst_rate(timer, lambda: dst.copy_(src), 2 * n, **spread)
    add = _burst_rate(timer, lambda: torch.add(src, other, out=dst), 3 * n, **spread)
    c.memory_bandwidth = max(copy, add)
    c.read_bandwidth = _burst_rate(timer, lambda: src.sum(), n, pause_s=0.0, per_burst=3)
    c.write_bandwidth = _burst_rate(timer, lambda: dst.fill_(1.0), n, pause_s=0.0, per_burst=3)


def _burst_rate(timer: Timer, fn: Callable[[], object], work: float, bursts: int = 4, per_burst: int = 8,
                pause_s: float = 0.05) -> float:
    """work / the best burst's median time: short bursts separated by idle pauses.

    A long back-to-back GEMM loop pushes an H100 into its power cap (NVML 'sw_power_cap', SM clock 1980 →
    ~1500 MHz), which a profiled GEMM between lighter ops rarely meets; measured that way the roof sat below
    what the block's own GEMMs reached (106 % of roof). Bursts after a pause measure the sustained-burst peak,
    the MAMF finder's quantity, instead of the thermal steady state. On a CPU the best burst keeps a
    moment of other work on a shared machine out of the roof.
    """
    _, first = timer.first_call(fn)
    timer.warm_up(fn, first)
    best = float("inf")
    for _ in range(bursts):
        if pause_s:
            time.sleep(pause_s)
            fn()  # one call to leave the idle clocks behind
        samples = sorted(timer.run_batch(fn, per_burst, flush=False))
        best = min(best, samples[len(samples) // 2])
    return work / best


def _gemm_rate(timer: Timer, info: DeviceInfo, dtype: str, m: int, n: int, k: int) -> float:
    device = info.torch_device
    work = 2.0 * m * n * k
    if dtype == "fp8":
        a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        return _burst_rate(timer, lambda: torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16), work)
    torch_dtype = _TORCH_DTYPES[dtype]
    a = torch.randn(m, k, device=device, dtype=torch_dtype)
    b = torch.randn(k, n, device=device, dtype=torch_dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        if device.type == "cuda":
            return _burst_rate(timer, lambda: a @ b, work)
        # the CPU: the best of six single calls. This VM's GEMM rate drifts 20-30 % from one second to the next, and
        # the median of a burst of three (caught in a slow moment) was beaten by the block's own out_proj (103.5 %)
        return _burst_rate(timer, lambda: a @ b, work, bursts=6, per_burst=1, pause_s=0.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
