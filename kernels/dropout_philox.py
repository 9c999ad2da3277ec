"""The dropout mask of the fused residual + dropout + norm kernels, forward and backward alike.

A counter-based Philox generator keyed on (seed, row, column): the same seed and shape give the same mask on any
launch order, so the backward regenerates the forward's mask instead of storing it. `tl.randint4x` returns four
32-bit numbers per call, so a row is processed as four contiguous quarters that share one call.
"""

import triton
import triton.language as tl


@triton.jit
def philox_quarters(seed, row, q, QUARTER: tl.constexpr, HAS_DROPOUT: tl.constexpr):
    """One Philox call per 4 elements: r_k[i] drops column k·QUARTER + i (forward and backward alike)."""
    if HAS_DROPOUT:
        r0, r1, r2, r3 = tl.randint4x(seed, row * QUARTER + q)
    else:
        r0, r1, r2, r3 = q, q, q, q
    return r0, r1, r2, r3


@triton.jit
def pick(r0, r1, r2, r3, K: tl.constexpr):  # r_K, for a static loop over the quarters
    return r0 if K == 0 else (r1 if K == 1 else (r2 if K == 2 else r3))


@triton.jit
def keep(random, keep_threshold):
    return (random >> 1).to(tl.int32) >= keep_threshold  # 31 uniform bits vs p·2^31


def block_columns(n_cols: int) -> int:
    """Columns per program, a power of two >= 4 (four Philox quarters): forward and backward must agree."""
    return triton.next_power_of_2(max(n_cols, 4))


def dropout_args(p: float) -> tuple[int, float]:
    """(keep_threshold, dropout_scale): keep when 31 random bits >= p·2^31, then scale by 1 / (1 - p)."""
    return min(int(p * 2**31), 2**31 - 1), 0.0 if p == 1.0 else 1.0 / (1.0 - p)
