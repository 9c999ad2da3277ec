"""Tune and diagnose the fused residual + dropout + norm kernel's training step on a GPU (not part of the tool).

For [rows, 4096] bf16 (rows 4096 and 8192), prints:
1. the backward's GPU time (kernel + the partial sums' torch sum) for each launch shape in
   kernels/fused_add_dropout_norm_backward.py (warps; rows per column-sum split; column-sum tile), the six
   best first with their bandwidth over the compulsory 5·rows·d elements, then keeps the best;
2. for eager, torch.compile and our Triton variant: forward, backward and step GPU time (CUDA events behind a
   blocking sleep, so the host's launch time is hidden) and the host's time per call (enqueue only): a step
   whose host time exceeds its GPU time is host-bound, and a per-op timing from an idle GPU measures the host.
usage: python3 scripts/tune_norm.py [layernorm|rmsnorm] [p]   (default: layernorm 0.1)
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time

import roofline.kernels.fused_add_dropout_norm as fused
import roofline.kernels.fused_add_dropout_norm_backward as fused_backward
import torch
import torch.nn.functional as F

D, EPS = 4096, 1e-5
NORM, P = "layernorm", 0.1  # set from the command line: tune_norm.py [layernorm|rmsnorm] [p]
KNOBS = ("BACKWARD_WARPS", "BACKWARD_SPLIT_ROWS", "BACKWARD_COL_BLOCK", "BACKWARD_ROW_BLOCK")
WARPS, SPLIT_ROWS, TILES = (4, 8, 16), (128, 256, 512, 1024, 0), ((32, 64), (64, 32), (64, 64), (128, 16), (128, 32))


def gpu_time(fn, setup=None, reps: int = 30) -> float:
    """Median GPU time of fn (s): a sleep kernel ahead of each sample lets the host enqueue fn before it runs."""
    times = []
    for _ in range(reps):
        if setup:
            setup()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # ~1 ms at 1.98 GHz: longer than any host enqueue here
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def host_time(fn, setup=None, reps: int = 30) -> float:
    """Median host time of one call that is not waited for (what launching fn costs the CPU)."""
    times = []
    for _ in range(reps):
        if setup:
            setup()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(times)


def eager(x, r, w, b):
    h = r + F.dropout(x, P, training=True)
    if NORM == "rmsnorm":
        return F.rms_norm(h, (D,), w, EPS), h
    return F.layer_norm(h, (D,), w, b, EPS), h


def triton_variant():
    seed = [0]

    def triton(x, r, w, b):
        seed[0] += 1
        return fused.fused_add_dropout_norm(x, r, w, b if NORM == "layernorm" else None, P, seed[0], EPS, NORM)

    return triton


def report(name: str, fn, x, r, w, b, leaves, grads) -> None:
    """GPU and host times of one variant's forward, backward and step."""
    for _ in range(3):  # compile, autotune
        torch.autograd.grad(fn(x, r, w, b), leaves, grads)
    pending = []

    def forward():
        return fn(x, r, w, b)

    def setup():
        pending.append(forward())

    def backward():
        return torch.autograd.grad(pending.pop(), leaves, grads)

    def step():
        return torch.autograd.grad(forward(), leaves, grads)

    with torch.no_grad():
        inference = gpu_time(forward)
    print(f"{name:8s} GPU: forward (no grad) {inference * 1e6:6.1f} µs, forward {gpu_time(forward) * 1e6:6.1f} µs, "
          f"backward {gpu_time(backward, setup) * 1e6:6.1f} µs, step {gpu_time(step) * 1e6:6.1f} µs | host: "
          f"forward {host_time(forward) * 1e6:6.1f} µs, backward {host_time(backward, setup) * 1e6:6.1f} µs, "
          f"step {host_time(step) * 1e6:6.1f} µs")


def bench(rows: int, compiled) -> None:
    x, r = (torch.randn(rows, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    w = torch.randn(D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    leaves, grads = [x, r, w, b][:4 if NORM == "layernorm" else 3], [torch.randn_like(x), torch.randn_like(x)]
    print(f"== {NORM}, rows {rows} × d {D}, bf16, p {P}")
    triton = triton_variant()
    pending = []
    timed: dict[tuple[int, ...], float] = {}

    def backward_time(shape: tuple[int, ...]) -> float:
        if shape not in timed:
            for knob, value in zip(KNOBS, shape, strict=True):
                setattr(fused_backward, knob, value)
            torch.autograd.grad(triton(x, r, w, b), leaves, grads)  # compile this shape outside the timing
            timed[shape] = gpu_time(lambda: torch.autograd.grad(pending.pop(), leaves, grads),
                                    setup=lambda: pending.append(triton(x, r, w, b)))
        return timed[shape]

    # warps × rows per split at the default tile, then the tiles of the column sums at the best of those
    default_tile = (fused_backward.BACKWARD_COL_BLOCK, fused_backward.BACKWARD_ROW_BLOCK)
    best = min(itertools.product(WARPS, SPLIT_ROWS, [default_tile[0]], [default_tile[1]]), key=backward_time)
    best = min(((*best[:2], *tile) for tile in TILES), key=backward_time)
    compulsory_bytes = 5 * rows * D * x.element_size()  # read h, d_out, d_new_residual; write dx, d_residual
    for shape, t in sorted(timed.items(), key=lambda item: item[1])[:6]:
        print(f"backward: {shape[0]:2d} warps, split {shape[1] or rows:5d} rows, tile {shape[3]:3d} × {shape[2]:3d}: "
              f"{t * 1e6:7.1f} µs, {compulsory_bytes / t / 1e12:4.2f} TB/s")
    for knob, value in zip(KNOBS, best, strict=True):
        setattr(fused_backward, knob, value)
    print("best: " + ", ".join(f"{knob} = {value}" for knob, value in zip(KNOBS, best, strict=True)))
    for name, fn in (("eager", eager), ("compile", compiled), ("triton", triton)):
        report(name, fn, x, r, w, b, leaves, grads)


def main() -> None:
    global NORM, P
    NORM, P = (sys.argv[1:2] or [NORM])[0], float((sys.argv[2:3] or [P])[0])
    torch.manual_seed(0)
    compiled = torch.compile(eager, dynamic=False)
    for rows in (4096, 8192):
        bench(rows, compiled)


if __name__ == "__main__":
    main()
