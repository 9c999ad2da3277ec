"""Megatron's tensor-parallel split of a block, as code: one rank's weights (`shard_weights`) and the block's forward
on a shard (`block_forward`), layer after layer (`stack_forward`: a pipeline stage's layers, or the unsplit model).

The split (Shoeybi et al. 2019, "Megatron-LM", §3): QKV and FFN-up are column-parallel (each rank computes its
heads and its 1/N of the FFN columns), the output projection and FFN-down row-parallel (each rank's partial
[tokens, d_model] product), and an all-reduce after each sums the partials (g); norms, dropout and residual adds
are replicated, and in training the input gradient of each column-parallel half is all-reduced (f). Tests check
the split equals the unsplit block; `tp_sums` gives f and g as autograd functions over a TP group (measure/
pipeline.py trains through them). BlockConfig.shard gives one rank's shapes, ops/comm.py the collectives as ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.ops.attention import attn_v, causal_mask, is_causal, masked_softmax, qk_t
from roofline.ops.base import TORCH_DTYPES
from roofline.ops.ffn import swiglu, up_width

Tensor = torch.Tensor


def shard_weights(w: dict[str, torch.Tensor], c: BlockConfig, tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slices of the full block's weights (nn.Linear layout [out, in]; c is the full config).

    W_qkv rows are [Q heads; K heads; V heads]: a rank takes its heads of each. SwiGLU's W_up rows are
    [gate; up]: a rank takes its columns of each, so its local output splits into gate and up as the full one does.
    """
    def part(t: torch.Tensor, dim: int) -> torch.Tensor:
        return t.chunk(tp, dim)[rank]

    q, k, v = w["qkv"].split([c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim])
    halves = w["up"].chunk(2) if c.activation == "swiglu" else (w["up"],)
    return {"qkv": torch.cat([part(q, 0), part(k, 0), part(v, 0)]), "out": part(w["out"], 1),
            "up": torch.cat([part(h, 0) for h in halves]), "down": part(w["down"], 1)}


def block_forward(x: torch.Tensor, w: dict[str, torch.Tensor], c: BlockConfig,
                  all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                  copy_in: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                  dropout_p: float = 0.0) -> torch.Tensor:
    """One pre-norm dense block (norms without affine) on a shard: x [batch, seq, d_model] whole.

    c is the shard's config and w its weights; `all_reduce` sums the row-parallel partials across ranks (the
    identity for the unsplit block), `copy_in` enters each column-parallel half (Megatron's f: the identity
    forward, the input gradient's all-reduce backward). The attention core is the catalog's qk_t → softmax →
    attn_v; dropout (p = dropout_p, default none) on each sub-layer's output before its residual add.
    """
    b, s, d = x.shape

    def norm(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(b * s, d)
        return F.rms_norm(t, (d,), eps=c.norm_eps) if c.norm == "rmsnorm" else F.layer_norm(t, (d,), eps=c.norm_eps)

    def heads(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.reshape(b, s, n, c.head_dim).transpose(1, 2)

    def out(t: torch.Tensor) -> torch.Tensor:
        return F.dropout(all_reduce(t).view(b, s, d), dropout_p) if dropout_p else all_reduce(t).view(b, s, d)

    kv = c.n_kv_heads * c.head_dim
    q, k, v = F.linear(copy_in(norm(x)), w["qkv"]).split([c.attn_dim, kv, kv], -1)
    mask = causal_mask(c, x.device) if is_causal(c) else None
    o = attn_v(masked_softmax(qk_t(heads(q, c.n_heads), heads(k, c.n_kv_heads), c), mask), heads(v, c.n_kv_heads), c)
    x = x + out(F.linear(o.transpose(1, 2).reshape(b * s, c.attn_dim), w["out"]))
    u = F.linear(copy_in(norm(x)), w["up"])
    return x + out(F.linear(swiglu(u) if c.activation == "swiglu" else F.gelu(u), w["down"]))


def stack_forward(x: torch.Tensor, layers: list[dict[str, torch.Tensor]], c: BlockConfig,
                  **split: Callable[[torch.Tensor], torch.Tensor] | float) -> torch.Tensor:
    """Blocks one after another (a pipeline stage's layers, or the unsplit model's): block_forward per layer."""
    for w in layers:
        x = block_forward(x, w, c, **split)  # type: ignore[arg-type]
    return x


class _SumForward(torch.autograd.Function):
    """Megatron's g: all-reduce the row-parallel partials forward, pass the gradient through backward."""

    @staticmethod
    def forward(ctx, t: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.mark_dirty(t)
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class _SumBackward(torch.autograd.Function):
    """Megatron's f: the identity forward, the all-reduce of the input gradient's partials backward."""

    @staticmethod
    def forward(ctx, t: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def unsharded(c: BlockConfig) -> BlockConfig:
    """The whole block of which c is a TP shard."""
    return c.replace(n_heads=c.n_heads * c.tp, n_kv_heads=c.n_kv_heads * c.tp, ffn_dim=c.ffn_dim * c.tp, tp=1)


def layer_weights(full: BlockConfig, layer: int, seed: int, device: torch.device) -> dict[str, Tensor]:
    """Layer `layer`'s whole weights (nn.Linear layout), from its own seed: any rank builds any layer the same."""
    gen = torch.Generator(device=device).manual_seed(seed * 7919 + layer)
    shapes = {"qkv": (full.qkv_dim, full.d_model), "out": (full.d_model, full.attn_dim),
              "up": (up_width(full), full.d_model), "down": (full.d_model, full.ffn_dim)}
    dtype = TORCH_DTYPES[full.dtype]
    return {k: torch.randn(s, generator=gen, device=device).mul_(s[1] ** -0.5).to(dtype) for k, s in shapes.items()}


def tp_sums(group: dist.ProcessGroup | None) -> dict[str, Callable[[Tensor], Tensor]]:
    """block_forward's `all_reduce` (g) and `copy_in` (f) over a TP group, differentiable."""
    return {"all_reduce": lambda t: _SumForward.apply(t, group), "copy_in": lambda t: _SumBackward.apply(t, group)}
