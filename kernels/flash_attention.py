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

Three switches per configuration (constexpr, so each is its own compiled kernel; measure them with
scripts/tune_flash.py):

* TMA: K and V tiles arrive through host-built tensor descriptors (Hopper's TMA engine, Triton ≥ 3.4)
  instead of per-thread pointer loads: no address registers, and rows past kv_len read as zeros.
* PIPELINE: the FA3 ordering. The next block's Q·Kᵀ is issued before this block's P·V, so the tensor
  cores run P·V while the warps compute the next softmax; the rescale α·acc waits for P·V only.
* WARP_SPECIALIZE: ask Triton to split the main loop into producer and consumer warps.
"""

import inspect
import math
import os

import torch
import triton
import triton.language as tl

from .softmax import softmax_reference

try:  # host-side TMA descriptors (Triton ≥ 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton runs kernels on the CPU
HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
LOG2E = math.log2(math.e)
SHARED_MEMORY_BYTES = 227 * 1024  # per thread block on an H100
HAS_WARP_SPECIALIZE = "warp_specialize" in inspect.signature(tl.range.__init__).parameters


def make_config(block_m: int, block_n: int, num_warps: int, num_stages: int, tma: bool = False,
                pipeline: bool = False, warp_specialize: bool = False) -> triton.Config:
    """One kernel configuration: tile, warps, software-pipeline depth and the three path switches."""
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "TMA": tma, "PIPELINE": pipeline,
                          "WARP_SPECIALIZE": warp_specialize},
                         num_warps=num_warps, num_stages=num_stages, pre_hook=_set_descriptor_blocks)


def _configs() -> list[triton.Config]:
    """A few Hopper-friendly configurations; under the interpreter one small tile, so tests take seconds."""
    if INTERPRET:
        return [make_config(16, 16, 4, 1)]
    return [make_config(128, block_n, 8, stages, tma=tma)
            for tma in (False, True) for block_n, stages in ((64, 3), (128, 2))]


def fits(config: triton.Config, head_dim: int, tma_available: bool = True) -> bool:
    """Whether a configuration can run well: no spilled registers and enough shared memory.

    Registers: the accumulator and the scores, BLOCK_M·(HEAD_DIM + BLOCK_N) fp32 values, plus with
    PIPELINE the next block's scores, must stay within 128 values per thread (of 255 registers).
    Shared memory: Q plus num_stages buffers of K and V (bf16) within the 227 KiB of an H100.
    """
    kw = config.kwargs
    block_m, block_n = kw["BLOCK_M"], kw["BLOCK_N"]
    if (kw["TMA"] and not tma_available) or (kw["WARP_SPECIALIZE"] and not HAS_WARP_SPECIALIZE):
        return False
    fp32_values = block_m * (head_dim + block_n * (2 if kw["PIPELINE"] else 1))
    shared_bytes = 2 * head_dim * (block_m + 2 * block_n * config.num_stages)
    return fp32_values // (32 * config.num_warps) <= 128 and shared_bytes <= SHARED_MEMORY_BYTES


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotune only configurations that fit; TMA ones only when the launcher built descriptors."""
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    tma_available = named_args["K_desc"] is not None
    kept = [c for c in configs if fits(c, head_dim, tma_available)]
    return kept or [c for c in configs if not c.kwargs["TMA"]][:1]


def _set_descriptor_blocks(nargs: dict) -> None:
    """Pre-hook: a descriptor's tile is part of its type, so set it to this configuration's BLOCK_N."""
    for name in ("K_desc", "V_desc"):
        if nargs[name] is not None:
            nargs[name].block_shape = [1, nargs["BLOCK_N"], nargs["HEAD_DIM"]]


@triton.jit
def _dot(a, b, acc, IN_FP32: tl.constexpr):
    """tl.dot; IN_FP32 upcasts the operands, for Triton's CPU interpreter, which multiplies the raw
    bits of bf16 values. On the GPU IN_FP32 is False: bf16/fp16 tensor cores, fp32 accumulation."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), acc) if IN_FP32 else tl.dot(a, b, acc)


@triton.jit
def _load_tile(X, X_desc, kv_row, start_n, offs_n, offs_d, stride_n, kv_len,
               MASKED: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Read keys (or values) start_n .. start_n + BLOCK_N - 1 of one head, [BLOCK_N, HEAD_DIM].
    TMA: X_desc is a descriptor over [batch·kv_heads, kv_len, head_dim], rows past kv_len come back 0."""
    if TMA:
        tile = X_desc.load([kv_row, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        ptrs = X + (start_n + offs_n)[:, None] * stride_n + offs_d[None, :]
        if MASKED:
            tile = tl.load(ptrs, mask=(start_n + offs_n)[:, None] < kv_len, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _softmax_step(qk, m_i, l_i, start_n, offs_m, offs_n, kv_len, causal_offset, qk_scale,
                  CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    """Online softmax of one block of scores: returns p = exp2(s - m_new), α, m_new and the new l.
    MASKED: keys past kv_len, and with CAUSAL keys after the diagonal, get p = 0."""
    if MASKED:
        visible = (start_n + offs_n)[None, :] < kv_len
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
    return p, alpha, m_ij, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _attn_fwd_step(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, start_n, stride_kn, stride_vn,
                   offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                   BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                   TMA: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """Fold keys start_n .. start_n + BLOCK_N - 1 into (acc, l_i, m_i)."""
    # read BLOCK_N keys, s = q·kᵀ
    k = _load_tile(K, K_desc, kv_row, start_n, offs_n, offs_d, stride_kn, kv_len, MASKED, TMA, BLOCK_N, HEAD_DIM)
    qk = _dot(q, tl.trans(k), None, DOT_IN_FP32)
    p, alpha, m_i, l_i = _softmax_step(qk, m_i, l_i, start_n, offs_m, offs_n, kv_len, causal_offset, qk_scale,
                                       CAUSAL, MASKED)
    # read BLOCK_N values, acc = α·acc + p·v
    v = _load_tile(V, V_desc, kv_row, start_n, offs_n, offs_d, stride_vn, kv_len, MASKED, TMA, BLOCK_N, HEAD_DIM)
    acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_IN_FP32)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, lo, hi,
                    offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                    TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """Fold keys lo .. hi-1 into (acc, l_i, m_i), one block per step. MASKED: check key bounds and the
    causal mask. Two loops, so Triton versions without warp specialization never see its keyword."""
    if WARP_SPECIALIZE:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=True):
            acc, l_i, m_i = _attn_fwd_step(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, tl.multiple_of(start_n, BLOCK_N),
                                           stride_kn, stride_vn, offs_m, offs_n, offs_d, kv_len, causal_offset,
                                           qk_scale, BLOCK_N, HEAD_DIM, CAUSAL, MASKED, TMA, DOT_IN_FP32)
    else:
        for start_n in tl.range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _attn_fwd_step(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, tl.multiple_of(start_n, BLOCK_N),
                                           stride_kn, stride_vn, offs_m, offs_n, offs_d, kv_len, causal_offset,
                                           qk_scale, BLOCK_N, HEAD_DIM, CAUSAL, MASKED, TMA, DOT_IN_FP32)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_pipelined(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, lo, hi,
                        offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                        BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TMA: tl.constexpr,
                        DOT_IN_FP32: tl.constexpr):
    """Unmasked keys lo .. hi-1 (hi - lo a multiple of BLOCK_N) in the FA3 order: step j issues
    s_{j+1} = q·k_{j+1}ᵀ and then acc += p_j·v_j, so p_{j+1} is computed while P·V is still running."""
    if lo < hi:
        k = _load_tile(K, K_desc, kv_row, lo, offs_n, offs_d, stride_kn, kv_len, False, TMA, BLOCK_N, HEAD_DIM)
        qk = _dot(q, tl.trans(k), None, DOT_IN_FP32)
        for start_n in tl.range(lo, hi - BLOCK_N, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            p, alpha, m_i, l_i = _softmax_step(qk, m_i, l_i, start_n, offs_m, offs_n, kv_len, causal_offset,
                                               qk_scale, False, False)
            acc = acc * alpha[:, None]
            k = _load_tile(K, K_desc, kv_row, start_n + BLOCK_N, offs_n, offs_d, stride_kn, kv_len, False, TMA, BLOCK_N,
                           HEAD_DIM)
            qk = _dot(q, tl.trans(k), None, DOT_IN_FP32)
            v = _load_tile(V, V_desc, kv_row, start_n, offs_n, offs_d, stride_vn, kv_len, False, TMA, BLOCK_N, HEAD_DIM)
            acc = _dot(p.to(v.dtype), v, acc, DOT_IN_FP32)
        p, alpha, m_i, l_i = _softmax_step(qk, m_i, l_i, hi - BLOCK_N, offs_m, offs_n, kv_len, causal_offset,
                                           qk_scale, False, False)
        v = _load_tile(V, V_desc, kv_row, hi - BLOCK_N, offs_n, offs_d, stride_vn, kv_len, False, TMA, BLOCK_N, HEAD_DIM)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_IN_FP32)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, K_desc, V_desc,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads, kv_heads, q_len, kv_len, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    TMA: tl.constexpr, PIPELINE: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
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
    off_kvh = off_h // (heads // kv_heads)
    kv_row = (off_b * kv_heads + off_kvh).to(tl.int32)  # the descriptors' first index
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
    if PIPELINE:
        acc, l_i, m_i = _attn_fwd_pipelined(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, 0, n_full,
                                            offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                                            BLOCK_N, HEAD_DIM, TMA, DOT_IN_FP32)
    else:
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, 0, n_full,
                                        offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                                        BLOCK_N, HEAD_DIM, CAUSAL, False, TMA, WARP_SPECIALIZE, DOT_IN_FP32)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, n_full, hi,
                                    offs_m, offs_n, offs_d, kv_len, causal_offset, qk_scale,
                                    BLOCK_N, HEAD_DIM, CAUSAL, True, TMA, False, DOT_IN_FP32)

    # write BLOCK_M outputs
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(Out + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(Out.dtype.element_ty), mask=in_q[:, None])


_attn_fwd_autotuned = triton.autotune(configs=_configs(), key=["q_len", "kv_len", "HEAD_DIM", "CAUSAL"],
                                      prune_configs_by={"early_config_prune": _prune_configs})(_attn_fwd_kernel)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, heads, seq, head_dim], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must all be float16 or all bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, _, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be [{batch}, kv_heads, kv_len, {head_dim}] and equal, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS}, got {head_dim}")
    if k.shape[1] == 0 or heads % k.shape[1]:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({k.shape[1]})")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v need a contiguous last dimension (stride 1)")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not q.is_cuda and not INTERPRET:
        raise ValueError(f"q is on {q.device}: the kernel needs a CUDA device (or TRITON_INTERPRET=1)")


def tma_supported(device: torch.device) -> bool:
    """TMA needs Triton's host descriptors and a Hopper or newer GPU (the interpreter emulates them)."""
    if TensorDescriptor is None:
        return False
    return INTERPRET or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9)


def _descriptor(x: torch.Tensor, block_n: int) -> "TensorDescriptor | None":
    """A TMA descriptor over x [batch, kv_heads, kv_len, head_dim] seen as [batch·kv_heads, kv_len,
    head_dim], or None when the strides do not allow it (TMA wants them 16-byte aligned)."""
    batch, kv_heads, kv_len, head_dim = x.shape
    if x.stride(0) != kv_heads * x.stride(1) and batch > 1:
        return None
    if x.data_ptr() % 16 or any(s * x.element_size() % 16 for s in (x.stride(1), x.stride(2))):
        return None
    return TensorDescriptor(x, [batch * kv_heads, kv_len, head_dim], [x.stride(1), x.stride(2), 1],
                            [1, block_n, head_dim])


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
            config: triton.Config | None = None) -> torch.Tensor:
    """Run the kernel on checked inputs: autotuned when config is None, else exactly that configuration
    (a TMA one raises ValueError where descriptors cannot be built)."""
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    if kv_len == 0:
        return out.zero_()
    k_desc = v_desc = None
    if tma_supported(q.device) if config is None else config.kwargs["TMA"]:
        k_desc, v_desc = _descriptor(k, 16), _descriptor(v, 16)
        if k_desc is None or v_desc is None:
            if config is not None:
                raise ValueError("TMA needs k and v with mergeable [batch, kv_heads] and 16-byte aligned strides")
            k_desc = v_desc = None

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(q_len, meta["BLOCK_M"]) * batch * heads,)

    args = (q, k, v, out, k_desc, v_desc,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            heads, kv_heads, q_len, kv_len, scale * LOG2E)
    constants = dict(HEAD_DIM=head_dim, CAUSAL=causal, DOT_IN_FP32=INTERPRET and q.dtype == torch.bfloat16)
    if config is None:
        _attn_fwd_autotuned[grid](*args, **constants)
    else:
        _set_descriptor_blocks({"K_desc": k_desc, "V_desc": v_desc, **constants, **config.kwargs})
        _attn_fwd_kernel[grid](*args, **constants, **config.kwargs, num_warps=config.num_warps,
                               num_stages=config.num_stages)
    return out


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Return softmax(scale·q·kᵀ (+ causal mask))·v, shape and dtype of q.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim] with heads a
    multiple of kv_heads; fp16 or bf16; head_dim in HEAD_DIMS; last dimension contiguous.
    scale defaults to 1/sqrt(head_dim).
    """
    _check_inputs(q, k, v)
    return _launch(q, k, v, causal, scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))


def flash_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                              scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch attention in float32 (float64 for float64 input), materialising the scores."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    group_size = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group_size, dim=1), v.repeat_interleave(group_size, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return softmax_reference(q @ k.transpose(-1, -2), scale, causal) @ v
