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

Backward (autograd, when x, residual, weight or bias requires grad). The forward then also writes the
per-row mean and rstd (fp32, 2·rows·4 bytes; a constexpr flag keeps the forward-only kernel as it was),
and saves them with new_residual (an output anyway). The dropout mask is not stored: the backward
regenerates it from (seed, row, column) with the forward's own Philox call, which saves the rows·d
mask bytes a framework dropout keeps. With g = d_out·w and x̂ = (h − mean)·rstd:

    LayerNorm  dh = rstd·(g − mean(g) − x̂·mean(g·x̂)) + d_new_residual      RMSNorm: no mean(g)
    d_residual = dh,   dx = dh·keep/(1 − p),   d_weight = Σ_rows d_out·x̂,   d_bias = Σ_rows d_out

Each program owns a run of rows; its d_weight / d_bias shares (2·d fp32) stay in registers, then go to an
fp32 [programs, d] buffer that torch sums: deterministic, no atomics. Per row, pass 1 reads the row for the
two means, pass 2 re-reads it (L1/L2) and writes, both by Philox quarters. ptxas (sm_90) reports no spills
up to d = 8192; wider rows spill some (at d = 32768 the shares alone would fill an SM's register file).

    reads  3·rows·d elements (new_residual, d_out, d_new_residual) + d (weight) + 2·rows fp32 (mean, rstd)
    writes 2·rows·d elements (dx, d_residual) + 2·programs·d fp32 partial sums (then summed to 2·d)
    FLOPs  15·rows·d for LayerNorm with bias, dropout and both output grads: x̂ 2, g 1, Σg 1, Σg·x̂ 2, dh 4,
           + d_new_residual 1, dropout scale 1, d_weight 2, d_bias 1. RMSNorm: 11 (x̂ 1, no Σg, dh 3), 12 with a
           bias. The math only: pass 2 recomputing x̂ and g is not counted.
"""

import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton runs kernels on the CPU
MAX_COLS = 32768  # the whole row lives in registers: past this it would spill
NORMS = ("layernorm", "rmsnorm")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKWARD_PROGRAMS_PER_SM, BACKWARD_WARPS = 2, 0  # backward launch shape (0 warps: by row width); scripts/tune_norm.py


@triton.jit
def _philox_quarters(seed, row, q, QUARTER: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """One Philox call per 4 elements: r_k[i] drops column k·QUARTER + i (forward and backward alike)."""
    if HAS_DROPOUT:
        r0, r1, r2, r3 = tl.randint4x(seed, row * QUARTER + q)
    else:
        r0, r1, r2, r3 = q, q, q, q
    return r0, r1, r2, r3


@triton.jit
def _pick(r0, r1, r2, r3, K: tl.constexpr):  # r_K, for a static loop over the quarters
    return r0 if K == 0 else (r1 if K == 1 else (r2 if K == 2 else r3))


@triton.jit
def _keep(random, keep_threshold):
    return (random >> 1).to(tl.int32) >= keep_threshold  # 31 uniform bits vs p·2^31


@triton.jit
def _add_dropout(X, R, NEW_R, cols, n_cols, random, keep_threshold, dropout_scale,
                 HAS_DROPOUT: tl.constexpr):
    """One quarter of a row: h = residual + dropout(x), stored as new_residual, returned in fp32."""
    in_row = cols < n_cols
    x = tl.load(X + cols, mask=in_row, other=0.0).to(tl.float32)
    r = tl.load(R + cols, mask=in_row, other=0.0).to(tl.float32)
    if HAS_DROPOUT:
        x = tl.where(_keep(random, keep_threshold), x * dropout_scale, 0.0)
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
    r0, r1, r2, r3 = _philox_quarters(seed, row, q, QUARTER, HAS_DROPOUT)
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


@triton.jit
def _backward_quarter(NEW_R, DOUT, DNEW_R, W, DX, DR, cols, n_cols, mean, rstd, mean_g, mean_gx,
                      random, keep_threshold, dropout_scale, HAS_DOUT: tl.constexpr, HAS_DNEW_R: tl.constexpr,
                      HAS_DROPOUT: tl.constexpr, STORE_DX: tl.constexpr, STORE_DR: tl.constexpr):
    """One quarter of a row: dh = rstd·(g − mean(g) − x̂·mean(g·x̂)) + d_new_residual, dx = dh·keep/(1 − p)."""
    in_row = cols < n_cols
    dh = tl.full(cols.shape, 0.0, tl.float32)
    if HAS_DOUT:
        h = tl.load(NEW_R + cols, mask=in_row, other=0.0).to(tl.float32)
        g = tl.load(DOUT + cols, mask=in_row, other=0.0).to(tl.float32) * tl.load(W + cols, mask=in_row).to(tl.float32)
        dh = rstd * (g - mean_g - (h - mean) * rstd * mean_gx)
    if HAS_DNEW_R:
        dh += tl.load(DNEW_R + cols, mask=in_row, other=0.0).to(tl.float32)
    if STORE_DR:
        tl.store(DR + cols, dh.to(DR.dtype.element_ty), mask=in_row)
    if STORE_DX:
        if HAS_DROPOUT:
            dh = tl.where(_keep(random, keep_threshold), dh * dropout_scale, 0.0)
        tl.store(DX + cols, dh.to(DX.dtype.element_ty), mask=in_row)


@triton.jit
def _grad_sums_quarter(NEW_R, DOUT, W, cols, n_cols, mean, rstd, dw, db):
    """One quarter of a row: (Σg, Σg·x̂) and the d_weight, d_bias shares plus d_out·x̂ and d_out."""
    in_row = cols < n_cols
    h = tl.load(NEW_R + cols, mask=in_row, other=0.0).to(tl.float32)
    d_out = tl.load(DOUT + cols, mask=in_row, other=0.0).to(tl.float32)
    x_hat = tl.where(in_row, (h - mean) * rstd, 0.0)
    g = d_out * tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    return tl.sum(g, axis=0), tl.sum(g * x_hat, axis=0), dw + d_out * x_hat, db + d_out


@triton.jit
def _store_quarters(PTR, q, n_cols, v0, v1, v2, v3, QUARTER: tl.constexpr):
    for k in tl.static_range(4):
        tl.store(PTR + q + k * QUARTER, _pick(v0, v1, v2, v3, k), mask=q + k * QUARTER < n_cols)


@triton.jit(do_not_specialize=["seed", "keep_threshold"])
def _fused_add_dropout_norm_backward_kernel(
    NEW_R, DOUT, DNEW_R, W, MEAN, RSTD, DX, DR, DW_PART, DB_PART,
    n_rows, n_cols, rows_per_program, seed, keep_threshold, dropout_scale,
    QUARTER: tl.constexpr, HAS_DOUT: tl.constexpr, HAS_DNEW_R: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    STORE_DX: tl.constexpr, STORE_DR: tl.constexpr, STORE_DW: tl.constexpr, STORE_DB: tl.constexpr,
    IS_RMS: tl.constexpr,
):
    program = tl.program_id(0)
    q = tl.arange(0, QUARTER)
    zero = tl.zeros([QUARTER], tl.float32)
    dw0, dw1, dw2, dw3, db0, db1, db2, db3 = zero, zero, zero, zero, zero, zero, zero, zero
    row_start = program * rows_per_program
    for i in tl.range(0, tl.minimum(rows_per_program, n_rows - row_start)):
        row = row_start + i  # int32, as the forward's program id: the same Philox offsets
        offset = row.to(tl.int64) * n_cols
        rstd = tl.load(RSTD + row)
        mean = 0.0 if IS_RMS else tl.load(MEAN + row)
        mean_g = 0.0
        mean_gx = 0.0
        if HAS_DOUT:
            # pass 1: read new_residual and d_out; mean(g), mean(g·x̂) and this program's d_weight, d_bias shares
            NR, DO = NEW_R + offset, DOUT + offset
            s0, sx0, dw0, db0 = _grad_sums_quarter(NR, DO, W, q, n_cols, mean, rstd, dw0, db0)
            s1, sx1, dw1, db1 = _grad_sums_quarter(NR, DO, W, q + QUARTER, n_cols, mean, rstd, dw1, db1)
            s2, sx2, dw2, db2 = _grad_sums_quarter(NR, DO, W, q + 2 * QUARTER, n_cols, mean, rstd, dw2, db2)
            s3, sx3, dw3, db3 = _grad_sums_quarter(NR, DO, W, q + 3 * QUARTER, n_cols, mean, rstd, dw3, db3)
            mean_gx = (sx0 + sx1 + sx2 + sx3) / n_cols
            if not IS_RMS:
                mean_g = (s0 + s1 + s2 + s3) / n_cols
        # pass 2: re-read (L1/L2), read d_new_residual, write d_residual and dx (mask regenerated per quarter)
        r0, r1, r2, r3 = _philox_quarters(seed, row, q, QUARTER, HAS_DROPOUT)
        for k in tl.static_range(4):
            _backward_quarter(NEW_R + offset, DOUT + offset, DNEW_R + offset, W, DX + offset, DR + offset,
                              q + k * QUARTER, n_cols, mean, rstd, mean_g, mean_gx, _pick(r0, r1, r2, r3, k),
                              keep_threshold, dropout_scale, HAS_DOUT, HAS_DNEW_R, HAS_DROPOUT, STORE_DX, STORE_DR)
    # write this program's fp32 partial sums of d_weight and d_bias
    if STORE_DW:
        _store_quarters(DW_PART + program * n_cols, q, n_cols, dw0, dw1, dw2, dw3, QUARTER)
    if STORE_DB:
        _store_quarters(DB_PART + program * n_cols, q, n_cols, db0, db1, db2, db3, QUARTER)


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
    if not x.is_cuda and not INTERPRET:
        raise ValueError(f"x is on {x.device}: the kernel needs a CUDA device (or TRITON_INTERPRET=1)")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, weight, bias)):
        return _FusedAddDropoutNorm.apply(x, residual, weight, bias, p, seed, eps, norm)
    out, new_residual, _, _ = _forward(x, residual, weight, bias, p, seed, eps, norm, store_stats=False)
    return out, new_residual


def _block(n_cols: int) -> int:
    """Columns per program, a power of two >= 4 (four Philox quarters): forward and backward must agree."""
    return triton.next_power_of_2(max(n_cols, 4))


def _dropout_args(p: float) -> tuple[int, float]:
    """(keep_threshold, dropout_scale): keep when 31 random bits >= p·2^31, then scale by 1 / (1 - p)."""
    return min(int(p * 2**31), 2**31 - 1), 0.0 if p == 1.0 else 1.0 / (1.0 - p)


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
    block = _block(n_cols)
    keep_threshold, dropout_scale = _dropout_args(p)
    _fused_add_dropout_norm_kernel[(n_rows,)](
        x, residual, weight.contiguous(), bias.contiguous() if bias is not None else weight, out, new_residual,
        mean if mean is not None else out, rstd if rstd is not None else out,
        n_cols, seed, keep_threshold, dropout_scale, eps,
        QUARTER=block // 4, HAS_DROPOUT=p > 0.0, HAS_BIAS=bias is not None, IS_RMS=is_rms,
        STORE_STATS=store_stats,
        num_warps=min(max(block // 1024, 4), 16),  # about 32 fp32 values per thread and tensor
    )
    return out, new_residual, mean, rstd


def _backward(new_residual: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None, d_out: torch.Tensor | None, d_new_residual: torch.Tensor | None,
              p: float, seed: int, needs: tuple[bool, ...]):
    """(dx, d_residual, d_weight, d_bias), None where not needed; d_out or d_new_residual may be None (zero)."""
    need_x, need_r, need_w, need_b = needs[:4]
    need_w, need_b = need_w and d_out is not None, need_b and d_out is not None and bias is not None
    n_cols = new_residual.shape[-1]
    n_rows = new_residual.numel() // n_cols
    dx = torch.empty_like(new_residual) if need_x else None
    dr = torch.empty_like(new_residual) if need_r else None
    device = new_residual.device  # BACKWARD_PROGRAMS_PER_SM per SM, each over a run of rows (8 when interpreted)
    programs = (BACKWARD_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
                if device.type == "cuda" else 8)
    rows_per_program = triton.cdiv(n_rows, max(min(programs, n_rows), 1))
    n_programs = triton.cdiv(n_rows, rows_per_program) if n_rows else 1
    part = [torch.zeros(n_programs, n_cols, device=device, dtype=torch.float32) if need else None
            for need in (need_w, need_b)]
    if n_rows and (need_x or need_r or need_w or need_b):
        block = _block(n_cols)
        keep_threshold, dropout_scale = _dropout_args(p)
        ptr = [t.contiguous() if t is not None else new_residual for t in (d_out, d_new_residual, mean, dx, dr)]
        _fused_add_dropout_norm_backward_kernel[(n_programs,)](
            new_residual, ptr[0], ptr[1], weight.contiguous(), ptr[2], rstd, ptr[3], ptr[4],
            part[0] if need_w else rstd, part[1] if need_b else rstd,
            n_rows, n_cols, rows_per_program, seed, keep_threshold, dropout_scale,
            QUARTER=block // 4, HAS_DOUT=d_out is not None, HAS_DNEW_R=d_new_residual is not None,
            HAS_DROPOUT=p > 0.0, STORE_DX=need_x, STORE_DR=need_r, STORE_DW=need_w, STORE_DB=need_b,
            IS_RMS=mean is None, num_warps=BACKWARD_WARPS or min(max(block // 512, 4), 32),  # 8 for d = 4096
        )
    d_weight = part[0].sum(0).to(weight.dtype) if need_w else None
    d_bias = part[1].sum(0).to(bias.dtype) if need_b else None
    return dx, dr, d_weight, d_bias


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
        grads = _backward(new_residual, mean, rstd, weight, bias, d_out, d_new_residual, *ctx.dropout,
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

