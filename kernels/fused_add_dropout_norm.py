"""Fused residual add + dropout + LayerNorm/RMSNorm, one row per program.

A Transformer block ends each sub-layer with ``h = residual + dropout(x)`` followed by the next
norm. Unfused, that chain reads and writes the [rows, d] activations several times (dropout: read x,
write x'; add: read x' and residual, write h; norm: read h, write out). Fused, each program keeps
one row in registers and touches DRAM once per tensor:

    reads  2·rows·d elements (x, residual) + 2·d (weight, bias)
    writes 2·rows·d elements (out, new_residual)

Statistics (mean, variance) are computed in float32 from the float32 sum, before it is rounded to
the storage dtype. The dropout mask comes from a counter-based Philox generator keyed on
``(seed, row, column)``: the same seed and shape give the same mask, on any launch order.
``tl.randint4x`` returns four 32-bit numbers per Philox call, so the row is processed as four
contiguous quarters that share one call; a per-element ``tl.rand`` costs four times the integer
work and, on H100, about half the bandwidth.

Backward (autograd, when x, residual, weight or bias requires grad): kernels/fused_add_dropout_norm_backward.py.
The forward then also writes the per-row mean and rstd (fp32, 2·rows·4 bytes; a constexpr flag keeps the
forward-only kernel as it was) and saves them with new_residual (an output anyway). The dropout mask is not
stored: the backward regenerates it from (seed, row, column) with the same Philox call (dropout_philox.py),
which saves the rows·d mask bytes a framework dropout keeps. Backward FLOPs: 15·rows·d for LayerNorm with bias
(11 for RMSNorm).
"""

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import fused_add_dropout_norm_backward as _backward
from .common import require_device
from .dropout_philox import block_columns, dropout_args, keep, philox_quarters

MAX_COLS = 32768  # the whole row lives in registers: past this it would spill
NORMS = ("layernorm", "rmsnorm")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _add_dropout(X, R, NEW_R, cols, n_cols, random, keep_threshold, dropout_scale,
                 HAS_DROPOUT: tl.constexpr):
    """One quarter of a row: h = residual + dropout(x), stored as new_residual, returned in fp32."""
    in_row = cols < n_cols
    x = tl.load(X + cols, mask=in_row, other=0.0).to(tl.float32)
    r = tl.load(R + cols, mask=in_row, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        x = tl.where(keep(random, keep_threshold), x * dropout_scale, 0.0)
    h = r + x
    tl.store(NEW_R + cols, h.to(NEW_R.dtype.element_ty), mask=in_row)
    return h


@triton.jit
def _normalize(OUT, W, B, cols, n_cols, h, mean, rstd, HAS_BIAS: tl.constexpr):
    """One quarter of a row: out = (h - mean)·rstd·weight (+ bias)."""
    in_row = cols < n_cols
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    y = (h - mean) * rstd * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=in_row, other=0.0).to(tl.float32)
    tl.store(OUT + cols, y.to(OUT.dtype.element_ty), mask=in_row)


@triton.jit
def _sum_sq_dev(h, cols, n_cols, mean):
    """Sum over one quarter of (h - mean)², padding excluded."""
    dev = tl.where(cols < n_cols, h - mean, 0.0)
    return tl.sum(dev * dev, axis=0)


@triton.jit(do_not_specialize=["seed", "keep_threshold"])  # a new seed each call: no recompiles
def _fused_add_dropout_norm_kernel(
    X, R, W, B, OUT, NEW_R, MEAN, RSTD,
    n_cols, seed, keep_threshold, dropout_scale, eps,
    QUARTER: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_BIAS: tl.constexpr, IS_RMS: tl.constexpr,
    STORE_STATS: tl.constexpr,
):
    row = tl.program_id(0)
    offset = row.to(tl.int64) * n_cols
    X += offset
    R += offset
    OUT += offset
    NEW_R += offset
    q = tl.arange(0, QUARTER)
    r0, r1, r2, r3 = philox_quarters(seed, row, q, QUARTER, HAS_DROPOUT)
    # read x and residual, write new_residual: 4 quarters of QUARTER contiguous columns
    h0 = _add_dropout(X, R, NEW_R, q, n_cols, r0, keep_threshold, dropout_scale, HAS_DROPOUT)
    h1 = _add_dropout(X, R, NEW_R, q + QUARTER, n_cols, r1, keep_threshold, dropout_scale, HAS_DROPOUT)
    h2 = _add_dropout(X, R, NEW_R, q + 2 * QUARTER, n_cols, r2, keep_threshold, dropout_scale, HAS_DROPOUT)
    h3 = _add_dropout(X, R, NEW_R, q + 3 * QUARTER, n_cols, r3, keep_threshold, dropout_scale, HAS_DROPOUT)
    # statistics in fp32, from registers (padding loaded as 0)
    if IS_RMS:
        mean = 0.0
    else:
        mean = (tl.sum(h0, axis=0) + tl.sum(h1, axis=0) + tl.sum(h2, axis=0) + tl.sum(h3, axis=0)) / n_cols
    var = (_sum_sq_dev(h0, q, n_cols, mean) + _sum_sq_dev(h1, q + QUARTER, n_cols, mean)
           + _sum_sq_dev(h2, q + 2 * QUARTER, n_cols, mean) + _sum_sq_dev(h3, q + 3 * QUARTER, n_cols, mean))
    rstd = 1.0 / tl.sqrt(var / n_cols + eps)
    if STORE_STATS:  # for the backward: 1 or 2 fp32 per row
        tl.store(RSTD + row, rstd)
        if not IS_RMS:
            tl.store(MEAN + row, mean)
    # write out
    _normalize(OUT, W, B, q, n_cols, h0, mean, rstd, HAS_BIAS)
    _normalize(OUT, W, B, q + QUARTER, n_cols, h1, mean, rstd, HAS_BIAS)
    _normalize(OUT, W, B, q + 2 * QUARTER, n_cols, h2, mean, rstd, HAS_BIAS)
    _normalize(OUT, W, B, q + 3 * QUARTER, n_cols, h3, mean, rstd, HAS_BIAS)


def fused_add_dropout_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    p: float,
    seed: int,
    eps: float = 1e-5,
    norm: str = "layernorm",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(norm(residual + dropout(x, p)) · weight + bias, residual + dropout(x, p))``.

    x, residual: [..., d] contiguous, same shape and dtype (fp16, bf16 or fp32); weight, bias: [d].
    Dropout keeps an element with probability 1 - p and scales it by 1 / (1 - p); p = 0 is exact.
    norm: "layernorm" (mean and variance) or "rmsnorm" (root mean square, no centring).
    Differentiable in x, residual, weight and bias (grad enabled and one of them requires grad).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual must match x: got {tuple(residual.shape)} {residual.dtype}, "
                         f"x is {tuple(x.shape)} {x.dtype}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must be [..., d] with d >= 1, got shape {tuple(x.shape)}")
    if not (x.is_contiguous() and residual.is_contiguous()):
        raise ValueError("x and residual must be contiguous (call .contiguous() first)")
    n_cols = x.shape[-1]
    if n_cols > MAX_COLS:
        raise ValueError(f"d = {n_cols} is too wide: the row is held in registers, at most {MAX_COLS}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.shape != (n_cols,) or not t.is_floating_point()):
            raise ValueError(f"{name} must be a float tensor of shape ({n_cols},), "
                             f"got {tuple(t.shape)} {t.dtype}")
    if any(t is not None and t.device != x.device for t in (residual, weight, bias)):
        raise ValueError(f"x, residual, weight and bias must be on one device ({x.device})")
    require_device(x)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, weight, bias)):
        return _FusedAddDropoutNorm.apply(x, residual, weight, bias, p, seed, eps, norm)
    out, new_residual, _, _ = _forward(x, residual, weight, bias, p, seed, eps, norm, store_stats=False)
    return out, new_residual


def _forward(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float,
             seed: int, eps: float, norm: str, store_stats: bool):
    """(out, new_residual, mean, rstd); mean and rstd (fp32, per row) only with store_stats, mean not for RMS."""
    out = torch.empty_like(x)
    new_residual = torch.empty_like(residual)
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    is_rms = norm == "rmsnorm"
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32) if store_stats else None
    mean = torch.empty_like(rstd) if store_stats and not is_rms else None
    if n_rows == 0:
        return out, new_residual, mean, rstd
    block = block_columns(n_cols)
    keep_threshold, dropout_scale = dropout_args(p)
    _fused_add_dropout_norm_kernel[(n_rows,)](
        x, residual, weight.contiguous(), bias.contiguous() if bias is not None else weight, out, new_residual,
        mean if mean is not None else out, rstd if rstd is not None else out,
        n_cols, seed, keep_threshold, dropout_scale, eps,
        QUARTER=block // 4, HAS_DROPOUT=p > 0.0, HAS_BIAS=bias is not None, IS_RMS=is_rms,
        STORE_STATS=store_stats,
        num_warps=min(max(block // 1024, 4), 16),  # about 32 fp32 values per thread and tensor
    )
    return out, new_residual, mean, rstd


class _FusedAddDropoutNorm(torch.autograd.Function):
    """Saves new_residual, weight and the per-row fp32 mean and rstd; the dropout mask is regenerated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                p: float, seed: int, eps: float, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        out, new_residual, mean, rstd = _forward(x, residual, weight, bias, p, seed, eps, norm, store_stats=True)
        ctx.save_for_backward(new_residual, mean, rstd, weight, bias)
        ctx.dropout = (p, seed)
        ctx.set_materialize_grads(False)  # an unused output's grad stays None: nothing read for it
        return out, new_residual

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: torch.Tensor | None, d_new_residual: torch.Tensor | None) -> tuple:
        new_residual, mean, rstd, weight, bias = ctx.saved_tensors
        grads = _backward.backward(new_residual, mean, rstd, weight, bias, d_out, d_new_residual, *ctx.dropout,
                                   ctx.needs_input_grad)
        return (*grads, None, None, None, None)


def dropout_keep_mask(shape: tuple[int, ...], p: float, seed: int, device: torch.device | str) -> torch.Tensor:
    """The kernel's own keep mask (bool, shape of x; any dtype) for (p, seed), for tests: x = 1, residual = 0."""
    ones = torch.ones(shape, device=device)
    with torch.no_grad():
        _, kept = fused_add_dropout_norm(ones, torch.zeros_like(ones), ones.new_ones(shape[-1]), None, p, seed)
    return kept != 0


def fused_add_dropout_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    p: float = 0.0,
    eps: float = 1e-5,
    norm: str = "layernorm",
    keep_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch ``(out, new_residual)`` in float32 (float64 for float64 input).

    keep_mask (bool, shape of x) replaces torch's own dropout draw, so a test can replay the kernel's
    mask; without it, p > 0 uses ``torch.nn.functional.dropout`` (same law, other numbers).
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, residual, weight = x.to(dtype), residual.to(dtype), weight.to(dtype)
    if keep_mask is not None:
        dropped = torch.where(keep_mask, x / (1.0 - p) if p < 1.0 else 0.0 * x, 0.0)
    else:
        dropped = torch.nn.functional.dropout(x, p, training=True)
    new_residual = residual + dropped
    if norm == "rmsnorm":
        out = new_residual * torch.rsqrt(new_residual.pow(2).mean(-1, keepdim=True) + eps) * weight
    else:
        out = torch.nn.functional.layer_norm(new_residual, (x.shape[-1],), eps=eps) * weight
    if bias is not None:
        out = out + bias.to(dtype)
    return out, new_residual
