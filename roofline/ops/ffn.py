"""The feed-forward network: up projection, activation (GELU, SwiGLU or GeGLU), down projection.

The two projections hold two thirds of the block's FLOPs at d_ffn = 4·d; the activation between them is a
memory-bound element-wise pass over the widest activation of the block, [tokens, d_ffn].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.ops.base import Formula, Inputs, Op, Variant, rand, take_rows
from roofline.ops.linear import linear_op


def dense(c: BlockConfig) -> bool:
    """The dense FFN ops; a mixture-of-experts block has its router and experts instead (moe.py)."""
    return c.n_experts == 0


def up_width(c: BlockConfig) -> int:
    """A gated FFN's up projection (SwiGLU, GeGLU) produces gate and up halves side by side: 2·d_ffn outputs."""
    return 2 * c.ffn_dim if c.gated else c.ffn_dim


FFN_UP = linear_op(
    "ffn_up", "ffn", lambda c: c.d_model, up_width,
    "FFN up projection to d_ffn (gate and up together for SwiGLU and GeGLU).",
    "K = d_model, N = d_ffn (2·d_ffn when gated)",
    applies=dense)


def _gelu_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"x": rand((c.tokens, c.ffn_dim), c, device, gen)}


GELU = Op(
    name="gelu", group="ffn", unit="vector",
    flops=Formula("5*T*d_ffn", "x/√2, erf, +1, ×x, ×½ per element; erf counted as one"),
    min_bytes=Formula("2*T*d_ffn*bytes", "read, write"),
    make_inputs=_gelu_inputs,
    reference=lambda c, i, rows: F.gelu(take_rows(i["x"], rows)),
    variants=(Variant("torch", lambda c, i: lambda: F.gelu(i["x"])),),
    doc="Exact (erf) GELU between the two FFN projections.",
    backward_flops=Formula("11*T*d_ffn", "dy·(Φ(x) + x·φ(x)): Φ 4, φ = exp(−x²/2)/√(2π) 4, ×x, +, ×dy"),
    backward_bytes=Formula("3*T*d_ffn*bytes", "read x and dy, write dx"),
    applies=lambda c: c.activation == "gelu" and dense(c),
)


def _swiglu_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"x": rand((c.tokens, 2 * c.ffn_dim), c, device, gen)}


def swiglu(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


SWIGLU = Op(
    name="swiglu", group="ffn", unit="vector",
    flops=Formula("6*T*d_ffn", "silu: negate, exp, add, divide, multiply; then × up"),
    min_bytes=Formula("3*T*d_ffn*bytes", "read gate and up, write the product"),
    make_inputs=_swiglu_inputs,
    reference=lambda c, i, rows: swiglu(take_rows(i["x"], rows)),
    variants=(Variant("torch", lambda c, i: lambda: swiglu(i["x"])),),
    doc="SwiGLU: silu(gate) · up (Llama-style FFN).",
    backward_flops=Formula("12*T*d_ffn", "σ(g) 4, silu 1, d_up = dy·silu 1, silu' = σ·(1 + g·(1 − σ)) 4, "
                           "d_gate = dy·up·silu' 2"),
    backward_bytes=Formula("5*T*d_ffn*bytes", "read gate, up, dy; write d_gate, d_up"),
    applies=lambda c: c.activation == "swiglu" and dense(c),
)

def geglu(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


GEGLU = Op(
    name="geglu", group="ffn", unit="vector",
    flops=Formula("10*T*d_ffn", "gelu-tanh ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): x³ 2, ×c 1, + 1, ×√(2/π) 1, "
                  "tanh 1, +1 1, ×x 1, ×½ 1; then × up"),
    min_bytes=Formula("3*T*d_ffn*bytes", "read gate and up, write the product"),
    make_inputs=_swiglu_inputs,
    reference=lambda c, i, rows: geglu(take_rows(i["x"], rows)),
    variants=(Variant("torch", lambda c, i: lambda: geglu(i["x"])),),
    doc="GeGLU: gelu_tanh(gate) · up (Gemma's FFN).",
    backward_flops=Formula("20*T*d_ffn", "d_up = dy·gelu 1; gelu' = ½(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3c·x²) "
                           "with t the forward's tanh recomputed (9) 17; d_gate = dy·up·gelu' 2"),
    backward_bytes=Formula("5*T*d_ffn*bytes", "read gate, up, dy; write d_gate, d_up"),
    applies=lambda c: c.activation == "geglu" and dense(c),
)

FFN_DOWN = linear_op(
    "ffn_down", "ffn", lambda c: c.ffn_dim, lambda c: c.d_model,
    "FFN down projection back to d_model.", "K = d_ffn, N = d_model", applies=dense)

OPS = (FFN_UP, GELU, SWIGLU, GEGLU, FFN_DOWN)
