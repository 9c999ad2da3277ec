"""Time explicit configurations of our flash-attention kernel on this GPU, without autotune.

    python3 scripts/tune_flash.py | tee tune_flash.txt   # all cases and paths: 60-85 s on an H100
    python3 scripts/tune_flash.py --cases d128 --paths ptr,tma --rows 0 --budget-s 60

For each case — (d=128, full), (d=128, causal), (d=64, full) at b=1, h=32, N=8192, bf16 — it

1. compiles every configuration that fits (kernels/flash_attention.py: fits) in parallel worker
   processes, which fill Triton's on-disk cache (a configuration that fails there is reported and not
   run again here, so a kernel that faults cannot take this process's CUDA context down);
2. runs each one once and checks it against torch SDPA (relative Frobenius error < 2e-2);
3. times it with triton.testing.do_bench(warmup=25, rep=100, return_mode="median"), beside SDPA's
   flash and cuDNN back ends and our autotuned launcher (its current TUNED_CONFIGS list);
4. prints a table per case, fastest first, and at the end the best configurations as Python literals.

Paths: ptr (pointer loads, the full grid BLOCK_M {64, 128} × BLOCK_N {32, 64, 128} × warps {4, 8} ×
stages {2, 3, 4, 5}), tma (K/V through TMA descriptors; the same grid less BLOCK_M 64 with 8 warps)
and tma+sq (TMA, and q pre-scaled so Q·Kᵀ reads q from registers; BLOCK_M 128, 8 warps, stages
{2, 3, 4}). FLOPs: 4·b·h·N²·d, half that when causal. Columns: registers per thread, spill (local
memory bytes per thread), shared memory, CTA/SM (occupancy from registers, shared memory and warps),
serial (ptxas serialised the wgmma pipeline: each matmul waits for the previous one; slow).
--budget-s bounds the run: past it no new configuration is timed (each case gets a fair share).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import pprint
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
import triton
from roofline.kernels import flash_attention as fa
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention as sdpa
from triton.testing import do_bench

BATCH, HEADS, SEQ_LEN = 1, 32, 8192
CASES = {"d128": (128, False), "d128-causal": (128, True), "d64": (64, False)}
TOLERANCE = 2e-2
SM_SHARED_BYTES, SM_REGISTERS, SM_WARPS = 228 * 1024, 65536, 64  # per H100 SM


def grid(path: str, head_dim: int) -> list[dict]:
    """The configurations of one path, as make_config keyword arguments, before fits() prunes them."""
    if path == "ptr":
        shapes = [(m, n, w, s) for m in (64, 128) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4, 5)]
    elif path == "tma":
        shapes = [(128, n, w, s) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4, 5)]
        shapes += [(64, n, 4, s) for n in (32, 64, 128) for s in (2, 3, 4, 5)]
    else:  # tma+sq
        shapes = [(128, n, 8, s) for n in (32, 64, 128) for s in (2, 3, 4)]
    return [dict(block_m=m, block_n=n, num_warps=w, num_stages=s, tma=path != "ptr", scale_q=path == "tma+sq")
            for m, n, w, s in shapes]


def name(cfg: dict) -> str:
    flags = "".join(f" {flag}" for flag, on in (("tma", cfg["tma"]), ("sq", cfg["scale_q"])) if on)
    return f"M{cfg['block_m']} N{cfg['block_n']} w{cfg['num_warps']} s{cfg['num_stages']}{flags}"


def inputs(head_dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(BATCH, HEADS, SEQ_LEN, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                 for _ in range(3))


_worker_inputs: dict[int, tuple] = {}


def compile_one(head_dim: int, causal: bool, cfg: dict) -> str | None:
    """Worker process: compile (and run once) one configuration, so it lands in Triton's disk cache."""
    try:
        if head_dim not in _worker_inputs:
            _worker_inputs[head_dim] = inputs(head_dim)
        fa._launch(*_worker_inputs[head_dim], causal, head_dim ** -0.5, fa.make_config(**cfg))
        torch.cuda.synchronize()
        return None
    except Exception as e:  # any failure is reported, the run goes on
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"


def precompile(jobs: list[tuple[int, bool, dict]], workers: int) -> dict[tuple, str]:
    """Compile all jobs in parallel processes; returns the errors by (head_dim, causal, name)."""
    errors: dict[tuple, str] = {}
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(compile_one, *job): job for job in jobs}
            lost = 0
            for done, future in enumerate(as_completed(futures), 1):
                head_dim, causal, cfg = futures[future]
                try:
                    error = future.result()
                except Exception:  # a crashed worker: the timing phase compiles these in this process
                    error, lost = None, lost + 1
                if error:
                    errors[(head_dim, causal, name(cfg))] = error
                if done % 20 == 0 or done == len(jobs):
                    print(f"  compiled {done}/{len(jobs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if lost:
                print(f"  {lost} compiles lost with a crashed worker; they compile while timing", flush=True)
    except Exception as e:  # the pool itself failed: compile lazily while timing
        print(f"  parallel compile stopped ({type(e).__name__}: {e}); the rest compiles while timing", flush=True)
    return errors


def jit_cache() -> dict:
    """The JIT's in-memory cache of compiled kernels for this GPU ({} where Triton keeps it elsewhere)."""
    try:
        return fa._attn_fwd_kernel.device_caches[torch.cuda.current_device()][0]
    except Exception:  # another Triton version, or no GPU
        return {}


def kernel_stats(kernel, num_warps: int) -> dict:
    """Registers and spills per thread, shared memory, CTAs per SM and whether ptxas serialised wgmma."""
    if kernel is None:
        return {}
    threads, shared = 32 * num_warps, kernel.metadata.shared
    by_regs = SM_REGISTERS // (max(8, math.ceil(kernel.n_regs / 8) * 8) * threads)
    stats = {"regs": kernel.n_regs, "spills": kernel.n_spills, "smem_kb": shared / 1024,
             "ctas": min(by_regs, SM_SHARED_BYTES // (shared + 1024), SM_WARPS // num_warps)}
    try:
        sass = kernel.asm["sass"]
        mma, waits = len(re.findall(r"\bHGMMA\.", sass)), len(re.findall(r"WARPGROUP\.DEPBAR", sass))
        stats["serial"] = "yes" if mma and 2 * waits > mma else ""
    except Exception:  # no disassembler here: leave the column empty
        stats["serial"] = "?"
    return stats


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def time_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def sdpa_with(backend, q, k, v, causal: bool) -> torch.Tensor:
    with sdpa_kernel(backend):
        return sdpa(q, k, v, is_causal=causal)


def baselines(q, k, v, causal: bool) -> list[tuple[str, float | str]]:
    """Times of SDPA's flash and cuDNN back ends, and of our autotuned launcher (its TUNED_CONFIGS;
    the cold call compiles the configurations whose kernels the grid did not already build)."""
    rows = []
    for label, backend in (("SDPA flash", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
        try:
            sdpa_with(backend, q, k, v, causal)
            rows.append((label, time_ms(lambda b=backend: sdpa_with(b, q, k, v, causal))))
        except Exception as e:  # a back end this build or GPU lacks
            rows.append((label, f"unavailable: {type(e).__name__}"))
    scale = q.shape[-1] ** -0.5
    t0 = time.perf_counter()
    fa.flash_attention(q, k, v, causal=causal, scale=scale)
    label = f"ours, autotuned (cold {time.perf_counter() - t0:.1f} s)"
    rows.append((label, time_ms(lambda: fa.flash_attention(q, k, v, causal=causal, scale=scale))))
    return rows


def run_case(label: str, head_dim: int, causal: bool, configs: list[dict], compile_errors: dict,
             deadline: float, rows: int) -> list[dict]:
    """Check and time every configuration of one case until the deadline; print its table; return the
    results, fastest first."""
    flops = 4 * BATCH * HEADS * SEQ_LEN * SEQ_LEN * head_dim / (2 if causal else 1)
    tflops = lambda ms: flops / (ms * 1e-3) / 1e12
    q, k, v = inputs(head_dim)
    scale = head_dim ** -0.5
    ref = sdpa(q, k, v, is_causal=causal)
    baseline_rows = baselines(q, k, v, causal)
    results, failures = [], []
    for i, cfg in enumerate(configs, 1):
        if i % 20 == 0:
            print(f"  {label}: {i}/{len(configs)}", flush=True)
        key = (head_dim, causal, name(cfg))
        if key in compile_errors:
            failures.append((name(cfg), "compile/launch: " + compile_errors[key]))
            continue
        if time.perf_counter() > deadline:
            failures.append((name(cfg), "skipped: time budget"))
            continue
        config = fa.make_config(**cfg)
        cache = jit_cache()
        cache.clear()  # so the one kernel in it afterwards is this configuration's (reloaded from disk)
        try:
            err = relative_error(fa._launch(q, k, v, causal, scale, config), ref)
            if not err < TOLERANCE:
                failures.append((name(cfg), f"wrong: relative error {err:.2e} vs SDPA"))
                continue
            ms = time_ms(lambda c=config: fa._launch(q, k, v, causal, scale, c))
        except Exception as e:  # one failing configuration never stops the run
            failures.append((name(cfg), f"{type(e).__name__}: {str(e).strip()[:160]}"))
            continue
        kernels = list(cache.values())
        stats = kernel_stats(kernels[0] if len(kernels) == 1 else None, cfg["num_warps"])
        results.append({**cfg, "ms": ms, "tflops": tflops(ms), "err": err, **stats})

    results.sort(key=lambda r: r["ms"])
    print(f"\n== {label}: b={BATCH} h={HEADS} N={SEQ_LEN} d={head_dim} bf16 {'causal' if causal else 'full'}, "
          f"{flops / 1e12:.3f} TFLOP", flush=True)
    for text, ms in baseline_rows:
        print(f"   {text:<36} " + (f"{ms:8.3f} ms {tflops(ms):6.0f} TFLOP/s" if isinstance(ms, float) else ms))
    print(f"   {'#':>3} {'config':<24} {'ms':>8} {'TFLOP/s':>8} {'regs':>5} {'spill':>5} {'smemKB':>7} "
          f"{'CTA/SM':>6} {'serial':>6} {'rel err':>8}")
    for rank, r in enumerate(results[:rows or None], 1):
        smem = f"{r['smem_kb']:.0f}" if "smem_kb" in r else ""
        print(f"   {rank:>3} {name(r):<24} {r['ms']:8.3f} {r['tflops']:8.0f} {r.get('regs', ''):>5} "
              f"{r.get('spills', ''):>5} {smem:>7} {r.get('ctas', ''):>6} {r.get('serial', ''):>6} {r['err']:8.1e}")
    if rows and len(results) > rows:
        print(f"   ... {len(results) - rows} slower ones (--rows 0 shows all), the slowest: {name(results[-1])} "
              f"{results[-1]['ms']:.3f} ms")
    by_reason: dict[str, list[str]] = {}
    for text, why in failures:
        by_reason.setdefault(why, []).append(text)
    for why, texts in by_reason.items():
        print(f"   --- {why}: {', '.join(texts)}")
    sys.stdout.flush()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--paths", default="ptr,tma,tma+sq", help="comma-separated, of ptr, tma, tma+sq")
    parser.add_argument("--jobs", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                        help="compile processes")
    parser.add_argument("--budget-s", type=float, default=80.0,
                        help="start no new timing after this many seconds from the start")
    parser.add_argument("--rows", type=int, default=16, help="table rows per case (0: all)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 3
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"TMA {'yes' if fa.tma_supported(torch.device('cuda')) else 'no'}", flush=True)
    cases = [c for c in args.cases.split(",") if c]
    paths = [p for p in args.paths.split(",") if p]
    if not fa.tma_supported(torch.device("cuda")):
        paths = [p for p in paths if p == "ptr"]
    plan: dict[str, list[dict]] = {}
    for label in cases:
        head_dim, _ = CASES[label]
        candidates = [cfg for path in paths for cfg in grid(path, head_dim)]
        plan[label] = [cfg for cfg in candidates if fa.fits(fa.make_config(**cfg), head_dim)]
        skipped = [name(cfg) for cfg in candidates if cfg not in plan[label]]
        print(f"{label}: {len(plan[label])} configurations; {len(skipped)} do not fit registers/shared memory: "
              + ", ".join(skipped), flush=True)

    jobs = [(CASES[label][0], CASES[label][1], cfg) for label in cases for cfg in plan[label]]
    print(f"compiling {len(jobs)} kernels in {args.jobs} processes", flush=True)
    compile_errors = precompile(jobs, args.jobs)
    print(f"compiled in {time.perf_counter() - t_start:.0f} s, {len(compile_errors)} failed", flush=True)
    if jobs and len(compile_errors) == len(jobs):  # the workers, not the configurations: retry each here
        print("  every worker job failed, e.g. " + next(iter(compile_errors.values())), flush=True)
        compile_errors = {}

    best: dict[str, list[dict]] = {}
    for n, label in enumerate(cases):
        head_dim, causal = CASES[label]
        now = time.perf_counter()
        deadline = now + (t_start + args.budget_s - now) / (len(cases) - n)  # a fair share of what is left
        results = run_case(label, head_dim, causal, plan[label], compile_errors, deadline, args.rows)
        best[label] = [{key: r[key] for key in ("block_m", "block_n", "num_warps", "num_stages", "tma", "scale_q")}
                       | {"ms": round(r["ms"], 4), "tflops": round(r["tflops"], 1)} for r in results[:4]]

    print("\n# best configuration per case, then the four fastest (paste back):")
    print("BEST = " + repr({label: rows[0] for label, rows in best.items() if rows}))
    print("TOP4 = " + pprint.pformat(best, width=200, sort_dicts=False))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
