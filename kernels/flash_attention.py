"""Flash attention forward: softmax(scale·Q·Kᵀ)·V without writing the N×N matrix.

Each program owns BLOCK_M queries of one (batch, head). It keeps Q, the fp32 output accumulator,
the running row max m and the running row sum l on chip, and streams K and V in blocks of BLOCK_N
keys (FlashAttention-2, online softmax):

    s = Q·Kᵀ·scale·log2(e)        m_new = max(m, rowmax(s))       p = exp2(s - m_new)
    α = exp2(m - m_new)           l = α·l + rowsum(p)             acc = α·acc + p·V

and writes acc / l at the end. log2(e) is folded into the scale, so the exponent is one FMA and one
MUFU ex2. FLOPs: 4·b·h·q_len·kv_len·d (two matmuls), half that with a causal mask. Bytes:

    reads Q once and K, V once per BLOCK_M queries, writes O once — never the q_len×kv_len scores.

Layout [batch, heads, seq, head_dim], any strides with a contiguous last dimension. K and V may
have fewer heads than Q (grouped-query attention): query head h reads kv head h // (heads // kv_heads).
q_len may differ from kv_len (decode: q_len = 1); the causal mask is aligned to the bottom-right,
query i sees key j when j <= i + kv_len - q_len, and a query that sees no key gets zeros.

For a causal mask the key loop is split in two: blocks every query of the program sees entirely
run without any mask, then the diagonal blocks run with it; blocks past the diagonal are skipped.
Programs start from the last query block (the most keys), so the longest ones are scheduled first.
"""

import math
import os

import torch
import triton
import triton.language as tl

from .softmax import softmax_reference

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton runs kernels on the CPU
HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
LOG2E = math.log2(math.e)


def _configs() -> list[triton.Config]:
    """A few Hopper-friendly tiles; under the interpreter one small tile, so tests take seconds."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_n in (64, 128)
        for warps in (4, 8)
        for stages in (3, 4)
    ]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop tiles that cannot run well: more than 128 fp32 values per thread for the accumulator and
    the scores (BLOCK_M·(HEAD_DIM + BLOCK_N) / threads) spill registers inside the loop, and Q plus
    num_stages buffers of K and V must fit in the 227 KiB of shared memory of an H100."""
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    kept = []
    for config in configs:
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        fp32_per_thread = block_m * (head_dim + block_n) // (32 * config.num_warps)
        shared_bytes = 2 * head_dim * (block_m + 2 * block_n * config.num_stages)
        if fp32_per_thread <= 128 and shared_bytes <= 227 * 1024:
            kept.append(config)
    return kept or configs[:1]


@triton.jit
def _dot(a, b, acc, IN_FP32: tl.constexpr):
    """tl.dot; IN_FP32 upcasts the operands, for Triton's CPU interpreter, which multiplies the raw
    bits of bf16 values. On the GPU IN_FP32 is False: bf16/fp16 tensor cores, fp32 accumulation."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc) if IN_FP32 else tl.dot(a, b, acc)


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi,
                    offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """Fold keys lo .. hi-1 into (acc, l_i, m_i). MASKED: check key bounds and the causal mask."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k_ptrs = K + (start_n + offs_n)[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = V + (start_n + offs_n)[:, None] * stride_vn + offs_d[None, :]
        # read BLOCK_N keys, s = q·kᵀ
        if MASKED:
            in_kv = (start_n + offs_n) < kv_len
            k = tl.load(k_ptrs, mask=in_kv[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = _dot(q, tl.trans(k), None, DOT_IN_FP32)
        if MASKED:
            visible = in_kv[None, :]
            if CAUSAL:
                visible = visible & ((start_n + offs_n)[None, :] <= offs_m[:, None] + causal_offset)
            qk = tl.where(visible, qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_ij == float("-inf"), 0.0, m_ij)  # a query with no key seen yet
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
            alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        # read BLOCK_N values, acc = α·acc + p·v
        v = tl.load(v_ptrs, mask=in_kv[:, None], other=0.0) if MASKED else tl.load(v_ptrs)
        acc = acc * alpha[:, None]
        acc = _dot(p.to(v.dtype), v, acc, DOT_IN_FP32)
        m_i = m_ij
    return acc, l_i, m_i


@triton.autotune(configs=_configs(), key=["q_len", "kv_len", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads, group_size, q_len, kv_len, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # the query blocks of one head are neighbours in launch order, so its K and V stay in L2;
    # causal: the last query blocks see the most keys, so they start first
    n_blocks_m = tl.cdiv(q_len, BLOCK_M)
    off_bh = tl.program_id(0) // n_blocks_m
    start_m = tl.program_id(0) % n_blocks_m
    if CAUSAL:
        start_m = n_blocks_m - 1 - start_m
    off_b = (off_bh // heads).to(tl.int64)
    off_h = (off_bh % heads).to(tl.int64)
    off_kvh = off_h // group_size
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_kvh * stride_kh
    V += off_b * stride_vb + off_kvh * stride_vh
    Out += off_b * stride_ob + off_h * stride_oh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # read BLOCK_M queries, once
    in_q = offs_m < q_len
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :], mask=in_q[:, None], other=0.0)

    # keys [0, n_full) are seen by every query of the block; [n_full, hi) need a mask
    causal_offset = kv_len - q_len
    if CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M + causal_offset, kv_len)
        n_full = tl.minimum(start_m * BLOCK_M + causal_offset + 1, kv_len)
    else:
        hi = kv_len
        n_full = kv_len
    n_full = tl.maximum(n_full, 0) // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, 0, n_full,
                                    offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                                    BLOCK_N, CAUSAL, False, DOT_IN_FP32)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, n_full, hi,
                                    offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                                    BLOCK_N, CAUSAL, True, DOT_IN_FP32)

    # write BLOCK_M outputs
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(Out + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(Out.dtype.element_ty), mask=in_q[:, None])


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Return softmax(scale·q·kᵀ (+ causal mask))·v, shape and dtype of q.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim] with heads a
    multiple of kv_heads; fp16 or bf16; head_dim in HEAD_DIMS; last dimension contiguous.
    scale defaults to 1/sqrt(head_dim).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, heads, seq, head_dim], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must all be float16 or all bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, q_len, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be [{batch}, kv_heads, kv_len, {head_dim}] and equal, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS}, got {head_dim}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v need a contiguous last dimension (stride 1)")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not q.is_cuda and not INTERPRET:
        raise ValueError(f"q is on {q.device}: the kernel needs a CUDA device (or TRITON_INTERPRET=1)")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    if kv_len == 0:
        return out.zero_()

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(q_len, meta["BLOCK_M"]) * batch * heads,)

    _attn_fwd_kernel[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, heads // kv_heads, q_len, kv_len, scale * LOG2E,
        HEAD_DIM=head_dim, CAUSAL=causal, DOT_IN_FP32=INTERPRET and q.dtype == torch.bfloat16,
    )
    return out


def flash_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                              scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch attention in float32 (float64 for float64 input), materialising the scores."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    group_size = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group_size, dim=1), v.repeat_interleave(group_size, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return softmax_reference(q @ k.transpose(-1, -2), scale, causal) @ v
