"""The op catalog: every op of the block in block order, each declared once in its family's module.

One list gives the block order, the collectives of a parallel block (ops/comm.py) included: the TP all-reduces
after the projections whose partial sums they add, then a pipeline stage's send/recv and DP's gradient all-reduce.
`ops_for(config)` is the ops of one config: a collective applies only when its axis has several ranks (config.tp,
.dp in train mode, .pp > 1), so `profile`, `profile --tp/--dp/--pp` and `roofline ops [--tp/--pp N]` all read this
one place.
"""

from __future__ import annotations

from roofline.config import BlockConfig
from roofline.errors import RooflineError
from roofline.ops import attention, comm, ffn, moe, norm, rope
from roofline.ops.base import Op, Variant
from roofline.results import FusionGroup

_BY_NAME = {op.name: op for op in (*norm.OPS, *attention.OPS, *rope.OPS, *ffn.OPS, *moe.OPS, *comm.OPS)}

# Block order: norm → QKV → QK-norm → RoPE → K/V expansion → attention core → out proj (→ its all-reduce) →
# dropout/residual (+ fused) → FFN (dense, or MoE router and experts) → FFN-down's all-reduce → (train, --dp) the
# gradients' all-reduce.
BLOCK_ORDER: tuple[Op, ...] = tuple(_BY_NAME[name] for name in (
    "layernorm", "rmsnorm", "qkv_proj", "qk_norm", "rope", "repeat_kv", "qk_t", "softmax", "attn_v", "attention",
    "out_proj", "allreduce_out_proj", "dropout", "residual_add", "residual_dropout_norm", "ffn_up", "gelu", "swiglu",
    "geglu", "ffn_down",
    "moe_router", "moe_experts", "allreduce_ffn_down", "p2p_activation", "allreduce_grads",
))
assert len(BLOCK_ORDER) == len(_BY_NAME), "every declared op must have a place in the block order"

# The ops one device runs, in block order; the collectives join them in ops_for when config.tp > 1.
CATALOG: tuple[Op, ...] = tuple(op for op in BLOCK_ORDER if op.unit != "comm")


def get_op(name: str) -> Op:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise RooflineError(f"unknown op '{name}' (known: {', '.join(_BY_NAME)})") from None


def ops_for(config: BlockConfig) -> list[Op]:
    """The ops of this config's block, in block order (GELU or SwiGLU, LayerNorm or RMSNorm…; the all-reduces
    of a tensor-parallel shard)."""
    return [op for op in BLOCK_ORDER if op.applies(config)]


def fusion_groups(config: BlockConfig) -> list[FusionGroup]:
    """The block's fusion groups, saved with its results: an op that `replaces` a chain (attention: qk_t → softmax
    → attn_v), or one with fused variants of its own (our Triton softmax vs PyTorch's)."""
    ops = ops_for(config)
    names = {op.name for op in ops}
    groups = []
    for op in ops:
        if op.replaces:
            groups.append(FusionGroup(op.name, tuple(n for n in op.replaces if n in names), op.name))
        elif any(v.fused for v in op.variants):
            groups.append(FusionGroup(op.name, (op.name,), op.name))
    return groups


def gemm_shapes(config: BlockConfig) -> tuple[tuple[int, int, int], ...]:
    """(M, N, K) of the block's plain matmuls (the projections), for a calibration whose roof must bound them."""
    return tuple(dict.fromkeys(op.gemm_shape(config) for op in ops_for(config) if op.gemm_shape))


def describe(config: BlockConfig) -> list[dict[str, object]]:
    """The block's ops as plain data for `roofline ops`: name, unit, FLOPs and bytes at this config, variants
    (name, fused), and the formulas exactly as declared (train mode: the backward's too); a fused op's chain as this
    block has it. per_block: how often one rank runs the op per microbatch: its times per block × the layers of a
    pipeline stage (1 for the stage's send/recv, which runs once per microbatch)."""
    out = []
    ops = ops_for(config)
    names = {op.name for op in ops}
    for op in ops:
        formulas = [op.doc, f"FLOPs = {op.flops.text}", f"bytes = {op.min_bytes.text}"]
        if config.mode == "train" and op.backward_flops and op.backward_bytes:
            formulas += [f"backward FLOPs = {op.backward_flops.text}", f"backward bytes = {op.backward_bytes.text}"]
        if op.replaces:  # the chain of this block (as fusion_groups): the ops of it that apply
            formulas.append(f"replaces: {' → '.join(n for n in op.replaces if n in names)}")
        layers = 1 if op.group == "pipeline" else config.stage_layers
        out.append({"name": op.name, "group": op.group, "per_block": op.per_block * layers, "unit": op.unit,
                    "flops": op.step_flops(config), "min_bytes": op.step_bytes(config),
                    "variants": [(v.name, v.fused) for v in op.variants], "formulas": "\n".join(formulas)})
    return out


def plan(config: BlockConfig, only: list[str] | None = None,
         variants: list[str] | None = None) -> list[tuple[Op, Variant]]:
    """(op, variant) pairs to measure, in block order; `only`/`variants` filter by name."""
    if only:
        for name in only:
            get_op(name)
    if variants:
        known = {v.name for op in BLOCK_ORDER for v in op.variants}
        for name in variants:
            if name not in known:
                raise RooflineError(f"unknown variant '{name}' (known: {', '.join(sorted(known))})")
    return [(op, v) for op in ops_for(config) if not only or op.name in only
            for v in op.variants if v.applies(config) and (not variants or v.name in variants)]


__all__ = ["BLOCK_ORDER", "CATALOG", "Op", "Variant", "describe", "fusion_groups", "gemm_shapes", "get_op", "ops_for",
           "plan"]
