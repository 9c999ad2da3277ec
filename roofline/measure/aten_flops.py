"""FLOPs of one aten op call: torch's formulas (torch.utils.flop_counter), fixed where they are wrong or silent.

- Fused attention (SDPA's flash, memory-efficient, cuDNN and CPU kernels, forward and backward; the flash-attn
  package): the catalog's attention formulas — 4·b·h·d·pairs forward and 8·b·h·d·pairs backward, h the query
  heads (grouped-query K/V heads are shared, not repeated: older torch's formula rejects such shapes), pairs the
  (query, key) pairs attended: the visible ones when causal (torch counts the whole square), and the backward's
  recomputation of Q·Kᵀ is not useful work (torch counts five matmuls). torch's own count is kept beside it.
- Element-wise ops and reductions, which torch does not count: the catalog's counts per element (softmax 5,
  GELU 5, SiLU 5, an add 1, LayerNorm 8, RMSNorm 4…), per output element (per input element for a reduction).
- Ops that only move data (casts, copies, cats, index): 0.
- Anything else torch has no formula for (a custom op, say): None — the row is placed by its bytes, and says so.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from roofline.analysis.trace import base_name, is_data_movement, is_fused_attention

PER_OUTPUT = {  # FLOPs per output element
    **dict.fromkeys(("add", "sub", "mul", "div", "rsub", "neg", "abs", "reciprocal", "sqrt", "rsqrt", "exp", "exp2",
                     "log", "log1p", "log2", "sin", "cos", "tanh", "sigmoid", "erf", "relu", "threshold", "pow",
                     "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
                     "sign", "floor", "ceil", "round", "square", "hardtanh", "leaky_relu", "elu", "logical_and",
                     "logical_or", "logical_not", "threshold_backward", "native_dropout", "native_dropout_backward",
                     "bernoulli", "hardsigmoid", "hardswish"), 1),
    "addcmul": 2, "addcdiv": 2, "lerp": 2, "tanh_backward": 2, "sigmoid_backward": 2,
    "gelu": 5, "silu": 5, "mish": 5, "_softmax": 5, "softmax": 5, "_safe_softmax": 5, "_log_softmax": 5,
    "_softmax_backward_data": 4, "_log_softmax_backward_data": 4, "gelu_backward": 11, "silu_backward": 8,
}
GELU_TANH, GELU_TANH_BACKWARD = 9, 17  # ops/ffn.py GEGLU's counts, without the gate's product
PER_INPUT = {  # FLOPs per element of the (first, or source) input: reductions and norms
    "sum": 1, "mean": 1, "amax": 1, "amin": 1, "max": 1, "min": 1, "prod": 1, "argmax": 1, "argmin": 1,
    "cumsum": 1, "topk": 1, "all": 1, "any": 1, "logsumexp": 3, "var": 3, "std": 3, "var_mean": 3, "std_mean": 3,
    "norm": 2, "linalg_vector_norm": 2, "native_layer_norm": 8, "native_layer_norm_backward": 13,
    "_fused_rms_norm": 4, "_fused_rms_norm_backward": 9, "native_batch_norm": 8, "index_add": 1, "scatter_add": 1,
    "scatter_reduce": 1, "embedding_dense_backward": 1, "index_reduce": 1,
}


def bind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, object]:
    """The call's arguments by schema name (query, key, is_causal…)."""
    try:
        names = [a.name for a in func._schema.arguments]
    except (AttributeError, RuntimeError):
        return dict(kwargs)
    return {**dict(zip(names, args, strict=False)), **kwargs}


def visible_pairs(q: int, kv: int, causal: bool, bottom_right: bool = False) -> int:
    """(query, key) pairs one head computes: q·kv, or under a causal mask the visible ones. torch's SDPA aligns
    the mask top-left (query i sees keys ≤ i), flash-attn bottom-right (query i sees keys ≤ i + kv − q)."""
    if not causal or q == 1:
        return q * kv
    if bottom_right:
        shift = kv - q
        return sum(max(0, min(kv, i + shift + 1)) for i in range(q)) if q < 65536 else q * kv // 2
    if q <= kv:
        return q * (q + 1) // 2
    return kv * (kv + 1) // 2 + (q - kv) * kv


def attention_flops(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> int | None:
    """The catalog's attention FLOPs of a fused attention call (see the module docstring), None if unreadable."""
    named = bind(func, args, kwargs)
    name = func.name()
    q, k = named.get("query", named.get("q")), named.get("key", named.get("k"))
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() != 4:
        return None
    heads_last = name.startswith(("flash_attn", "aten::_flash_attention", "aten::_efficient_attention"))
    if heads_last:  # [b, s, h, d]
        b, s_q, h, d = q.shape
        s_k = k.shape[1]
    else:  # [b, h, s, d]
        b, h, s_q, d = q.shape
        s_k = k.shape[2]
    causal = bool(named.get("is_causal", named.get("causal", False)))
    if "custom_mask_type" in named:  # _efficient_attention_*: 1 top-left causal, 2 bottom-right
        causal = int(named["custom_mask_type"] or 0) > 0  # type: ignore[call-overload]
    pairs = visible_pairs(int(s_q), int(s_k), causal, bottom_right=name.startswith("flash_attn"))
    matmuls = 8 if "backward" in name else 4
    return matmuls * int(b) * int(h) * int(d) * pairs


def torch_flops(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> tuple[int | None, str]:
    """torch's FLOP formula for this call: (count, "") — (None, why) when it has none or it refuses the shapes."""
    formula = flop_registry.get(func._overloadpacket)
    if formula is None:
        return None, ""
    try:
        return int(formula(*args, **kwargs, out_val=out)), ""
    except Exception as exc:  # older torch asserts equal heads for SDPA: grouped-query shapes
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


def _numel(t: object) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def pointwise_flops(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> int | None:
    name = base_name(func.name())
    named = bind(func, args, kwargs)
    if name in ("gelu", "gelu_backward") and named.get("approximate") == "tanh":
        per = GELU_TANH if name == "gelu" else GELU_TANH_BACKWARD
        return per * max((_numel(t) for t in tree_leaves(out)), default=0)
    if name in PER_OUTPUT:
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return PER_OUTPUT[name] * (_numel(outs[0]) if outs else 0)
    if name in PER_INPUT:
        source = named.get("source", named.get("src"))
        first = source if isinstance(source, torch.Tensor) else next(
            (t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)), None)
        return PER_INPUT[name] * _numel(first)
    return None


def count(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> tuple[float | None, float | None,
                                                                                          str, str]:
    """(our FLOPs, torch's, rule, note): rule is attention | torch | pointwise | data movement | none."""
    reference, why = torch_flops(func, args, kwargs, out)
    name = func.name()
    if is_fused_attention(name):
        ours = attention_flops(func, args, kwargs)
        if ours is not None:
            return float(ours), _float(reference), "attention", why
    if reference is not None:
        return float(reference), float(reference), "torch", ""
    if is_data_movement(name):
        return 0.0, None, "data movement", ""
    found = pointwise_flops(func, args, kwargs, out)
    if found is not None:
        return float(found), None, "pointwise", ""
    return None, None, "none", why


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)
