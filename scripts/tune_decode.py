"""Time the split-KV decode kernel (kernels/flash_decoding.py) against SDPA on a GPU (not part of the tool).

For llama3-8b's attention (32 query heads, 8 KV heads, head_dim 128, bf16) at one decode step over a KV cache
of 8192 keys, batch 1 and 64, prints the median time (triton.testing.do_bench, L2 flushed before each run) and
the achieved bandwidth of the compulsory K/V read, 2·batch·kv_heads·kv_len·head_dim·2 bytes, for:
1. SDPA's flash and cuDNN back ends (torch.nn.attention.sdpa_kernel) and our prefill kernel
   (kernels/flash_attention.py: one program per query head, no split);
2. ours over num_splits at the default tile (default_num_splits' choice marked *);
3. ours over tiles (block_n, num_warps, num_stages) at the default and the best num_splits.
Each of ours is first checked against the float64 reference of the first two sequences.
usage: python3 scripts/tune_decode.py [--batches 1,64] [--kv-len 8192] [--kv-heads 8] [--head-dim 128]
"""

from __future__ import annotations

import argparse
import itertools
import sys

import roofline.kernels.flash_attention as fa
import roofline.kernels.flash_decoding as fd
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

SPLITS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)
TILES = [dict(block_n=n, num_warps=w, num_stages=s) for n, w, s in itertools.product((32, 64, 128), (4, 8), (2, 3, 4))]
DEFAULT_TILE = dict(block_n=fd.default_block_n(), num_warps=4, num_stages=2)
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def baselines(q, k, v) -> list[tuple[str, float | str]]:
    gqa = q.shape[1] != k.shape[1]
    rows: list[tuple[str, float | str]] = []
    for label, backend in (("SDPA flash", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
        def run(b=backend):
            with sdpa_kernel(b):
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        try:
            run()
            rows.append((label, median_ms(run)))
        except Exception as e:  # a back end this build, GPU or shape lacks
            rows.append((label, f"unavailable: {type(e).__name__}: {str(e).strip().splitlines()[0][:100]}"))
    rows.append(("flash_attention.py (no split)", median_ms(lambda: fa.flash_attention(q, k, v))))
    return rows


def time_ours(q, k, v, ref, num_splits: int, tile: dict) -> tuple[float, float] | str:
    """(ms, relative error), or why it did not run."""
    try:
        err = relative_error(fd.flash_decoding(q, k, v, num_splits=num_splits, **tile)[:2], ref)
        if not err <= TOLERANCE[q.dtype]:
            return f"wrong: relative error {err:.1e}"
        return median_ms(lambda: fd.flash_decoding(q, k, v, num_splits=num_splits, **tile)), err
    except Exception as e:  # a tile that does not compile or fit must not stop the sweep
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"


def run_case(batch: int, heads: int, kv_heads: int, kv_len: int, head_dim: int, dtype: torch.dtype) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, heads, 1, head_dim, device="cuda", dtype=dtype, generator=gen)
    k, v = (torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", dtype=dtype, generator=gen)
            for _ in range(2))
    ref = fd.flash_decoding_reference(q[:2], k[:2], v[:2])
    kv_bytes = 2 * k.numel() * k.element_size()
    runs = fd.split_plan  # splits that round to the same plan run the same kernel: time each plan once
    default = runs(kv_len, fd.default_num_splits(batch, kv_heads, kv_len, q.device), DEFAULT_TILE["block_n"])[0]

    def tbps(ms: float) -> float:
        return kv_bytes / (ms * 1e-3) / 1e12

    print(f"\n== b={batch} heads={heads} kv_heads={kv_heads} kv={kv_len} d={head_dim} {dtype}: "
          f"K/V {kv_bytes / 1e6:.1f} MB, default num_splits {default}", flush=True)
    for label, ms in baselines(q, k, v):
        print(f"   {label:<32} " + (f"{ms:8.4f} ms {tbps(ms):6.2f} TB/s" if isinstance(ms, float) else ms))

    def show(rows: list[tuple[int, dict, tuple[float, float] | str]]) -> None:
        print(f"   {'splits':>7} {'block_n':>7} {'warps':>5} {'stages':>6} {'ms':>8} {'TB/s':>6} {'rel err':>8}")
        timed = sorted((r for r in rows if not isinstance(r[2], str)), key=lambda r: r[2][0])
        for s, tile, (ms, err) in timed:
            mark = "*" if s == default and tile == DEFAULT_TILE else " "
            print(f"   {s:>6}{mark} {tile['block_n']:>7} {tile['num_warps']:>5} {tile['num_stages']:>6} "
                  f"{ms:8.4f} {tbps(ms):6.2f} {err:8.1e}")
        for s, tile, why in (r for r in rows if isinstance(r[2], str)):
            print(f"   {s:>7} {tile['block_n']:>7} {tile['num_warps']:>5} {tile['num_stages']:>6} {why}")
        sys.stdout.flush()

    splits = sorted({runs(kv_len, s, DEFAULT_TILE["block_n"])[0] for s in (*SPLITS, default)})
    rows = [(s, DEFAULT_TILE, time_ours(q, k, v, ref, s, DEFAULT_TILE)) for s in splits]
    print("   -- num_splits at the default tile")
    show(rows)
    timed = [r for r in rows if not isinstance(r[2], str)]
    best = min(timed, key=lambda r: r[2][0])[0] if timed else default
    print(f"   -- tiles at num_splits {default} (default) and {best} (best above)")
    show([(s, tile, time_ours(q, k, v, ref, s, tile)) for s in sorted({default, best}) for tile in TILES])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--kv-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128, choices=fd.HEAD_DIMS)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 3
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, triton {triton.__version__}")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    for batch in (int(b) for b in args.batches.split(",") if b):
        run_case(batch, args.heads, args.kv_heads, args.kv_len, args.head_dim, dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
