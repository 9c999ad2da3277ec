"""The dense projections of the block, y = x·Wᵀ: one factory, four ops (QKV, output, FFN up, FFN down).

A [T, K] × [K, N] matmul does 2·T·K·N FLOPs and must move T·K + K·N + T·N elements: at T in the thousands
its intensity is in the hundreds of FLOPs per byte, so it is tensor-core bound; in decode (T = batch) the
weight read dominates and it becomes a memory-bound GEMV.

fp8 (`--dtype fp8`): the same "torch" variant runs `torch._scaled_mm` (cuBLASLt, e4m3 inputs, per-tensor
scales, fp32 accumulation with Hopper's fast-accumulation mode, bf16 output), the w8a8 inference recipe. Both
quantizations happen outside the timed closure: the weight is stored in fp8 with its scale (done once, at load
time), and the activation arrives in fp8 as every input of a run arrives in the run's dtype (static per-tensor
scale of 1, as with calibrated scales; dynamic scaling would add an amax pass over x, a memory-bound op of its
own). The output is bf16, so the bytes formula counts T·N·2 for it. Needs compute capability ≥ 8.9.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.ops.base import NEEDS_GPU, TORCH_DTYPES, Formula, Inputs, Op, Variant, rand, take_rows, times_weight_t

FP8_OUT_DTYPE = torch.bfloat16


def out_bytes(c: BlockConfig) -> int:
    """Bytes per output element: fp8 matmuls write bf16 (a per-tensor fp8 output would need y's amax first)."""
    return FP8_OUT_DTYPE.itemsize if c.dtype == "fp8" else c.dtype_bytes


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, x_scale: torch.Tensor,
               weight_scale: torch.Tensor) -> torch.Tensor:
    """y = (x·s_x)·(W·s_w)ᵀ with e4m3 x and W; _scaled_mm wants Wᵀ column-major, which W [N, K] row-major is."""
    return torch._scaled_mm(x, weight.t(), scale_a=x_scale, scale_b=weight_scale, out_dtype=FP8_OUT_DTYPE,
                            use_fast_accum=True)


def fp8_requirement(k: int, n: int, device: torch.device) -> str | None:
    """Why an fp8 [T, K] × [K, N] matmul cannot run here (None when it can)."""
    if not hasattr(torch, "_scaled_mm"):
        return "this torch has no torch._scaled_mm (fp8 matmul)"
    if device.type != "cuda":
        return f"{NEEDS_GPU} with compute capability ≥ 8.9 (fp8 matmuls, torch._scaled_mm)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 matmuls need compute capability ≥ 8.9 (Ada, Hopper); this GPU is {major}.{minor}"
    if k % 16 or n % 16:
        return f"fp8 matmuls need K and N multiples of 16, got K = {k}, N = {n}"
    return None


def linear_op(name: str, group: str, in_dim: Callable[[BlockConfig], int],
              out_dim: Callable[[BlockConfig], int], doc: str, dims: str,
              applies: Callable[[BlockConfig], bool] = lambda c: True) -> Op:
    """A projection op: x [T, in_dim] times W [out_dim, in_dim] (nn.Linear layout, no bias)."""

    def make_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
        k = in_dim(c)
        if c.dtype == "fp8":  # unit-scale e4m3 weight and its scale: k^-0.5 itself would underflow e4m3
            return {"x": rand((c.tokens, k), c, device, gen), "weight": rand((out_dim(c), k), c, device, gen),
                    "x_scale": torch.ones((), device=device), "weight_scale": torch.full((), k ** -0.5, device=device)}
        return {"x": rand((c.tokens, k), c, device, gen),
                "weight": rand((out_dim(c), k), c, device, gen, scale=k ** -0.5)}

    def reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
        scale = float(i["weight_scale"] * i["x_scale"]) if c.dtype == "fp8" else 1.0
        return times_weight_t(take_rows(i["x"], rows), i["weight"]) * scale

    def build(c: BlockConfig, i: Inputs):
        x, w = i["x"], i["weight"]
        if c.dtype == "fp8":
            return lambda: fp8_linear(x, w, i["x_scale"], i["weight_scale"])
        return lambda: F.linear(x, w)

    def requires(c: BlockConfig, device: torch.device) -> str | None:
        return fp8_requirement(in_dim(c), out_dim(c), device) if c.dtype == "fp8" else None

    def shape(c: BlockConfig) -> dict[str, int]:
        return {"K": in_dim(c), "N": out_dim(c), "out_bytes": out_bytes(c)}

    return Op(
        name=name, group=group, unit="tensor",
        flops=Formula("2*T*K*N", dims, shape),
        min_bytes=Formula("(T*K + K*N)*bytes + T*N*out_bytes", "read x and W, write y; out_bytes = bytes, but 2 "
                          "for fp8, whose matmuls write y in bf16", shape),
        make_inputs=make_inputs,
        reference=reference,
        variants=(Variant("torch", build, requires=requires, dtypes=tuple(TORCH_DTYPES),
                          doc="F.linear (cuBLAS / oneDNN); fp8: torch._scaled_mm, per-tensor scales, bf16 out"),),
        doc=doc,
        applies=applies,
        gemm_shape=lambda c: (c.tokens, out_dim(c), in_dim(c)),
        backward_flops=Formula("4*T*K*N", "dx = dy·W and dW = dyᵀ·x: two matmuls of the forward's size", shape),
        backward_bytes=Formula("(2*T*K + 2*K*N + T*N)*bytes", "read dy, x, W; write dx, dW", shape),
    )
