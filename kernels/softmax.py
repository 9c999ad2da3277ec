"""Row softmax with a scale and an optional causal mask, one row per program.

``softmax(scale·x)`` over the last dimension of a contiguous [..., n_cols] tensor, viewed as
rows × n_cols. Unfused, torch reads x to scale it, writes it, reads it back for the max, the sum
and the division. Here each program owns one row, so the minimum traffic is

    reads rows·n_cols elements, writes rows·n_cols elements

(a causal mask skips reading the masked part). Math is float32, in base 2: ``exp(s·x - m)`` is
``exp2(s·log2(e)·x - m')``, one multiply and one MUFU ex2 per element.

Two paths:

* one block (n_cols ≤ MAX_ONE_BLOCK_COLS): the row sits in registers; one read, one write.
* looped (longer rows): pass 1 streams the row in blocks keeping a running max m and a running
  sum s (rescaled by exp2(m_old - m_new) when the max grows, the "online softmax"); pass 2
  re-reads each block and writes exp2(x - m) / s. The re-read usually hits L2 (a 32768-column
  bf16 row is 64 KiB), so DRAM traffic stays close to the minimum.

With ``causal``, x holds attention scores [..., q_len, kv_len] and element (i, j) is masked when
j > i + (kv_len - q_len): the mask is aligned to the bottom-right corner, as in decoding where the
q_len new queries are the last ones. A row with nothing visible (q_len > kv_len, or all -inf)
gives zeros where torch gives NaN.

Backward (autograd, when x requires grad): with y = softmax(s·x) saved from the forward (y, not x),

    dx = s · y ⊙ (dy − rowsum(dy ⊙ y))

masked positions hold y = 0, so dx = 0 there (a causal row reads only its visible columns). One program
per row again, one-block and looped (pass 1: rowsum(dy ⊙ y); pass 2: re-read, write dx) paths:

    reads 2·rows·n_cols elements (y, dy), writes rows·n_cols (dx): 3 elements per element
    FLOPs 5·rows·n_cols: dy·y and its row sum (2), subtract (1), times y (1), times s (1)
"""

import math
import os

import torch
import triton
import triton.language as tl

from .common import require_device

MAX_ONE_BLOCK_COLS = 16384  # longer rows take the looped path
LOOP_BLOCK_COLS = 4096  # columns per step of the looped path
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = math.log2(math.e)


@triton.jit
def _visible_cols(row, n_cols, q_len, causal_offset, CAUSAL: tl.constexpr):
    """Columns 0 .. n_visible-1 of this row are not masked (row i of q_len sees j <= i + offset)."""
    if CAUSAL:
        return tl.minimum(tl.maximum(row % q_len + causal_offset + 1, 0), n_cols)
    return n_cols


@triton.jit
def _round_up_16(n):
    """n rounded up to a multiple of 16, so that a mask `cols < n` keeps 16-byte vector loads."""
    return tl.multiple_of((n + 15) // 16 * 16, 16)


@triton.jit
def _row_span(row, n_cols, q_len, causal_offset, CAUSAL: tl.constexpr):
    """(n_visible, n_read): the row's unmasked columns, and the columns read (in whole 16-element vectors)."""
    n_visible = _visible_cols(row, n_cols, q_len, causal_offset, CAUSAL)
    return n_visible, tl.minimum(_round_up_16(n_visible), n_cols)


@triton.jit
def _softmax_one_block_kernel(X, Y, n_cols, q_len, causal_offset, scale_log2e,
                              BLOCK: tl.constexpr, CAUSAL: tl.constexpr):
    row = tl.program_id(0)
    offset = row.to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    in_row = cols < n_cols
    n_visible = _visible_cols(row, n_cols, q_len, causal_offset, CAUSAL)
    # read n_cols elements (causal: the visible ones, in whole 16-element vectors)
    x = tl.load(X + offset + cols, mask=in_row & (cols < _round_up_16(n_visible)), other=0.0)
    z = tl.where(cols < n_visible, x.to(tl.float32) * scale_log2e, float("-inf"))
    m = tl.max(z, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # a row that is fully masked: every exp2 is 0
    e = tl.exp2(z - m)
    s = tl.sum(e, axis=0)
    inv_s = 1.0 / tl.where(s > 0.0, s, 1.0)  # s = 0: every e is 0 already
    # write n_cols elements
    tl.store(Y + offset + cols, (e * inv_s).to(Y.dtype.element_ty), mask=in_row)


@triton.jit
def _softmax_looped_kernel(X, Y, n_cols, q_len, causal_offset, scale_log2e,
                           BLOCK: tl.constexpr, CAUSAL: tl.constexpr):
    row = tl.program_id(0)
    offset = row.to(tl.int64) * n_cols
    X += offset
    Y += offset
    cols = tl.arange(0, BLOCK)
    n_visible, n_read = _row_span(row, n_cols, q_len, causal_offset, CAUSAL)
    # pass 1: running max m and running sum s of exp2(z - m), reading the visible columns once
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    for start in tl.range(0, n_visible, BLOCK):
        c = start + cols
        x = tl.load(X + c, mask=c < n_read, other=0.0, eviction_policy="evict_last")  # kept for pass 2
        z = tl.where(c < n_visible, x.to(tl.float32) * scale_log2e, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # only -inf seen so far
        s = s * tl.exp2(m - m_safe) + tl.sum(tl.exp2(z - m_safe), axis=0)
        m = m_new
    m = tl.where(m == float("-inf"), 0.0, m)
    inv_s = 1.0 / tl.where(s > 0.0, s, 1.0)  # s = 0: every e is 0 already
    # pass 2: re-read (from L2, mostly) and write every column; masked blocks are written, not read
    for start in tl.range(0, n_cols, BLOCK):
        c = start + cols
        x = tl.load(X + c, mask=c < n_read, other=0.0, eviction_policy="evict_first")
        z = tl.where(c < n_visible, x.to(tl.float32) * scale_log2e, float("-inf"))
        tl.store(Y + c, (tl.exp2(z - m) * inv_s).to(Y.dtype.element_ty), mask=c < n_cols)


@triton.jit
def _softmax_backward_one_block_kernel(Y, DY, DX, n_cols, q_len, causal_offset, scale,
                                       BLOCK: tl.constexpr, CAUSAL: tl.constexpr):
    row = tl.program_id(0)
    offset = row.to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    in_row = cols < n_cols
    read = in_row & (cols < _round_up_16(_visible_cols(row, n_cols, q_len, causal_offset, CAUSAL)))
    # read y and dy (causal: the visible columns; y = 0 past them, so dx = 0 there)
    y = tl.load(Y + offset + cols, mask=read, other=0.0).to(tl.float32)
    dy = tl.load(DY + offset + cols, mask=read, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=0)
    # write n_cols elements
    tl.store(DX + offset + cols, (scale * y * (dy - dot)).to(DX.dtype.element_ty), mask=in_row)


@triton.jit
def _softmax_backward_looped_kernel(Y, DY, DX, n_cols, q_len, causal_offset, scale,
                                    BLOCK: tl.constexpr, CAUSAL: tl.constexpr):
    row = tl.program_id(0)
    offset = row.to(tl.int64) * n_cols
    Y += offset
    DY += offset
    DX += offset
    cols = tl.arange(0, BLOCK)
    n_visible, n_read = _row_span(row, n_cols, q_len, causal_offset, CAUSAL)
    # pass 1: rowsum(dy·y) over the visible columns
    dot = tl.full((), 0.0, tl.float32)
    for start in tl.range(0, n_visible, BLOCK):
        c = start + cols
        y = tl.load(Y + c, mask=c < n_read, other=0.0, eviction_policy="evict_last").to(tl.float32)
        dy = tl.load(DY + c, mask=c < n_read, other=0.0, eviction_policy="evict_last").to(tl.float32)
        dot += tl.sum(dy * y, axis=0)
    # pass 2: re-read (from L2, mostly) and write every column; masked blocks are written, not read
    for start in tl.range(0, n_cols, BLOCK):
        c = start + cols
        y = tl.load(Y + c, mask=c < n_read, other=0.0, eviction_policy="evict_first").to(tl.float32)
        dy = tl.load(DY + c, mask=c < n_read, other=0.0, eviction_policy="evict_first").to(tl.float32)
        tl.store(DX + c, (scale * y * (dy - dot)).to(DX.dtype.element_ty), mask=c < n_cols)


def _num_warps(block: int) -> int:
    """About 32 columns per thread: 8 warps for 8192 columns, 16 from 16384. ROOFLINE_SOFTMAX_WARPS forces another
    count: a launch-configuration experiment (scripts/device_run.sh's `regress` step builds a slower softmax with it
    to check that `compare` catches a real regression)."""
    forced = os.environ.get("ROOFLINE_SOFTMAX_WARPS")
    return int(forced) if forced else min(max(block // 1024, 4), 16)


def softmax(x: torch.Tensor, scale: float = 1.0, causal: bool = False, *,
            block_size: int | None = None) -> torch.Tensor:
    """Return softmax(scale·x) over the last dimension, in x's dtype (fp16, bf16 or fp32).

    Differentiable: with grad enabled and x.requires_grad, the backward is a Triton kernel too.

    causal: x is [..., q_len, kv_len] and (i, j) is masked when j > i + kv_len - q_len.
    block_size: columns per block (a power of two); smaller than the row forces the looped path.
    """
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.ndim < (2 if causal else 1):
        raise ValueError(f"x must be [..., {'q_len, ' if causal else ''}n_cols], got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous (call .contiguous() first)")
    require_device(x, "x")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if block_size is not None and (block_size < 16 or block_size & (block_size - 1)):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if torch.is_grad_enabled() and x.requires_grad:
        return _Softmax.apply(x, scale, causal, block_size)
    return _launch(x, scale, causal, block_size)


def _launch(x: torch.Tensor, scale: float, causal: bool, block_size: int | None,
            dy: torch.Tensor | None = None) -> torch.Tensor:
    """Forward y = softmax(scale·x), or with dy the backward dx (x is then the saved y)."""
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    q_len = x.shape[-2] if causal else 1
    whole_row = triton.next_power_of_2(n_cols)
    block = block_size or (whole_row if whole_row <= MAX_ONE_BLOCK_COLS else LOOP_BLOCK_COLS)
    one_block = block >= n_cols
    block = min(block, whole_row)
    if dy is None:
        kernel = _softmax_one_block_kernel if one_block else _softmax_looped_kernel
        args = (x, out, n_cols, q_len, n_cols - q_len, scale * LOG2E)
    else:
        kernel = _softmax_backward_one_block_kernel if one_block else _softmax_backward_looped_kernel
        args = (x, dy, out, n_cols, q_len, n_cols - q_len, scale)
    kernel[(n_rows,)](*args, BLOCK=block, CAUSAL=causal, num_warps=_num_warps(block))
    return out


class _Softmax(torch.autograd.Function):
    """softmax with a Triton backward; saves the output y (what the backward reads), not x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, causal: bool, block_size: int | None) -> torch.Tensor:
        y = _launch(x, scale, causal, block_size)
        ctx.save_for_backward(y)
        ctx.launch_args = (scale, causal, block_size)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (y,) = ctx.saved_tensors
        return _launch(y, *ctx.launch_args, dy=dy.contiguous()), None, None, None


def softmax_reference(x: torch.Tensor, scale: float = 1.0, causal: bool = False) -> torch.Tensor:
    """Plain PyTorch softmax(scale·x) in float32 (float64 for float64 input); fully masked rows give 0."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32) * scale
    if causal:
        q_len, kv_len = x.shape[-2:]
        i = torch.arange(q_len, device=x.device)[:, None]
        j = torch.arange(kv_len, device=x.device)[None, :]
        masked = j > i + (kv_len - q_len)
        return torch.softmax(x.masked_fill(masked, float("-inf")), dim=-1).masked_fill(masked, 0.0)
    return torch.softmax(x, dim=-1)
