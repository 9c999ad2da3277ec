"""Backward of the fused residual add + dropout + LayerNorm/RMSNorm (kernels/fused_add_dropout_norm.py).

With g = d_out·w and x̂ = (h − mean)·rstd (h = new_residual, mean and rstd saved by the forward in fp32):

    LayerNorm  dh = rstd·(g − mean(g) − x̂·mean(g·x̂)) + d_new_residual      RMSNorm: no mean(g)
    d_residual = dh,   dx = dh·keep/(1 − p),   d_weight = Σ_rows d_out·x̂,   d_bias = Σ_rows d_out

The dropout mask is not stored: it is regenerated from (seed, row, column) with the forward's own Philox call.
One launch holds two kinds of program, so nothing waits on a serial loop over rows:

- row programs, one per row, as the forward: read the row of new_residual, d_out and d_new_residual at once,
  reduce mean(g) and mean(g·x̂) from registers, write dx and d_residual. Each needs only its own row, so the
  GPU keeps as many rows in flight as it has room for, where a loop over rows inside a few programs per SM
  (the earlier design) waits on each row's reductions in turn.
- column programs (only for d_weight / d_bias): a [rows_per_split, COL_BLOCK] slab each, read in
  [ROW_BLOCK, COL_BLOCK] tiles into fp32 accumulators, then one fp32 partial sum per split and column.
  Program ids interleave them with the row programs of the same rows (per split: its column programs, then
  its rows), so the two read new_residual and d_out at about the same time and the second read mostly hits
  L2. The [splits, d] partials are summed by torch in a fixed order (deterministic, no atomics); with one
  split the column programs write d_weight / d_bias in their own dtype and nothing else runs.

Model bytes (elements of the storage dtype unless marked):

    reads  3·rows·d (new_residual, d_out, d_new_residual) + d (weight) + 2·rows fp32 (mean, rstd)
           + 2·rows·d again for d_weight / d_bias (new_residual, d_out: from L2 when the interleave works)
    writes 2·rows·d (dx, d_residual) + 2·splits·d fp32 partial sums (then read once and summed to 2·d)
    FLOPs  15·rows·d for LayerNorm with bias, dropout and both output grads: x̂ 2, g 1, Σg 1, Σg·x̂ 2, dh 4,
           + d_new_residual 1, dropout scale 1, d_weight 2, d_bias 1. RMSNorm: 11 (x̂ 1, no Σg, dh 3), 12 with a
           bias. The math only: the column programs recomputing x̂ are not counted.

A row program holds x̂, g and d_new_residual of its row in fp32 registers: ptxas (sm_90) reports no spills up to
d = 8192 (80 registers a thread for d = 4096 at 8 warps); wider rows spill some. Launch shape: the module
constants below; scripts/tune_norm.py sweeps them on a GPU and prints the best.
"""

import torch
import triton
import triton.language as tl

from .dropout_philox import block_columns, dropout_args, keep, philox_quarters, pick

BACKWARD_WARPS = 0  # warps per program (0: by row width, 8 for d = 4096)
BACKWARD_SPLIT_ROWS = 0  # rows per column program (0: one split, fastest on an H100 at 4096 and 8192 rows)
BACKWARD_COL_BLOCK = 64  # columns per column program (power of two; 64 bf16 = one 128-byte line)
BACKWARD_ROW_BLOCK = 32  # rows per tile of a column program (power of two)


@triton.jit
def _load_quarter(NEW_R, DOUT, DNEW_R, W, cols, mean, rstd, N_COLS: tl.constexpr):
    """One quarter of a row in fp32: x̂, g = d_out·w (0 past the row) and d_new_residual (0.0 where absent)."""
    in_row = cols < N_COLS
    x_hat, g, e = 0.0, 0.0, 0.0
    if DOUT is not None:
        x_hat = (tl.load(NEW_R + cols, mask=in_row, other=0.0).to(tl.float32) - mean) * rstd
        g = (tl.load(DOUT + cols, mask=in_row, other=0.0).to(tl.float32)
             * tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32))
    if DNEW_R is not None:
        e = tl.load(DNEW_R + cols, mask=in_row, other=0.0).to(tl.float32)
    return x_hat, g, e


@triton.jit
def _store_quarter(DX, DR, cols, x_hat, g, e, rstd, mean_g, mean_gx, random, keep_threshold, dropout_scale,
                   N_COLS: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """One quarter of a row: dh = rstd·(g − mean(g) − x̂·mean(g·x̂)) + d_new_residual, dx = dh·keep/(1 − p)."""
    in_row = cols < N_COLS
    dh = rstd * (g - mean_g - x_hat * mean_gx) + e  # a tensor: d_out and d_new_residual are never both None
    if DR is not None:
        tl.store(DR + cols, dh.to(DR.dtype.element_ty), mask=in_row)
    if DX is not None:
        if HAS_DROPOUT:
            dh = tl.where(keep(random, keep_threshold), dh * dropout_scale, 0.0)
        tl.store(DX + cols, dh.to(DX.dtype.element_ty), mask=in_row)


@triton.jit
def _row_grads(NEW_R, DOUT, DNEW_R, W, MEAN, RSTD, DX, DR, row, seed, keep_threshold, dropout_scale,
               N_COLS: tl.constexpr, QUARTER: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """dx and d_residual of one row: all loads first, the two means from registers, then the stores."""
    offset = row.to(tl.int64) * N_COLS
    NEW_R += offset
    if DOUT is not None:
        DOUT += offset
    if DNEW_R is not None:
        DNEW_R += offset
    q = tl.arange(0, QUARTER)
    rstd = tl.load(RSTD + row)
    mean = 0.0 if MEAN is None else tl.load(MEAN + row)
    x0, g0, e0 = _load_quarter(NEW_R, DOUT, DNEW_R, W, q, mean, rstd, N_COLS)
    x1, g1, e1 = _load_quarter(NEW_R, DOUT, DNEW_R, W, q + QUARTER, mean, rstd, N_COLS)
    x2, g2, e2 = _load_quarter(NEW_R, DOUT, DNEW_R, W, q + 2 * QUARTER, mean, rstd, N_COLS)
    x3, g3, e3 = _load_quarter(NEW_R, DOUT, DNEW_R, W, q + 3 * QUARTER, mean, rstd, N_COLS)
    mean_g = 0.0
    mean_gx = 0.0
    if DOUT is not None:
        mean_gx = (tl.sum(g0 * x0, axis=0) + tl.sum(g1 * x1, axis=0) + tl.sum(g2 * x2, axis=0)
                   + tl.sum(g3 * x3, axis=0)) / N_COLS
        if MEAN is not None:
            mean_g = (tl.sum(g0, axis=0) + tl.sum(g1, axis=0) + tl.sum(g2, axis=0) + tl.sum(g3, axis=0)) / N_COLS
    r0, r1, r2, r3 = philox_quarters(seed, row, q, QUARTER, HAS_DROPOUT)
    if DX is not None:
        DX += offset
    if DR is not None:
        DR += offset
    for k in tl.static_range(4):
        _store_quarter(DX, DR, q + k * QUARTER, pick(x0, x1, x2, x3, k), pick(g0, g1, g2, g3, k),
                       pick(e0, e1, e2, e3, k), rstd, mean_g, mean_gx, pick(r0, r1, r2, r3, k), keep_threshold,
                       dropout_scale, N_COLS, HAS_DROPOUT)


@triton.jit
def _column_sums(NEW_R, DOUT, MEAN, RSTD, DW, DB, split, col_block, n_rows, rows_per_split,
                 N_COLS: tl.constexpr, COL_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr):
    """Σ d_out·x̂ and Σ d_out over one split's rows for COL_BLOCK columns: row `split` of DW and DB."""
    cols = col_block * COL_BLOCK + tl.arange(0, COL_BLOCK)
    in_cols = cols < N_COLS
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, n_rows)
    dw = tl.zeros([ROW_BLOCK, COL_BLOCK], tl.float32)
    db = tl.zeros([ROW_BLOCK, COL_BLOCK], tl.float32)
    for first in tl.range(start, end, ROW_BLOCK):
        rows = first + tl.arange(0, ROW_BLOCK)
        in_rows = rows < end
        in_tile = in_rows[:, None] & in_cols[None, :]
        offsets = rows.to(tl.int64)[:, None] * N_COLS + cols[None, :]
        d_out = tl.load(DOUT + offsets, mask=in_tile, other=0.0).to(tl.float32)
        if DB is not None:
            db += d_out
        if DW is not None:
            h = tl.load(NEW_R + offsets, mask=in_tile, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=in_rows, other=0.0)
            if MEAN is not None:
                h -= tl.load(MEAN + rows, mask=in_rows, other=0.0)[:, None]
            dw += d_out * h * rstd[:, None]
    out = split * N_COLS + cols
    if DW is not None:
        tl.store(DW + out, tl.sum(dw, axis=0).to(DW.dtype.element_ty), mask=in_cols)
    if DB is not None:
        tl.store(DB + out, tl.sum(db, axis=0).to(DB.dtype.element_ty), mask=in_cols)


@triton.jit(do_not_specialize=["n_rows", "rows_per_split", "seed", "keep_threshold"])
def _fused_add_dropout_norm_backward_kernel(
    NEW_R, DOUT, DNEW_R, W, MEAN, RSTD, DX, DR, DW, DB,
    n_rows, rows_per_split, seed, keep_threshold, dropout_scale,
    N_COLS: tl.constexpr, QUARTER: tl.constexpr, COL_BLOCK: tl.constexpr, ROW_BLOCK: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
):
    """A None pointer is a gradient not needed (or an upstream gradient that is zero): its work compiles away."""
    pid = tl.program_id(0)
    if DW is None and DB is None:
        _row_grads(NEW_R, DOUT, DNEW_R, W, MEAN, RSTD, DX, DR, pid, seed, keep_threshold, dropout_scale,
                   N_COLS, QUARTER, HAS_DROPOUT)
    else:
        # per split: its N_COL_BLOCKS column programs, then its rows_per_split row programs (none if no dx, dr)
        N_COL_BLOCKS: tl.constexpr = (N_COLS + COL_BLOCK - 1) // COL_BLOCK
        chunk = N_COL_BLOCKS + (rows_per_split if DX is not None or DR is not None else 0)
        split = pid // chunk
        local = pid - split * chunk
        if local < N_COL_BLOCKS:
            _column_sums(NEW_R, DOUT, MEAN, RSTD, DW, DB, split, local, n_rows, rows_per_split,
                         N_COLS, COL_BLOCK, ROW_BLOCK)
        else:
            _row_grads(NEW_R, DOUT, DNEW_R, W, MEAN, RSTD, DX, DR, split * rows_per_split + local - N_COL_BLOCKS,
                       seed, keep_threshold, dropout_scale, N_COLS, QUARTER, HAS_DROPOUT)


def backward(new_residual: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, d_out: torch.Tensor | None, d_new_residual: torch.Tensor | None,
             p: float, seed: int, needs: tuple[bool, ...]):
    """(dx, d_residual, d_weight, d_bias), None where not needed; d_out or d_new_residual may be None (zero).

    One kernel launch, plus (with more than one split) one torch sum and a cast for d_weight / d_bias.
    """
    need_w = needs[2] and d_out is not None
    need_b = needs[3] and d_out is not None
    n_cols = new_residual.shape[-1]
    n_rows = rstd.shape[0]
    if n_rows == 0 or (d_out is None and d_new_residual is None):  # nothing to launch: zero gradients
        like, needed = (new_residual, new_residual, weight, bias), (needs[0], needs[1], need_w, need_b)
        return tuple(torch.zeros_like(t) if need else None for t, need in zip(like, needed, strict=True))
    dx = torch.empty_like(new_residual) if needs[0] else None
    dr = torch.empty_like(new_residual) if needs[1] else None
    block = block_columns(n_cols)
    weight = weight.contiguous()
    dw = db = part = None
    grid = n_rows if needs[0] or needs[1] else 0
    rows_per_split = min(BACKWARD_SPLIT_ROWS or n_rows, n_rows)
    col_block = min(BACKWARD_COL_BLOCK, block)
    if need_w or need_b:
        n_splits = triton.cdiv(n_rows, rows_per_split)
        if n_splits == 1:  # the column programs write the gradients themselves
            dw = torch.empty_like(weight) if need_w else None
            db = torch.empty_like(bias) if need_b else None
        else:
            part = torch.empty((need_w + need_b, n_splits, n_cols), device=weight.device, dtype=torch.float32)
            dw, db = part[0] if need_w else None, part[-1] if need_b else None
        grid += triton.cdiv(n_cols, col_block) * n_splits
    if grid:
        keep_threshold, dropout_scale = dropout_args(p)
        _fused_add_dropout_norm_backward_kernel[(grid,)](
            new_residual, d_out.contiguous() if d_out is not None else None,
            d_new_residual.contiguous() if d_new_residual is not None else None,
            weight, mean, rstd, dx, dr, dw, db, n_rows, rows_per_split, seed, keep_threshold, dropout_scale,
            N_COLS=n_cols, QUARTER=block // 4, COL_BLOCK=col_block, ROW_BLOCK=BACKWARD_ROW_BLOCK,
            HAS_DROPOUT=p > 0.0 and dx is not None,
            num_warps=BACKWARD_WARPS or min(max(block // 512, 4), 32),  # 16 fp32 per thread and tensor
        )
    if part is not None:  # [splits, d] fp32 partials: one sum in a fixed order, one cast
        sums = part.sum(1).to(weight.dtype if need_w else bias.dtype)
        dw, db = sums[0] if need_w else None, sums[-1].to(bias.dtype) if need_b else None
    return dx, dr, dw, db
