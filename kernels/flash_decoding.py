"""Flash-decoding: attention of one new query per sequence over a KV cache split across programs.

A decode step has q_len = 1: out = softmax(scale·q·Kᵀ)·V for one query row per (batch, head), and the
work is streaming the cache from HBM. One program per query head leaves most SMs idle at batch 1
(llama3-8b: 32 heads for the 132 SMs of an H100), each streaming kv_len keys alone. Split-KV cuts kv_len
into num_splits chunks, so batch·kv_heads·num_splits programs stream the cache together:

* pass 1, grid (num_splits, batch·kv_heads): each program folds its chunk into a partial result with the
  online softmax of FlashAttention (running max m, sum l, accumulator acc, in base 2) and writes, for
  each of its query heads, o = acc / l and lse = m + log2(l);
* pass 2, grid (batch·heads,): out = Σₛ wₛ·oₛ / Σₛ wₛ with wₛ = 2^(lseₛ − maxₛ lseₛ) (log-sum-exp).
  With one split pass 1 writes the output itself and pass 2 does not run.

GQA: the g = heads / kv_heads query heads that share a KV head are the rows of one program (padded to 16,
tl.dot's minimum), so each K/V tile is read from HBM once for the whole group, never g times. Its two
dots run on tensor cores, whose spare throughput pays for the padding rows; the kernel is memory-bound.

Bytes (min_bytes of the attention op): read q and K, V once, 2·b·kv_h·kv·hd cache elements; write out.
The partials add b·h·S·(hd + 1) fp32 written then read back (mostly from L2): 1.1 MB, 3 % of the 34 MB
cache of llama3-8b at batch 1 and kv 8192 with the default 32 splits; none with S = 1.
FLOPs: 4·b·h·kv·hd (padding rows are not useful work).
"""

import math

import torch
import triton
import triton.language as tl

from .common import INTERPRET, dot, dot_in_fp32
from .flash_attention import check_qkv

HEAD_DIMS = (64, 128)
LOG2E = math.log2(math.e)
PROGRAMS_PER_SM = 2  # default num_splits: about two programs per SM ("two waves"), see default_num_splits
MIN_SPLIT_KEYS = 256  # ... with each split long enough that its partials stay small next to its K/V
MAX_SPLITS = 128


@triton.jit
def _split_kv_kernel(Q, K, V, O_part, LSE,
                     stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                     stride_ob, stride_oh, stride_os,
                     kv_heads, kv_len, split_len, qk_scale,
                     GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                     WRITE_LSE: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    split = tl.program_id(0)
    off_b = (tl.program_id(1) // kv_heads).to(tl.int64)
    off_kvh = (tl.program_id(1) % kv_heads).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = off_kvh * GROUP + offs_g  # the query heads that read this KV head
    in_group = offs_g < GROUP
    # read GROUP query rows, once (padding rows are zeros and are never written)
    q = tl.load(Q + off_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=in_group[:, None],
                other=0.0)
    K += off_b * stride_kb + off_kvh * stride_kh
    V += off_b * stride_vb + off_kvh * stride_vh

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    lo = split * split_len  # split_len is a multiple of BLOCK_N and no split is empty: every block sees a key
    hi = tl.minimum(lo + split_len, kv_len)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_kv = offs_n < kv_len
        # read BLOCK_N keys (once for the whole group), s = q·kᵀ
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=in_kv[:, None], other=0.0,
                    eviction_policy="evict_first")
        qk = tl.where(in_kv[None, :], dot(q, tl.trans(k), None, DOT_IN_FP32) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        # read BLOCK_N values, acc = α·acc + p·v
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=in_kv[:, None], other=0.0,
                    eviction_policy="evict_first")
        acc = dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_IN_FP32)
        m_i = m_new

    # write GROUP partial rows (the output itself when there is one split) and their log-sum-exps
    o = acc / l_i[:, None]
    o_ptrs = O_part + off_b * stride_ob + heads[:, None] * stride_oh + split * stride_os + offs_d[None, :]
    tl.store(o_ptrs, o.to(O_part.dtype.element_ty), mask=in_group[:, None])
    if WRITE_LSE:
        n_splits = tl.num_programs(0)
        tl.store(LSE + (off_b * kv_heads * GROUP + heads) * n_splits + split, m_i + tl.log2(l_i), mask=in_group)


@triton.jit
def _combine_kernel(O_part, LSE, Out, stride_ob, stride_oh, heads, n_splits,
                    BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # batch·heads + head
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    in_s = offs_s < n_splits
    # read n_splits log-sum-exps and partial rows (fp32)
    lse = tl.load(LSE + row * n_splits + offs_s, mask=in_s, other=float("-inf"))
    w = tl.math.exp2(lse - tl.max(lse, 0))
    o = tl.load(O_part + (row * n_splits + offs_s)[:, None] * HEAD_DIM + offs_d[None, :], mask=in_s[:, None],
                other=0.0)
    out = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
    # write one output row
    tl.store(Out + (row // heads) * stride_ob + (row % heads) * stride_oh + offs_d, out.to(Out.dtype.element_ty))


def default_block_n() -> int:
    """Keys per tile: small under the interpreter (CPU tests take seconds), else 32: on an H100 at kv 8192,
    batch 64, 32 keys, 4 warps, 2 stages read the cache at 3.04 TB/s vs 2.77 for 64/4/3 (scripts/tune_decode.py)."""
    return 16 if INTERPRET else 32


def default_num_splits(batch: int, kv_heads: int, kv_len: int, device: torch.device) -> int:
    """S = ⌈PROGRAMS_PER_SM·SMs / (batch·kv_heads)⌉, with at least MIN_SPLIT_KEYS keys per split.

    H100 (132 SMs), kv 8192: llama3-8b batch 1 (8 KV heads) gets 32 splits of 256 keys, gpt-7b batch 1
    (32 KV heads) 9 splits, and any batch·kv_heads ≥ 264 one split. Off CUDA (the interpreter): 3.
    """
    if device.type != "cuda":
        return 3
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(PROGRAMS_PER_SM * sms, batch * kv_heads)
    return max(1, min(wanted, kv_len // MIN_SPLIT_KEYS, MAX_SPLITS))


def split_plan(kv_len: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """(splits, keys per split): whole tiles of block_n keys per split, and as many splits as that needs
    (at most num_splits), so that no split is empty."""
    split_len = triton.cdiv(triton.cdiv(kv_len, num_splits), block_n) * block_n
    return triton.cdiv(kv_len, split_len), split_len


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, num_splits: int | None,
                  block_n: int) -> None:
    check_qkv(q, k, v, HEAD_DIMS)
    if q.shape[2] != 1:
        raise ValueError(f"q_len must be 1 (one decode step), got {q.shape[2]}: use flash_attention for prefill")
    if k.shape[2] == 0:
        raise ValueError("kv_len must be at least 1: a decode query needs a KV cache to attend to")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise ValueError(f"num_splits must be a positive integer, got {num_splits!r}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")


def flash_decoding(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                   num_splits: int | None = None, *, block_n: int | None = None, num_warps: int = 4,
                   num_stages: int = 2) -> torch.Tensor:
    """Return softmax(scale·q·kᵀ)·v for one decode query per (batch, head): [batch, heads, 1, head_dim].

    q: [batch, heads, 1, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim] (the KV cache) with heads a
    multiple of kv_heads; fp16 or bf16; head_dim 64 or 128; last dimension contiguous. scale defaults to
    1/sqrt(head_dim). num_splits: chunks of kv_len (default_num_splits when None); fewer run when the
    chunks, rounded up to whole tiles of block_n keys, cover kv_len sooner.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    block_n = block_n or default_block_n()
    _check_inputs(q, k, v, scale, num_splits, block_n)
    batch, heads, _, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    num_splits, split_len = split_plan(kv_len, num_splits or default_num_splits(batch, kv_heads, kv_len, q.device),
                                       block_n)
    group = heads // kv_heads
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    if num_splits == 1:
        o, lse, stride_os = out, out, 0  # lse is not written
    else:
        o = torch.empty(batch, heads, num_splits, head_dim, device=q.device, dtype=torch.float32)
        lse = torch.empty(batch, heads, num_splits, device=q.device, dtype=torch.float32)
        stride_os = o.stride(2)
    _split_kv_kernel[(num_splits, batch * kv_heads)](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), stride_os,
        kv_heads, kv_len, split_len, scale * LOG2E,
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, HEAD_DIM=head_dim,
        WRITE_LSE=num_splits > 1, DOT_IN_FP32=dot_in_fp32(q.dtype),
        num_warps=num_warps, num_stages=num_stages)
    if num_splits > 1:
        _combine_kernel[(batch * heads,)](o, lse, out, out.stride(0), out.stride(1), heads, num_splits,
                                          BLOCK_S=triton.next_power_of_2(num_splits), HEAD_DIM=head_dim,
                                          num_warps=4)
    return out


def flash_decoding_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch softmax(scale·q·kᵀ)·v in float64, K and V repeated for each query head of their group."""
    group = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
