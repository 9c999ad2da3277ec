"""Rotary position embeddings (RoPE): Q and K rotated by their position, after the QKV projection.

Each pair of dims (i, i + r/2) of a head is rotated by the angle pos·θᵢ, θᵢ = base^(−2i/r) (the "rotate_half"
layout of Hugging Face's Llama): out = x·cos + rotate_half(x)·sin, with rotate_half(x) = (−x₂, x₁). r is the
rotated part of each head, head_dim in Llama (GPT-NeoX rotates a quarter: rope_fraction). An element-wise pass
over Q and K: 3 FLOPs per element against 2 moves, memory-bound, and in eager PyTorch it is eight kernels per
tensor (two slices copied by a cat, a negation, two multiplies, an add) instead of one.

The cos/sin tables depend on the positions only: Hugging Face computes them once per forward for all layers, and
a fused kernel can compute them in registers, so they are built outside the timed call and are not compulsory
bytes. Positions are bottom-right aligned like the causal mask: the last query sits at position kv_len − 1.
"""

from __future__ import annotations

import os

import torch

from roofline.config import BlockConfig
from roofline.ops.base import Formula, Inputs, Op, Variant, needs_cuda, rand, relative_error, take_rows

BASE = 10000.0


def _dims(c: BlockConfig) -> dict[str, int]:
    return {"r": c.rope_dim}


def tables(c: BlockConfig, device: torch.device, dtype: torch.dtype,
           rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, [q_len, r] (or [len(rows), r]): the angle of dim i and i + r/2 is pos·base^(−2i/r)."""
    r = c.rope_dim
    positions = torch.arange(c.q_len, device=device) if rows is None else rows.to(device)
    positions = positions.double() + (c.kv_len - c.q_len)
    inv_freq = BASE ** (-torch.arange(0, r, 2, device=device, dtype=torch.float64) / r)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's apply_rotary_pos_emb for one tensor, partial rotary included (the rest passes through)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rotated, passed = x[..., :r], x[..., r:]
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)


def _inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"q": rand((c.batch, c.n_heads, c.q_len, c.head_dim), c, device, gen),
            "k": rand((c.batch, c.n_kv_heads, c.q_len, c.head_dim), c, device, gen)}


def _reference(c: BlockConfig, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    cos, sin = tables(c, x.device, torch.float64, rows)
    return apply_rope(take_rows(x, rows), cos, sin)


def _check(c: BlockConfig, i: Inputs, output: object, rows: torch.Tensor) -> float:
    q, k = output  # type: ignore[misc]
    return max(relative_error(take_rows(q, rows), _reference(c, i["q"], rows)),
               relative_error(take_rows(k, rows), _reference(c, i["k"], rows)))


def _torch(c: BlockConfig, i: Inputs):
    cos, sin = tables(c, i["q"].device, i["q"].dtype)
    q, k = i["q"], i["k"]
    return lambda: (apply_rope(q, cos, sin), apply_rope(k, cos, sin))


def _compiled(c: BlockConfig, i: Inputs):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # one small graph (see norm.py's compile variant)
    cos, sin = tables(c, i["q"].device, i["q"].dtype)
    q, k = i["q"], i["k"]
    fn = torch.compile(lambda q, k: (apply_rope(q, cos, sin), apply_rope(k, cos, sin)), dynamic=False)
    return lambda: fn(q, k)


ROPE = Op(
    name="rope", group="attention", unit="vector",
    flops=Formula("3*T*(h + h_kv)*r", "x·cos + rotate_half(x)·sin: two multiplies and an add per rotated element "
                  "of Q and K (r of each head's hd dims)", _dims),
    min_bytes=Formula("2*T*(h + h_kv)*r*bytes", "read and write the rotated dims of Q and K; cos/sin are functions "
                      "of the position (computed in registers, or a small table shared by all layers)", _dims),
    make_inputs=_inputs,
    reference=lambda c, i, rows: _reference(c, i["q"], rows),
    check=_check,
    variants=(
        Variant("torch", _torch, doc="Hugging Face's apply_rotary_pos_emb: rotate_half (slices, neg, cat), ×cos, "
                "×sin, +"),
        Variant("compile", _compiled, fused=True, requires=needs_cuda,
                doc="torch.compile (Inductor): one kernel; on CPU its C++ build takes minutes, so CUDA only"),
    ),
    doc="Rotary position embeddings on Q and K (Llama-style rotate_half; partial for GPT-NeoX).",
    backward_flops=Formula("3*T*(h + h_kv)*r", "dx = dy·cos + rotate_halfᵀ(dy·sin): the same three per element",
                           _dims),
    backward_bytes=Formula("2*T*(h + h_kv)*r*bytes", "read dQ', dK'; write dQ, dK", _dims),
    applies=lambda c: c.rope,
)

OPS = (ROPE,)
