"""Attention: the QKV projection, the naive chain Q·Kᵀ → softmax → ·V, the fused kernels, the output projection.

The naive chain writes the [batch, heads, q_len, kv_len] score matrix to HBM twice (scores, then
probabilities) and reads it twice: O(N²) memory and a memory-bound softmax in the middle of two matmuls.
Fused attention (FlashAttention, cuDNN, our Triton kernel) keeps each tile of scores in SRAM: it reads Q, K,
V and writes O once, O(N) memory, and the whole chain becomes one compute-bound op.

Grouped-query attention (n_kv_heads < n_heads) is computed without repeating K and V: the query heads that
share a KV head are stacked along the row dimension, so the matmuls see [b·kv_heads, group·q_len, head_dim].
An implementation that does copy them (Hugging Face's eager attention: `repeat_kv`) pays the copy as an op of its
own, repeat_kv, in the block of a config with `kv_repeat` (the Hugging Face configs of GQA models); the fused
kernels read the shared heads in place, so the attention fusion group replaces the copy too.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from roofline.config import BlockConfig
from roofline.errors import Unsupported
from roofline.ops.base import (
    Formula,
    Inputs,
    Op,
    Variant,
    needs_cuda,
    needs_triton,
    rand,
    relative_error,
    take_rows,
)
from roofline.ops.linear import linear_op


def is_causal(c: BlockConfig) -> bool:
    """One decode query sees the whole cache; only prefill with q_len = kv_len needs the mask."""
    return c.causal and c.q_len > 1


def causal_mask(c: BlockConfig, device: torch.device, rows: torch.Tensor | None = None) -> torch.Tensor:
    """True where query i must not see key j: j > i + (kv_len − q_len)."""
    i = torch.arange(c.q_len, device=device) if rows is None else rows.to(device)
    j = torch.arange(c.kv_len, device=device)
    return j[None, :] > i[:, None] + (c.kv_len - c.q_len)


def _grouped(t: torch.Tensor, c: BlockConfig) -> torch.Tensor:
    """[b, heads, rows, x] → [b·kv_heads, group·rows, x] (a view): query heads that share one KV head."""
    return t.reshape(c.batch * c.n_kv_heads, -1, t.shape[-1])


def qk_t(q: torch.Tensor, k: torch.Tensor, c: BlockConfig) -> torch.Tensor:
    """Scaled scores S = Q·Kᵀ/√d, [b, h, q_len, kv_len]; the scale rides in the GEMM's alpha."""
    k3 = k.reshape(c.batch * c.n_kv_heads, c.kv_len, c.head_dim)
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    s = torch.baddbmm(zero, _grouped(q, c), k3.transpose(1, 2), beta=0.0, alpha=c.head_dim ** -0.5)
    return s.view(c.batch, c.n_heads, c.q_len, c.kv_len)


def attn_v(p: torch.Tensor, v: torch.Tensor, c: BlockConfig) -> torch.Tensor:
    """O = P·V, [b, h, q_len, head_dim]."""
    v3 = v.reshape(c.batch * c.n_kv_heads, c.kv_len, c.head_dim)
    return torch.bmm(_grouped(p, c), v3).view(c.batch, c.n_heads, c.q_len, c.head_dim)


def masked_softmax(s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    return torch.softmax(s, dim=-1)


def _expand_kv(t: torch.Tensor, c: BlockConfig) -> torch.Tensor:
    return t.double().repeat_interleave(c.n_heads // c.n_kv_heads, dim=1)


def attention_reference(c: BlockConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        rows: torch.Tensor) -> torch.Tensor:
    """softmax(Q·Kᵀ/√d + mask)·V in float64 for query rows `rows`."""
    s = take_rows(q, rows) @ _expand_kv(k, c).transpose(-1, -2) * c.head_dim ** -0.5
    if is_causal(c):
        s = s.masked_fill(causal_mask(c, s.device, rows), float("-inf"))
    return torch.softmax(s, dim=-1) @ _expand_kv(v, c)


def _qkv_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"q": rand((c.batch, c.n_heads, c.q_len, c.head_dim), c, device, gen),
            "k": rand((c.batch, c.n_kv_heads, c.kv_len, c.head_dim), c, device, gen),
            "v": rand((c.batch, c.n_kv_heads, c.kv_len, c.head_dim), c, device, gen)}


def _mask_input(c: BlockConfig, device: torch.device) -> Inputs:
    return {"mask": causal_mask(c, device)} if is_causal(c) else {}


def _repeat_kv_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"k": rand((c.batch, c.n_kv_heads, c.kv_len, c.head_dim), c, device, gen),
            "v": rand((c.batch, c.n_kv_heads, c.kv_len, c.head_dim), c, device, gen)}


def repeat_kv(t: torch.Tensor, c: BlockConfig) -> torch.Tensor:
    """Hugging Face's repeat_kv: [b, kv_heads, n, hd] → [b, heads, n, hd], each KV head copied group times."""
    group = c.n_heads // c.n_kv_heads
    b, kv_heads, n, hd = t.shape
    return t[:, :, None].expand(b, kv_heads, group, n, hd).reshape(b, kv_heads * group, n, hd)


def _repeat_kv_check(c: BlockConfig, i: Inputs, output: object, rows: torch.Tensor) -> float:
    k, v = output  # type: ignore[misc]
    return max(relative_error(take_rows(k, rows), _expand_kv(take_rows(i["k"], rows), c)),
               relative_error(take_rows(v, rows), _expand_kv(take_rows(i["v"], rows), c)))


REPEAT_KV = Op(
    name="repeat_kv", group="attention", unit="vector",
    flops=Formula("0", "a copy: no arithmetic"),
    min_bytes=Formula("2*(b*h_kv*kv*hd + b*h*kv*hd)*bytes", "read K and V once, write them h/h_kv times"),
    make_inputs=_repeat_kv_inputs,
    reference=lambda c, i, rows: _expand_kv(take_rows(i["k"], rows), c),
    check=_repeat_kv_check,
    variants=(Variant("torch", lambda c, i: lambda: (repeat_kv(i["k"], c), repeat_kv(i["v"], c)),
                      doc="expand + reshape (a copy), as Hugging Face's repeat_kv"),),
    doc="Grouped-query K/V expansion to every query head, where the implementation materialises it (HF eager).",
    backward_flops=Formula("2*b*(h - h_kv)*kv*hd", "dK, dV: the group's gradients summed, h/h_kv − 1 adds each"),
    backward_bytes=Formula("2*(b*h*kv*hd + b*h_kv*kv*hd)*bytes", "read the expanded gradients, write dK, dV"),
    applies=lambda c: c.kv_repeat and c.n_kv_heads < c.n_heads,
)

QKV_PROJ = linear_op(
    "qkv_proj", "attention", lambda c: c.d_model, lambda c: c.qkv_dim,
    "The fused Q, K, V projection: x·W_qkvᵀ with (heads + 2·kv_heads)·head_dim outputs.",
    "K = d_model, N = (heads + 2·kv_heads)·head_dim")

QK_T = Op(
    name="qk_t", group="attention", unit="tensor",
    flops=Formula("2*b*h*q*kv*hd", "the scale rides in the GEMM's alpha; a causal mask saves nothing here"),
    min_bytes=Formula("(b*h*q*hd + b*h_kv*kv*hd + b*h*q*kv)*bytes", "read Q, K; write the N×N scores"),
    make_inputs=lambda c, d, g: {k: v for k, v in _qkv_inputs(c, d, g).items() if k != "v"},
    reference=lambda c, i, rows: take_rows(i["q"], rows) @ _expand_kv(i["k"], c).transpose(-1, -2)
    * c.head_dim ** -0.5,
    variants=(Variant("torch", lambda c, i: lambda: qk_t(i["q"], i["k"], c), doc="baddbmm, scale as alpha"),),
    doc="Scaled attention scores S = Q·Kᵀ/√d: materialises the [b, h, q, kv] matrix.",
    backward_flops=Formula("4*b*h*q*kv*hd", "dQ = dS·K/√d, dK = dSᵀ·Q/√d"),
    backward_bytes=Formula("(b*h*q*kv + 2*b*h*q*hd + 2*b*h_kv*kv*hd)*bytes", "read dS, Q, K; write dQ, dK"),
)


def _softmax_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    return {"scores": rand((c.batch, c.n_heads, c.q_len, c.kv_len), c, device, gen), **_mask_input(c, device)}


def _softmax_reference(c: BlockConfig, i: Inputs, rows: torch.Tensor) -> torch.Tensor:
    s = take_rows(i["scores"], rows)
    if is_causal(c):
        s = s.masked_fill(causal_mask(c, s.device, rows), float("-inf"))
    return torch.softmax(s, dim=-1)


def _triton_softmax(c: BlockConfig, i: Inputs):
    from roofline.kernels.softmax import softmax

    return lambda: softmax(i["scores"], 1.0, is_causal(c))


SOFTMAX = Op(
    name="softmax", group="attention", unit="vector",
    flops=Formula("5*b*h*q*kv", "max, subtract, exp, sum, divide per element"),
    min_bytes=Formula("(b*h*pairs + b*h*q*kv)*bytes", "read the visible scores, write every probability; pairs = "
                      "q·kv, or the unmasked part when causal: the mask is computed, masked scores need not be read"),
    make_inputs=_softmax_inputs,
    reference=_softmax_reference,
    variants=(
        Variant("torch", lambda c, i: lambda: masked_softmax(i["scores"], i.get("mask")),
                scratch_bytes=lambda c: (c.batch * c.n_heads * c.q_len * c.kv_len * c.dtype_bytes
                                         if is_causal(c) else 0),
                doc="torch.softmax, after a masked copy of the scores when causal"),
        Variant("triton", _triton_softmax, fused=True, requires=needs_triton, doc="kernels/softmax.py"),
    ),
    doc="Row softmax of the scores (causal-masked when the model is causal).",
    backward_flops=Formula("4*b*h*q*kv", "dx = y·(dy − Σ dy·y): multiply, sum, subtract, multiply per element"),
    backward_bytes=Formula("(2*b*h*pairs + b*h*q*kv)*bytes", "read y and dy where visible, write every dx: y is "
                           "saved, x is not needed"),
)


def _attn_v_inputs(c: BlockConfig, device: torch.device, gen: torch.Generator) -> Inputs:
    scores = rand((c.batch, c.n_heads, c.q_len, c.kv_len), c, device, gen)
    v = rand((c.batch, c.n_kv_heads, c.kv_len, c.head_dim), c, device, gen)
    return {"p": _softmax_in_place(scores), "v": v}


def _softmax_in_place(x: torch.Tensor) -> torch.Tensor:
    """Row softmax of x, written over x: the N×N probabilities are made without a second N×N tensor (at seq 8192
    on a CPU, 8.6 GB held once instead of twice, and seconds of first-touch page faults saved)."""
    if not x.is_floating_point() or x.element_size() < 2:  # fp8: no in-place arithmetic
        return torch.softmax(x, dim=-1)
    x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


ATTN_V = Op(
    name="attn_v", group="attention", unit="tensor",
    flops=Formula("2*b*h*q*kv*hd"),
    min_bytes=Formula("(b*h*q*kv + b*h_kv*kv*hd + b*h*q*hd)*bytes", "read P and V, write O"),
    make_inputs=_attn_v_inputs,
    reference=lambda c, i, rows: take_rows(i["p"], rows) @ _expand_kv(i["v"], c),
    variants=(Variant("torch", lambda c, i: lambda: attn_v(i["p"], i["v"], c), doc="bmm"),),
    doc="O = P·V: reads the N×N probabilities back from HBM.",
    backward_flops=Formula("4*b*h*q*kv*hd", "dP = dO·Vᵀ, dV = Pᵀ·dO"),
    backward_bytes=Formula("(2*b*h*q*kv + b*h*q*hd + 2*b*h_kv*kv*hd)*bytes", "read dO, P, V; write dP, dV"),
)


def _naive(c: BlockConfig, i: Inputs):
    q, k, v, mask = i["q"], i["k"], i["v"], causal_mask(c, i["q"].device) if is_causal(c) else None
    return lambda: attn_v(masked_softmax(qk_t(q, k, c), mask), v, c)


def _sdpa(backend_name: str):
    """An SDPA backend forced with sdpa_kernel; 'No available kernel' becomes Unsupported (skipped)."""

    def build(c: BlockConfig, i: Inputs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        q, k, v, causal = i["q"], i["k"], i["v"], is_causal(c)
        gqa = {"enable_gqa": True} if c.n_kv_heads != c.n_heads else {}

        def run() -> torch.Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run()
            except RuntimeError as exc:
                if "No available kernel" not in str(exc) and "No viable backend" not in str(exc):
                    raise
                why = "; ".join(str(w.message).split("\n")[0] for w in caught[:2]) or str(exc)
                raise Unsupported(f"SDPA {backend_name} not available here: {why}") from None
        return run

    return build


def needs_triton_half(c: BlockConfig, device: torch.device) -> str | None:
    """Our FlashAttention kernel computes in bf16/fp16 with fp32 accumulation only (on a CUDA GPU)."""
    if c.dtype not in ("bf16", "fp16") and device.type == "cuda":
        return f"our Triton FlashAttention has no {c.dtype} path (bf16/fp16 only)"
    return needs_triton(c, device)


def _triton_flash(c: BlockConfig, i: Inputs):
    from roofline.kernels.flash_attention import flash_attention

    return lambda: flash_attention(i["q"], i["k"], i["v"], causal=is_causal(c), scale=c.head_dim ** -0.5)


def needs_decode_triton(c: BlockConfig, device: torch.device) -> str | None:
    """Split-KV serves one decode query per sequence (q_len = 1: a variant of decode only), in bf16/fp16, at
    head_dim 64 or 128 (on a CUDA GPU)."""
    if device.type != "cuda":
        return needs_triton(c, device)
    if c.dtype not in ("bf16", "fp16"):
        return f"our Triton split-KV kernel has no {c.dtype} path (bf16/fp16 only)"
    if c.head_dim not in (64, 128):
        return f"our Triton split-KV kernel has no head_dim {c.head_dim} path (64 or 128)"
    return needs_triton(c, device)


def _triton_splitkv(c: BlockConfig, i: Inputs):
    from roofline.kernels.flash_decoding import flash_decoding

    return lambda: flash_decoding(i["q"], i["k"], i["v"], scale=c.head_dim ** -0.5)


ATTENTION = Op(
    name="attention", group="attention", unit="tensor",
    flops=Formula("4*b*h*hd*pairs", "two matmuls; pairs = q·kv, or the unmasked half when causal"),
    min_bytes=Formula("2*(b*h*q*hd + b*h_kv*kv*hd)*bytes", "read Q, K, V; write O — never the N×N matrix"),
    make_inputs=lambda c, d, g: _qkv_inputs(c, d, g),
    reference=lambda c, i, rows: attention_reference(c, i["q"], i["k"], i["v"], rows),
    variants=(
        Variant("naive", _naive, scratch_bytes=lambda c: ((3 if is_causal(c) else 2) * c.batch * c.n_heads * c.q_len
                                                          * c.kv_len * c.dtype_bytes),
                doc="Q·Kᵀ → softmax → ·V in eager PyTorch, materialising N×N twice (three times with the causal mask)"),
        Variant("sdpa_flash", _sdpa("FLASH_ATTENTION"), fused=True, doc="SDPA, FlashAttention-2 backend"),
        Variant("sdpa_efficient", _sdpa("EFFICIENT_ATTENTION"), fused=True, requires=needs_cuda,
                doc="SDPA, memory-efficient (xFormers) backend"),
        Variant("sdpa_cudnn", _sdpa("CUDNN_ATTENTION"), fused=True, requires=needs_cuda,
                doc="SDPA, cuDNN backend"),
        Variant("triton", _triton_flash, fused=True, requires=needs_triton_half, doc="kernels/flash_attention.py"),
        Variant("triton_splitkv", _triton_splitkv, fused=True, requires=needs_decode_triton,
                applies=lambda c: c.mode == "decode",
                doc="kernels/flash_decoding.py: flash-decoding, the KV cache split across programs"),
    ),
    replaces=("repeat_kv", "qk_t", "softmax", "attn_v"),
    doc="The whole attention core, naive (unfused chain end to end) vs fused kernels.",
    backward_flops=Formula("8*b*h*hd*pairs", "dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q; FlashAttention's "
                           "recomputation of S = Q·Kᵀ, a fifth matmul, is not useful work and is not counted"),
    backward_bytes=Formula("4*(b*h*q*hd + b*h_kv*kv*hd)*bytes", "read Q, K, V, O, dO; write dQ, dK, dV — never "
                           "the N×N matrix"),
)

OUT_PROJ = linear_op(
    "out_proj", "attention", lambda c: c.attn_dim, lambda c: c.d_model,
    "The attention output projection: O·W_oᵀ back to d_model.", "K = heads·head_dim, N = d_model")

OPS = (QKV_PROJ, REPEAT_KV, QK_T, SOFTMAX, ATTN_V, ATTENTION, OUT_PROJ)

