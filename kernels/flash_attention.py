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

Two switches per configuration, each its own compiled kernel (scripts/tune_flash.py measures them):

* TMA: K and V tiles arrive through host-built tensor descriptors (Hopper's copy engine, Triton ≥ 3.4)
  over [batch·kv_heads, kv_len, head_dim], not per-thread pointer loads: fewer registers (182 → 145
  at 128×64, 8 warps, d=128), and rows past kv_len read as zeros.
* SCALE_Q: q is multiplied by scale·log2(e) once and rounded back to bf16/fp16, so Q·Kᵀ takes q from
  registers (wgmma's A operand) instead of shared memory, which halves Q·Kᵀ's shared-memory reads at
  BLOCK_N 64, for one rounding of q (relative error ~2⁻⁹ per element; older Triton tutorials did it).

Not here, because Triton 3.6 does not express them on sm_90 (checked in the SASS): FA3's overlap of
softmax with P·V inside a warpgroup (Triton waits for each wgmma right after issuing it; issuing the
next Q·Kᵀ before P·V made ptxas serialise every wgmma, warning C7515), and tl.range(warp_specialize=True)
(no change at 8 warps, a compiler assertion at 4). Overlap comes from several warpgroups per SM instead.
"""

import inspect
import math

import torch
import triton
import triton.language as tl

from .common import INTERPRET, dot, dot_in_fp32, require_device
from .softmax import softmax_reference

try:  # host-side TMA descriptors (Triton ≥ 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
LOG2E = math.log2(math.e)
SHARED_MEMORY_BYTES = 227 * 1024  # per thread block on an H100


def _set_descriptor_blocks(nargs: dict) -> None:
    """Pre-hook: a descriptor's tile is part of its type, so set it to this configuration's BLOCK_N."""
    for name in ("K_desc", "V_desc"):
        if nargs[name] is not None:
            nargs[name].block_shape = [1, nargs["BLOCK_N"], nargs["HEAD_DIM"]]


def make_config(block_m: int, block_n: int, num_warps: int, num_stages: int, tma: bool = False,
                scale_q: bool = False) -> triton.Config:
    """One kernel configuration: tile, warps, software-pipeline depth and the two path switches."""
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "TMA": tma, "SCALE_Q": scale_q},
                         num_warps=num_warps, num_stages=num_stages, pre_hook=_set_descriptor_blocks)


# At most 4 configurations per (head_dim, causal), so a cold autotune takes seconds. From
# scripts/tune_flash.py on an H100 SXM (reports/reference/h100/tune_flash.txt, b=1 h=32 N=8192 bf16):
# d=128: 128×128 w8 s3 515 TFLOP/s, 128×64 w8 s3 497 (causal: 128×64 w8 s3 479, 128×128 w8 s3 470);
# d=64: 64×64 w4 s3 446, 128×64 w4 s3 416. The TMA candidates were not reached by that run's time budget
# (they pass the GPU correctness test); the autotuner keeps them only if they win.
_D128 = [make_config(128, 64, 8, 3), make_config(128, 128, 8, 3),
         make_config(128, 64, 8, 3, tma=True), make_config(128, 32, 8, 3, tma=True)]
_D64 = [make_config(64, 64, 4, 3), make_config(128, 64, 4, 3),
        make_config(128, 64, 4, 3, tma=True), make_config(128, 128, 8, 3, tma=True)]
TUNED_CONFIGS: dict[tuple[int, bool], list[triton.Config]] = {
    (128, False): _D128, (128, True): _D128, (64, False): _D64, (64, True): _D64,
}
SMALL_HEAD_CONFIGS = [make_config(128, 64, 4, 3), make_config(128, 128, 8, 3), make_config(64, 64, 4, 3)]
INTERPRETER_CONFIG = make_config(16, 16, 4, 1)  # small tiles, so CPU tests take seconds


def _all_configs() -> list[triton.Config]:
    """Every case's candidates, once each: the autotuner's list, which _prune_configs narrows per case."""
    configs = [c for cs in (*TUNED_CONFIGS.values(), SMALL_HEAD_CONFIGS) for c in cs]
    return [INTERPRETER_CONFIG] if INTERPRET else list({id(c): c for c in configs}.values())


def fits(config: triton.Config, head_dim: int) -> bool:
    """Whether a configuration can run without spilling registers or overflowing shared memory.

    Registers: the accumulator and the scores, BLOCK_M·(HEAD_DIM + BLOCK_N) fp32 values, plus q
    (BLOCK_M·HEAD_DIM/2 registers) with SCALE_Q, at most 160 per thread of 255. That is the edge
    (ptxas, sm_90, Triton 3.6): at 160 most compile within 255 registers, a few spill or serialise the
    wgmma pipeline (scripts/tune_flash.py shows which); at 192 all do.
    Shared memory: Q plus num_stages buffers of K and V (2 bytes each) and 1 KiB of TMA barriers,
    within the 227 KiB of an H100.
    """
    kw = config.kwargs
    block_m, block_n, threads = kw["BLOCK_M"], kw["BLOCK_N"], 32 * config.num_warps
    registers = block_m * (head_dim + block_n + (head_dim // 2 if kw["SCALE_Q"] else 0)) // threads
    shared_bytes = 2 * head_dim * (block_m + 2 * block_n * config.num_stages) + (1024 if kw["TMA"] else 0)
    return registers <= 160 and shared_bytes <= SHARED_MEMORY_BYTES


def _case_configs(head_dim: int, causal: bool) -> list[triton.Config]:
    """The autotuner's candidates for one case."""
    if INTERPRET:
        return [INTERPRETER_CONFIG]
    return TUNED_CONFIGS.get((head_dim, causal), SMALL_HEAD_CONFIGS)


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """This case's configurations that fit; TMA ones only when the launcher built descriptors."""
    head_dim = kwargs["HEAD_DIM"]
    wanted = _case_configs(head_dim, kwargs["CAUSAL"])
    tma_available = named_args["K_desc"] is not None
    kept = [c for c in configs if any(c is w for w in wanted) and fits(c, head_dim)
            and (tma_available or not c.kwargs["TMA"])]
    return kept or [c for c in configs if not c.kwargs["TMA"] and fits(c, head_dim)]  # e.g. no TMA


@triton.jit
def _load_tile(X, X_desc, kv_row, start_n, stride_n, kv_len,
               MASKED: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Read keys (or values) start_n .. start_n + BLOCK_N - 1 of one head: [BLOCK_N, HEAD_DIM].
    TMA: X_desc is a descriptor over [batch·kv_heads, kv_len, head_dim]; rows past kv_len read as 0."""
    if TMA:
        tile = X_desc.load([kv_row, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ptrs = X + offs_n[:, None] * stride_n + tl.arange(0, HEAD_DIM)[None, :]
        tile = tl.load(ptrs, mask=offs_n[:, None] < kv_len, other=0.0) if MASKED else tl.load(ptrs)
    return tile


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, lo, hi,
                    offs_m, kv_len, causal_offset, qk_scale,
                    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                    TMA: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """Fold keys lo .. hi-1 into (acc, l_i, m_i). MASKED: check key bounds and the causal mask."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        # read BLOCK_N keys, s = q·kᵀ
        k = _load_tile(K, K_desc, kv_row, start_n, stride_kn, kv_len, MASKED, TMA, BLOCK_N, HEAD_DIM)
        qk = dot(q, tl.trans(k), None, DOT_IN_FP32)
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            visible = offs_n[None, :] < kv_len
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
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
        v = _load_tile(V, V_desc, kv_row, start_n, stride_vn, kv_len, MASKED, TMA, BLOCK_N, HEAD_DIM)
        acc = dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_IN_FP32)
        m_i = m_ij
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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr, SCALE_Q: tl.constexpr,
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
    offs_d = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # read BLOCK_M queries, once
    in_q = offs_m < q_len
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :], mask=in_q[:, None], other=0.0)
    if SCALE_Q:
        q = (q.to(tl.float32) * qk_scale).to(q.dtype)
        qk_scale = 1.0

    # keys [0, n_full) are seen by every query of the block; [n_full, hi) need a mask
    causal_offset = kv_len - q_len
    if CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M + causal_offset, kv_len)
        n_full = tl.minimum(start_m * BLOCK_M + causal_offset + 1, kv_len)
    else:
        hi = kv_len
        n_full = kv_len
    n_full = tl.maximum(n_full, 0) // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, 0, n_full,
                                    offs_m, kv_len, causal_offset, qk_scale,
                                    BLOCK_N, HEAD_DIM, CAUSAL, False, TMA, DOT_IN_FP32)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, K_desc, V_desc, kv_row, stride_kn, stride_vn, n_full, hi,
                                    offs_m, kv_len, causal_offset, qk_scale,
                                    BLOCK_N, HEAD_DIM, CAUSAL, True, TMA, DOT_IN_FP32)

    # write BLOCK_M outputs
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(Out + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(Out.dtype.element_ty), mask=in_q[:, None])


# cache_results (Triton ≥ 3.2) keeps each case's winner on disk, so only the first run on a device autotunes.
_CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
_attn_fwd_autotuned = triton.autotune(configs=_all_configs(), key=["q_len", "kv_len", "HEAD_DIM", "CAUSAL"],
                                      prune_configs_by={"early_config_prune": _prune_configs},
                                      **_CACHE)(_attn_fwd_kernel)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dims: tuple[int, ...] = HEAD_DIMS) -> None:
    """ValueError unless q [b, h, q, d], k and v [b, kv_h, kv, d] suit our attention kernels (also flash_decoding's)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, heads, seq, head_dim], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must all be float16 or all bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, _, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be [{batch}, kv_heads, kv_len, {head_dim}] and equal, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if head_dim not in head_dims:
        raise ValueError(f"head_dim must be one of {head_dims}, got {head_dim}")
    if k.shape[1] == 0 or heads % k.shape[1]:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({k.shape[1]})")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v need a contiguous last dimension (stride 1)")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    require_device(q, "q")


def tma_supported(device: torch.device) -> bool:
    """TMA needs Triton's host descriptors and a Hopper or newer GPU (the interpreter emulates them)."""
    if TensorDescriptor is None:
        return False
    return INTERPRET or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9)


def _descriptor(x: torch.Tensor) -> "TensorDescriptor | None":
    """A TMA descriptor over x [batch, kv_heads, kv_len, head_dim] seen as [batch·kv_heads, kv_len,
    head_dim], or None where the strides do not allow it: the two head dimensions must merge into one,
    and TMA wants positive, 16-byte aligned strides. Its tile is set per configuration by the pre-hook."""
    batch, kv_heads, kv_len, head_dim = x.shape
    if kv_heads == 1:
        row_stride = x.stride(0)
    elif batch == 1 or x.stride(0) == kv_heads * x.stride(1):
        row_stride = x.stride(1)
    else:
        return None
    strides = (row_stride, x.stride(2))
    if x.data_ptr() % 16 or any(s <= 0 or s * x.element_size() % 16 for s in strides):
        return None
    return TensorDescriptor(x, [batch * kv_heads, kv_len, head_dim], [*strides, 1], [1, 16, head_dim])


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
            config: triton.Config | None = None) -> torch.Tensor:
    """Run the kernel on checked inputs: autotuned when config is None, else exactly that configuration
    (scripts/tune_flash.py; a TMA one raises ValueError where descriptors cannot be built)."""
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    if kv_len == 0:
        return out.zero_()
    # descriptors cost each launch a few microseconds: autotuned, only where this case has TMA candidates;
    # explicit, always, so that a configuration compiles to the same kernel as under the autotuner
    want_tma = tma_supported(q.device) and (config is not None or any(
        c.kwargs["TMA"] for c in _case_configs(head_dim, causal)))
    k_desc, v_desc = (_descriptor(k), _descriptor(v)) if want_tma else (None, None)
    if k_desc is None or v_desc is None:
        k_desc = v_desc = None
        if config is not None and config.kwargs["TMA"]:
            raise ValueError("TMA needs a Hopper GPU, Triton >= 3.4, and k and v whose [batch, kv_heads] "
                             "dimensions merge, with 16-byte aligned strides")

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(q_len, meta["BLOCK_M"]) * batch * heads,)

    args = (q, k, v, out, k_desc, v_desc,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            heads, kv_heads, q_len, kv_len, scale * LOG2E)
    constants = dict(HEAD_DIM=head_dim, CAUSAL=causal, DOT_IN_FP32=dot_in_fp32(q.dtype))
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
    check_qkv(q, k, v)
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
