"""The op catalog: every op of the block in block order, each declared once in its family's module."""

from __future__ import annotations

from roofline.config import BlockConfig
from roofline.errors import RooflineError
from roofline.ops import attention, ffn, moe, norm
from roofline.ops.base import Op, Variant

_BY_NAME = {op.name: op for op in (*norm.OPS, *attention.OPS, *ffn.OPS, *moe.OPS)}

# Block order: norm → QKV → attention core → out proj → dropout/residual (+ fused) → FFN (dense, or MoE router
# and experts).
CATALOG: tuple[Op, ...] = tuple(_BY_NAME[name] for name in (
    "layernorm", "rmsnorm", "qkv_proj", "qk_t", "softmax", "attn_v", "attention", "out_proj",
    "dropout", "residual_add", "residual_dropout_norm", "ffn_up", "gelu", "swiglu", "ffn_down",
    "moe_router", "moe_experts",
))
assert len(CATALOG) == len(_BY_NAME), "every declared op must have a place in the block order"


def get_op(name: str) -> Op:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise RooflineError(f"unknown op '{name}' (known: {', '.join(_BY_NAME)})") from None


def ops_for(config: BlockConfig) -> list[Op]:
    """The ops of this model's block, in block order (GELU or SwiGLU, LayerNorm or RMSNorm…)."""
    return [op for op in CATALOG if op.applies(config)]


def plan(config: BlockConfig, only: list[str] | None = None,
         variants: list[str] | None = None) -> list[tuple[Op, Variant]]:
    """(op, variant) pairs to measure, in block order; `only`/`variants` filter by name."""
    if only:
        for name in only:
            get_op(name)
    if variants:
        known = {v.name for op in CATALOG for v in op.variants}
        for name in variants:
            if name not in known:
                raise RooflineError(f"unknown variant '{name}' (known: {', '.join(sorted(known))})")
    return [(op, v) for op in ops_for(config) if not only or op.name in only
            for v in op.variants if not variants or v.name in variants]


__all__ = ["CATALOG", "Op", "Variant", "get_op", "ops_for", "plan"]
