"""The dense projections of the block, y = x·Wᵀ: one factory, four ops (QKV, output, FFN up, FFN down).

A [T, K] × [K, N] matmul does 2·T·K·N FLOPs and must move T·K + K·N + T·N elements: at T in the thousands
its intensity is in the hundreds of FLOPs per byte, so it is tensor-core bound; in decode (T = batch) the
weight read dominates and it becomes a memory-bound GEMV.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.ops.base import Inputs, Op, Variant, rand, take_rows


def linear_op(name: str, group: str, in_dim: Callable[[BlockConfig], int],
              out_dim: Callable[[BlockConfig], int], doc: str, dims: str) -> Op:
    """A projection op: x [T, in_dim] times W [out_dim, in_dim] (nn.Linear layout, no bias)."""

    def make_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
        k = in_dim(c)
        return {"x": rand((c.tokens, k), c, device, gen),
                "weight": rand((out_dim(c), k), c, device, gen, scale=k ** -0.5)}

    def reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
        return take_rows(i["x"], rows) @ i["weight"].double().T

    def build(c: BlockConfig, i: Inputs):
        x, w = i["x"], i["weight"]
        return lambda: F.linear(x, w)

    return Op(
        name=name, group=group, unit="tensor",
        flops=lambda c: 2 * c.tokens * in_dim(c) * out_dim(c),
        min_bytes=lambda c: (c.tokens * in_dim(c) + in_dim(c) * out_dim(c) + c.tokens * out_dim(c)) * c.dtype_bytes,
        make_inputs=make_inputs,
        reference=reference,
        variants=(Variant("torch", build, doc="F.linear (cuBLAS / oneDNN)"),),
        flops_formula=f"2·T·K·N  ({dims})",
        bytes_formula="(T·K + K·N + T·N)·bytes  (read x and W, write y)",
        doc=doc,
    )
