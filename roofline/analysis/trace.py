"""A trace's aten op calls, attributed to the block's ops, grouped, checked, and set beside `profile` (pure).

Attribution: each call of `roofline trace` (a row with a `trace` record) gets the catalog op it is part of, by
what it is and where it came from — its aten op, the module it ran in, the Python functions that called it:

1. fused attention kernels (SDPA's backends, FlashAttention) → attention;
2. the caller's functions: RoPE (apply_rotary_pos_emb, rotate_half) → rope, repeat_kv → repeat_kv, the mask
   builders (masking_utils) → mask, the KV cache (cache_utils) → kv_cache;
3. the module: a projection by its name (q_proj … down_proj, c_attn …), a norm by its class, QK-norm, the
   activation module, the rotary embedding, an MoE router or expert;
4. the attention's own body (eager attention): its first matmul Q·Kᵀ (and the scale), its second P·V, the
   softmax, the mask added in between;
5. the decoder layer's body: its adds are the residual adds; an MLP's body: its product is the gated activation;
6. what is left: casts, copies, transposes, cats → "data movement", anything else → "other".

A backward call inherits the attribution of the forward call whose gradient it computes. Nothing here imports
torch: the same functions run on committed results anywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from roofline import fmt
from roofline.analysis.placement import intensity
from roofline.config import BlockConfig
from roofline.results import Results, Row, Textbook

# Fused attention: SDPA's backends (forward and backward), the flash-attn package's custom ops.
ATTENTION_PREFIXES = ("_scaled_dot_product_", "_flash_attention_", "_efficient_attention_", "_flash_attn",
                      "flash_attn")
MATMULS = {"mm", "bmm", "addmm", "baddbmm", "matmul", "_grouped_mm", "_scaled_mm", "addmv", "mv", "addbmm",
           "linear", "convolution", "_convolution", "convolution_backward"}
# Ops that only move data: FLOP-free, placed by their bytes against the copy roof.
DATA_MOVEMENT = {"_to_copy", "copy", "clone", "cat", "stack", "contiguous", "index", "index_select", "gather",
                 "scatter", "embedding", "constant_pad_nd", "slice_scatter", "select_scatter", "narrow_copy",
                 "repeat", "repeat_interleave", "flip", "roll", "_unsafe_view", "split_with_sizes_copy",
                 "unbind_copy", "transpose_copy", "permute_copy", "expand_copy", "view_copy", "zeros", "ones",
                 "full", "empty", "empty_like", "zeros_like", "ones_like", "fill", "zero", "new_zeros", "new_empty",
                 "new_full", "arange", "scalar_tensor", "masked_fill", "where", "tril", "triu", "_local_scalar_dense",
                 "lift_fresh", "detach", "index_put", "one_hot", "nonzero", "masked_select", "_reshape_copy",
                 "tril_indices", "triu_indices", "full_like", "slice_backward", "select_backward",
                 "index_select_backward", "as_strided_scatter", "new_ones", "_unsafe_index", "unfold_backward"}
ATTENTION_MODULES = {"self_attn", "attn", "attention", "self_attention", "mixer"}
MLP_MODULES = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe"}
PROJECTIONS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "qkv_proj": "qkv_proj",
               "query_key_value": "qkv_proj", "c_attn": "qkv_proj", "Wqkv": "qkv_proj", "query": "qkv_proj",
               "key": "qkv_proj", "value": "qkv_proj", "o_proj": "out_proj", "out_proj": "out_proj",
               "gate_proj": "ffn_up", "up_proj": "ffn_up", "gate_up_proj": "ffn_up", "w1": "ffn_up", "w3": "ffn_up",
               "fc1": "ffn_up", "c_fc": "ffn_up", "dense_h_to_4h": "ffn_up", "fc_in": "ffn_up",
               "down_proj": "ffn_down", "w2": "ffn_down", "fc2": "ffn_down", "dense_4h_to_h": "ffn_down",
               "fc_out": "ffn_down", "qkv": "qkv_proj", "wqkv": "qkv_proj", "in_proj": "qkv_proj",
               "to_qkv": "qkv_proj", "q": "qkv_proj", "k": "qkv_proj", "v": "qkv_proj", "wq": "qkv_proj",
               "wk": "qkv_proj", "wv": "qkv_proj", "to_q": "qkv_proj", "to_k": "qkv_proj", "to_v": "qkv_proj",
               "proj": "out_proj", "o": "out_proj", "wo": "out_proj", "to_out": "out_proj", "up": "ffn_up",
               "w_up": "ffn_up", "down": "ffn_down", "w_down": "ffn_down"}
IN_ATTENTION_OR_MLP = {"dense": ("out_proj", "ffn_down"), "c_proj": ("out_proj", "ffn_down")}
QK_NORMS = {"q_norm", "k_norm", "q_layernorm", "k_layernorm", "query_layernorm", "key_layernorm"}
ACTIVATION_MODULES = {"act_fn", "act", "activation_fn", "activation", "activation_function"}
ROPE_FUNCTIONS = {"apply_rotary_pos_emb", "rotate_half", "apply_rotary_emb", "_apply_rotary_emb",
                  "apply_rotary_pos_emb_vision", "rotary_forward"}
GROUPS = {"qkv_proj": "attention", "rope": "attention", "repeat_kv": "attention", "qk_t": "attention",
          "softmax": "attention", "attn_v": "attention", "attention": "attention", "out_proj": "attention",
          "mask": "attention", "kv_cache": "attention", "qk_norm": "norm", "rmsnorm": "norm", "layernorm": "norm",
          "residual_add": "norm", "dropout": "norm", "ffn_up": "ffn", "ffn_down": "ffn", "swiglu": "ffn",
          "geglu": "ffn", "gelu": "ffn", "activation": "ffn", "moe_router": "moe", "moe_experts": "moe"}
DATA = "data movement"
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def base_name(aten_op: str) -> str:
    """'aten::add_' → 'add', 'aten::_softmax' → '_softmax': the op without namespace, overload or in-place mark."""
    name = aten_op.split("::")[-1].split(".")[0]
    return name[:-1] if name.endswith("_") and len(name) > 1 else name


def is_fused_attention(aten_op: str) -> bool:
    name = aten_op.split("::")[-1]
    return any(name.startswith(p) for p in ATTENTION_PREFIXES) or aten_op.startswith("flash_attn")


def unit_of(aten_op: str) -> str:
    """Which roof applies: a matmul or a fused attention kernel meets the tensor cores, the rest the vector units."""
    return "tensor" if base_name(aten_op) in MATMULS or is_fused_attention(aten_op) else "vector"


def is_data_movement(aten_op: str) -> bool:
    return base_name(aten_op) in DATA_MOVEMENT


def layer_of(module: str) -> int | None:
    """The decoder layer a module path belongs to ('layers.3.mlp' → 3), None outside the layers."""
    m = LAYER.search(module)
    return int(m.group(1)) if m else None


def _functions(row: Row) -> list[str]:
    return [f.rsplit(".", 1)[-1] for f in row.trace.functions] if row.trace else []


def _files(row: Row) -> list[str]:
    return [f.rsplit(".", 1)[0] for f in row.trace.functions if "." in f] if row.trace else []


def _by_function(row: Row) -> str | None:
    funcs, files = _functions(row), _files(row)
    if any(f in ROPE_FUNCTIONS or "rotary" in f for f in funcs):
        return "rope"
    if "repeat_kv" in funcs:
        return "repeat_kv"
    if "masking_utils" in files or any("causal_mask" in f or f.endswith("_mask") for f in funcs):
        return "mask"
    if "cache_utils" in files:
        return "kv_cache"
    return None


def _by_module(row: Row, config: BlockConfig) -> str | None:
    """The op a module's kernels belong to, by the module's name, its parent's and its class."""
    assert row.trace is not None
    parts = row.trace.module.split(".") if row.trace.module else []
    leaf, parent = (parts[-1] if parts else ""), (parts[-2] if len(parts) > 1 else "")
    cls = row.trace.module_class
    if "experts" in parts:
        return "moe_experts"
    if leaf in ("gate", "router") and parent in MLP_MODULES:
        return "moe_router"
    if leaf in PROJECTIONS:
        return PROJECTIONS[leaf]
    if leaf in IN_ATTENTION_OR_MLP:
        attention, mlp = IN_ATTENTION_OR_MLP[leaf]
        return attention if parent in ATTENTION_MODULES else mlp
    if leaf in QK_NORMS:
        return "qk_norm"
    if "Norm" in cls or leaf.startswith("ln_") or leaf.endswith("layernorm") or leaf.endswith("_norm"):
        if "RMS" in cls.upper() or (config.norm == "rmsnorm" and "LayerNorm" not in cls):
            return "rmsnorm"
        return "layernorm"
    if "rotary" in leaf.lower() or "Rotary" in cls:
        return "rope"
    if leaf in ACTIVATION_MODULES or cls.endswith("Activation") or cls in ("SiLU", "GELU", "NewGELUActivation"):
        return activation_op(config)
    return None


def activation_op(config: BlockConfig) -> str:
    return config.activation if config.activation in ("swiglu", "geglu", "gelu") else "activation"


@dataclass
class _Attention:
    """Where one attention module's body is: matmuls seen since its last projection (eager's Q·Kᵀ, then P·V)."""

    matmuls: int = 0


def attribute(rows: list[Row], config: BlockConfig) -> None:
    """Set op (the block op) and group of every trace row, in call order (see the module docstring)."""
    forward: dict[int, Row] = {}
    bodies: dict[str, _Attention] = {}
    for row in rows:
        t = row.trace
        if t is None:
            continue
        if t.phase == "backward" and t.forward_index is not None and t.forward_index in forward:
            row.op = forward[t.forward_index].op
        elif t.phase == "backward" and "AccumulateGrad" in t.node:
            row.op = DATA
        elif t.phase == "backward":  # its forward op did no work of its own (a view): where that op was
            row.op = _attribute_forward(row, config, {})
        else:
            row.op = _attribute_forward(row, config, bodies)
            forward[t.index] = row
        row.group = GROUPS.get(row.op, DATA if row.op == DATA else "other")
        row.fused = is_fused_attention(t.aten_op)


def _attribute_forward(row: Row, config: BlockConfig, bodies: dict[str, _Attention]) -> str:
    assert row.trace is not None
    t, name = row.trace, base_name(row.trace.aten_op)
    parts = t.module.split(".") if t.module else []
    leaf = parts[-1] if parts else ""
    if is_fused_attention(t.aten_op):
        return "attention"
    if name in ("native_dropout", "dropout", "native_dropout_backward", "bernoulli"):
        return "dropout"
    found = _by_function(row) or _by_module(row, config)
    if found in ("qkv_proj",) and len(parts) > 1:  # a new attention call starts with its projections
        bodies[".".join(parts[:-1])] = _Attention()
    if found:
        return found
    if leaf in ATTENTION_MODULES or "eager_attention_forward" in _functions(row):
        body = bodies.setdefault(t.module, _Attention())
        if name in MATMULS:
            body.matmuls += 1
            return "qk_t" if body.matmuls % 2 == 1 else "attn_v"
        if name in ("_softmax", "softmax", "_safe_softmax", "log_softmax"):
            return "softmax"
        if body.matmuls % 2 == 0 and name in ("mul", "div"):  # Q scaled before Q·Kᵀ
            return "qk_t"
        if body.matmuls % 2 == 1 and name in ("add", "masked_fill", "where"):  # between Q·Kᵀ and P·V
            return "mask"
        if body.matmuls % 2 == 1 and not is_data_movement(t.aten_op):
            return "qk_t" if name in ("mul", "div") else "softmax"
        return DATA if is_data_movement(t.aten_op) else "other"
    if leaf in MLP_MODULES and name == "mul":  # act(gate) · up
        return activation_op(config)
    if name == "add" and layer_of(t.module) is not None and leaf.isdigit():  # the decoder layer's own body
        return "residual_add"
    return DATA if is_data_movement(t.aten_op) else "other"


# --- grouping -----------------------------------------------------------------------------------------------------

@dataclass
class TraceGroup:
    """The calls of one block op (in one phase): their kernels, time, FLOPs and bytes summed, placed as one."""

    op: str
    group: str
    phase: str
    calls: int
    kernels: int
    time_s: float
    flops: float
    min_bytes: float
    unit: str
    share: float  # of the step's summed kernel time
    intensity: float = 0.0
    flops_per_s: float | None = None
    bytes_per_s: float | None = None
    bound: str = ""
    pct_of_roof: float | None = None
    dtypes: list[str] = field(default_factory=list)


def trace_rows(res: Results) -> list[Row]:
    """The rows of a trace, measured ok, in call order."""
    return [r for r in res.rows if r.trace is not None and r.status == "ok"]


def groups(res: Results) -> list[TraceGroup]:
    """One group per (phase, block op), in order of first call, placed by its calls' floors (`_place`)."""
    return _grouped(res, lambda r: r.op)


def module_groups(res: Results) -> list[TraceGroup]:
    """One group per (phase, module), the layers folded together ('layers.*.self_attn.q_proj'): the step by model
    region. A group's `op` is the module path, its `group` the block op of its largest call."""
    return _grouped(res, lambda r: LAYER_INDEX.sub(r"\1*", r.trace.module) if r.trace and r.trace.module else
                    "(model)")


LAYER_INDEX = re.compile(r"((?:^|\.)(?:layers|layer|h|blocks|block)\.)\d+")


def _grouped(res: Results, key: Callable[[Row], str]) -> list[TraceGroup]:
    rows = trace_rows(res)
    total = sum(r.time_median_s or 0.0 for r in rows) or math.nan
    by_key: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        by_key.setdefault((r.trace.phase if r.trace else "", key(r)), []).append(r)
    out = []
    for (phase, name), members in by_key.items():
        time_s = sum(r.time_median_s or 0.0 for r in members)
        flops, nbytes = sum(r.flops for r in members), sum(r.min_bytes for r in members)
        main = max(members, key=lambda r: r.time_median_s or 0.0)
        g = TraceGroup(name, main.group, phase, len(members), sum(max(len(r.trace.kernels), 1) for r in members
                                                                    if r.trace), time_s, flops, nbytes, main.unit,
                       time_s / total, dtypes=sorted({r.dtype for r in members}))
        _place(g, members)
        out.append(g)
    return out


def _place(g: TraceGroup, members: list[Row]) -> None:
    """Place a group by its calls' own floors: % of roof = the summed floors (each call's time at its own roof) over
    the summed time, bound = that of the call with the largest floor. Placing the sums under one call's roof put
    an eager Q·Kᵀ (a bf16 bmm on tensor cores plus a longer scaling mul on the vector units) at 233 % of the vector
    roof; summed floors keep a group under 100 % whenever its calls are."""
    placed = [r for r in members if r.floor_s and r.time_median_s]
    if not g.time_s or not placed or g.min_bytes <= 0:
        return
    g.intensity, g.flops_per_s, g.bytes_per_s = intensity(g.flops, g.min_bytes), g.flops / g.time_s, \
        g.min_bytes / g.time_s
    g.bound = max(placed, key=lambda r: r.floor_s or 0.0).bound
    g.pct_of_roof = 100 * sum(r.floor_s or 0.0 for r in placed) / g.time_s


# --- the cache: a traced step runs its calls back to back ----------------------------------------------------------

def cached_bytes(row: Row, before: list[Row], cache_bytes: int) -> float:
    """Bytes of row's reads that the calls just before it touched within the last `cache_bytes` of their traffic
    (least recently used goes first): in a step that runs its calls back to back, those come from the cache."""
    assert row.trace is not None
    room, seen, hit = float(cache_bytes), set(), 0.0
    for prev in reversed(before):
        assert prev.trace is not None
        for tensor, nbytes in (*prev.trace.writes.items(), *prev.trace.reads.items()):
            if room <= 0:
                return hit
            if tensor in seen:
                continue
            seen.add(tensor)
            if tensor in row.trace.reads:
                hit += min(row.trace.reads[tensor], nbytes, room)
            room -= nbytes
    return hit


def explain_cache_hits(rows: list[Row], cache_bytes: int, error: float) -> None:
    """A memory-bound call above its DRAM roof whose excess the cache accounts for is explained, not suspect.

    `profile` flushes the cache before each sample; a trace times the calls as the step runs them, so a call reads
    what the call before it just wrote from L2 (a residual add over an out_proj's output: 109 % of the H100's DRAM
    roof). The note says how many bytes the cache can have served and what is left for DRAM; a call that beats
    its roof even with every one of those bytes served from the cache stays suspect.
    """
    ordered = sorted((r for r in rows if r.trace is not None), key=lambda r: r.trace.index)  # type: ignore[union-attr]
    for i, row in enumerate(ordered):
        if not row.suspect or row.bound != "memory" or not row.time_median_s or not row.peak_bytes_per_s:
            continue
        hit = cached_bytes(row, ordered[:i], cache_bytes)
        dram_pct = 100 * (row.min_bytes - hit) / row.time_median_s / row.peak_bytes_per_s
        if hit <= 0 or dram_pct > 100 * (1 + error):
            continue
        row.suspect = ""
        why = (f"{row.pct_of_roof:.0f} % of its DRAM roof: up to {fmt.nbytes(hit)} of its reads were touched just "
               f"before (within the {fmt.nbytes(cache_bytes)} cache), so DRAM moved at least "
               f"{fmt.nbytes(row.min_bytes - hit)}, at {dram_pct:.0f} % of the roof or more")
        row.note = f"{row.note}; {why}" if row.note else why


# --- checks -------------------------------------------------------------------------------------------------------

@dataclass
class TraceChecks:
    """The run-level checks: the summed kernel time against the step timed whole, our FLOPs against torch's."""

    kernel_time_s: float | None
    step_time_s: float | None
    time_gap: float | None  # (step − kernels) / step: idle or host time between kernels
    agree: bool | None  # within TIME_TOLERANCE
    flops: float
    flop_counter_flops: float | None
    flop_counter_error: str
    causal_saving: float  # FLOPs torch's formula counts that causal attention does not do (the masked half)
    formula_gaps: float  # FLOPs torch's formulas miss or reject (GQA shapes, attention ops without a formula)
    pointwise: float  # element-wise FLOPs, which FlopCounterMode does not count
    no_formula: list[str]  # aten ops with no FLOP formula at all: placed by bytes
    outside_launches: int
    outside_time_s: float


TIME_TOLERANCE = 0.05


def checks(res: Results) -> TraceChecks:
    t = res.run.trace
    rows = trace_rows(res)
    kernel_s = t.kernel_time_s if t else None
    step_s = t.step_time_s if t else None
    gap = (step_s - kernel_s) / step_s if kernel_s is not None and step_s else None
    causal = gaps = pointwise = 0.0
    for r in rows:
        rule = r.trace.flop_rule if r.trace else ""
        torch_count = r.trace.torch_flops if r.trace else None
        if rule == "attention" and torch_count is not None:
            causal += max(torch_count - r.flops, 0.0)
        elif rule == "attention":
            gaps += r.flops
        elif rule == "pointwise":
            pointwise += r.flops
    missing = sorted({r.trace.aten_op for r in rows if r.trace and r.trace.flop_rule == "none"})
    return TraceChecks(kernel_s, step_s, gap, None if gap is None else abs(gap) <= TIME_TOLERANCE,
                       sum(r.flops for r in rows), t.flop_counter_flops if t else None,
                       t.flop_counter_error if t else "", causal, gaps, pointwise, missing,
                       t.outside_launches if t else 0, t.outside_time_s if t else 0.0)


# --- beside `profile` ---------------------------------------------------------------------------------------------

def shape_mismatch(trace: BlockConfig, profile: BlockConfig) -> str:
    """How the profile's block differs from the traced one ('' when the shapes that set the time agree)."""
    fields = ("d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "activation", "norm", "n_experts", "top_k",
              "batch", "seq_len", "kv_len", "dtype", "mode", "causal")
    diffs = [f"{f} {getattr(profile, f)} vs {getattr(trace, f)}" for f in fields
             if getattr(profile, f) != getattr(trace, f)]
    return ", ".join(diffs)


def textbook(trace: Results, profile: Results, source: str = "") -> Textbook:
    """The catalog's block of the same shapes, unfused and with its best fused variants (analysis/block.py)."""
    from roofline.analysis.block import block_after, block_before

    before, after = block_before(profile), block_after(profile)
    fused = [o.label for o in after if o.replaced_s is not None]
    return Textbook(sum(o.time_s for o in before), sum(o.time_s for o in after), source, fused,
                    shape_mismatch(trace.run.config, profile.run.config))


def per_layer_s(res: Results) -> float | None:
    """The traced step's time per decoder layer (the whole step for a user's module)."""
    t = res.run.trace
    if t is None or t.step_time_s is None:
        return None
    return t.step_time_s / max(t.layers, 1)
