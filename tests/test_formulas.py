"""The op catalog's FLOPs and min-bytes formulas, against torch's FLOP counter and against hand arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from roofline.config import make_config
from roofline.ops import BLOCK_ORDER, CATALOG, get_op, ops_for
from roofline.ops.attention import is_causal

TENSOR_OPS = [op.name for op in CATALOG if op.unit == "tensor"]
# (model, overrides): MHA + GELU bidirectional (every pair counted), GQA 6/2 + SwiGLU + RoPE causal, and GQA decode
# against a 41-token cache; a Qwen3-like block (QK-norm, K/V copied per query head) and a Gemma-like one (GeGLU).
SHAPES = {
    "gpt": ("gpt-7b", {"causal": False}),
    "llama": ("llama3-8b", {}),
    "llama-decode": ("llama3-8b", {"mode": "decode", "kv_cache_len": 41, "batch": 3}),
    "mixtral": ("mixtral-8x7b", {}),
    "qwen": ("llama3-8b", {"qk_norm": True, "kv_repeat": True}),
    "gemma": ("llama3-8b", {"activation": "geglu"}),
}


def inputs_for(op, config):
    return op.make_inputs(config, torch.device("cpu"), torch.Generator().manual_seed(0))


def counted_flops(op, config, variant: str | None = None) -> int:
    closure = (op.variant(variant) if variant else op.variants[0]).build(config, inputs_for(op, config))
    with FlopCounterMode(display=False) as counter:
        closure()
    return counter.get_total_flops()


def test_the_tensor_ops_are_the_matmuls_of_the_block() -> None:
    assert TENSOR_OPS == ["qkv_proj", "qk_t", "attn_v", "attention", "out_proj", "ffn_up", "ffn_down",
                          "moe_router", "moe_experts"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_flops_match_torch_flop_counter(small_config, name: str, shape: str) -> None:
    model, overrides = SHAPES[shape]
    config = small_config(model, **overrides)
    op = get_op(name)
    if name == "attention":  # the fused op counts only unmasked pairs; the counter sees the full matmuls
        config = config.replace(causal=False)
    assert op.flops(config) == counted_flops(op, config)


def test_causal_attention_counts_the_unmasked_half(small_config) -> None:
    c = small_config("llama3-8b")
    assert is_causal(c)
    n, b, h, hd = c.seq_len, c.batch, c.n_heads, c.head_dim
    op = get_op("attention")
    assert op.flops(c) == 4 * b * h * hd * n * (n + 1) // 2
    # The naive variant still multiplies the whole N×N matrix: the counter sees the unmasked FLOPs.
    assert counted_flops(op, c, "naive") == 4 * b * h * hd * n * n


def test_decode_attention_sees_the_whole_cache(small_config) -> None:
    c = small_config("llama3-8b", mode="decode", kv_cache_len=41, batch=3)
    assert not is_causal(c)
    assert get_op("attention").flops(c) == 4 * 3 * 6 * 16 * 1 * 41


# Hand arithmetic at the small shape: T = 2·37 = 74 tokens, d = 96, 6 heads of 16, FFN 160, bf16 (2 bytes).
# gpt: 6 KV heads, QKV width (6 + 12)·16 = 288; llama: 2 KV heads, QKV width (6 + 4)·16 = 160.
T, D, F, B, H, N, HD = 74, 96, 160, 2, 6, 37, 16
HAND = {
    ("gpt", "layernorm"): (8 * T * D, (2 * T * D + 2 * D) * 2),
    ("llama", "rmsnorm"): (4 * T * D, (2 * T * D + D) * 2),
    ("gpt", "residual_add"): (T * D, 3 * T * D * 2),
    ("gpt", "dropout"): (T * D, 2 * T * D * 2),
    ("gpt", "residual_dropout_norm"): ((2 + 8) * T * D, (4 * T * D + 2 * D) * 2),
    ("gpt", "qkv_proj"): (2 * T * D * 288, (T * D + D * 288 + T * 288) * 2),
    ("llama", "qkv_proj"): (2 * T * D * 160, (T * D + D * 160 + T * 160) * 2),
    ("gpt", "qk_t"): (2 * B * H * N * N * HD, (B * H * N * HD + B * 6 * N * HD + B * H * N * N) * 2),
    ("llama", "qk_t"): (2 * B * H * N * N * HD, (B * H * N * HD + B * 2 * N * HD + B * H * N * N) * 2),
    ("gpt", "softmax"): (5 * B * H * N * N, 2 * B * H * N * N * 2),
    ("llama", "attn_v"): (2 * B * H * N * N * HD, (B * H * N * N + B * 2 * N * HD + B * H * N * HD) * 2),
    ("gpt", "attention"): (4 * B * H * HD * N * N, 2 * (B * H * N * HD + B * 6 * N * HD) * 2),
    ("llama", "attention"): (4 * B * H * HD * N * (N + 1) // 2, 2 * (B * H * N * HD + B * 2 * N * HD) * 2),
    ("gpt", "out_proj"): (2 * T * D * D, (T * D + D * D + T * D) * 2),
    ("gpt", "ffn_up"): (2 * T * D * F, (T * D + D * F + T * F) * 2),
    ("llama", "ffn_up"): (2 * T * D * 2 * F, (T * D + D * 2 * F + T * 2 * F) * 2),
    ("gpt", "gelu"): (5 * T * F, 2 * T * F * 2),
    ("llama", "swiglu"): (6 * T * F, 3 * T * F * 2),
    ("gpt", "ffn_down"): (2 * T * F * D, (T * F + F * D + T * D) * 2),
    # Mixtral: 8 experts, top 2; the router writes k weights (bf16) and k int64 ids per token; balanced
    # routing sends 148 slots to all 8 experts, so every expert's weights (3·d·d_ffn each) are read.
    ("mixtral", "moe_router"): (2 * T * D * 8, (T * D + 8 * D + T * 2) * 2 + T * 2 * 8),
    ("mixtral", "moe_experts"): (2 * 3 * T * 2 * D * F, (2 * T * D + T * 2 + 8 * 3 * D * F) * 2 + T * 2 * 8),
    # RoPE rotates all 16 dims of the 6 query and 2 KV heads; QK-norm normalises them; repeat_kv reads K and V
    # (2 heads) and writes them for 6; GeGLU is SwiGLU's shape with gelu-tanh's 9 FLOPs + the product.
    ("llama", "rope"): (3 * T * 8 * HD, 2 * T * 8 * HD * 2),
    ("qwen", "qk_norm"): (4 * T * 8 * HD, (2 * T * 8 * HD + 2 * HD) * 2),
    ("qwen", "repeat_kv"): (0, 2 * (B * 2 * N * HD + B * 6 * N * HD) * 2),
    ("gemma", "geglu"): (10 * T * F, 3 * T * F * 2),
}


def test_hand_checks_cover_every_op() -> None:
    assert {name for _, name in HAND} == {op.name for op in CATALOG}


@pytest.mark.parametrize(("shape", "name"), HAND)
def test_formulas_by_hand(small_config, shape: str, name: str) -> None:
    model, overrides = SHAPES[shape]
    config = small_config(model, dtype="bf16", **overrides)
    op = get_op(name)
    assert op.applies(config)
    assert (op.flops(config), op.min_bytes(config)) == HAND[shape, name]


def nbytes(value: object) -> int:
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    return sum(t.numel() * t.element_size() for t in tensors)  # type: ignore[union-attr]


# RMSNorm shares LayerNorm's inputs (x, weight, bias) but never reads the bias.
UNREAD_INPUTS = {("rmsnorm", "rmsnorm"): {"bias"}, ("rmsnorm", "residual_dropout_norm"): {"bias"}}
ALL_OPS = [(shape, op.name) for shape in ("gpt", "llama", "qwen", "gemma")
           for op in ops_for(make_config(SHAPES[shape][0], **SHAPES[shape][1]))]


@pytest.mark.parametrize(("shape", "name"), ALL_OPS)
def test_min_bytes_is_inputs_read_once_plus_outputs_written_once(small_config, shape: str, name: str) -> None:
    model, overrides = SHAPES[shape]
    config = small_config(model, **{**overrides, "causal": False})  # a causal mask is computed, not read: keep it out
    op = get_op(name)
    inputs = inputs_for(op, config)
    unread = UNREAD_INPUTS.get((config.norm, name), set())
    read = sum(nbytes(t) for key, t in inputs.items() if key not in unread)
    written = nbytes(op.variants[0].build(config, inputs)())
    assert op.min_bytes(config) == read + written


@pytest.mark.parametrize("op", CATALOG, ids=lambda op: op.name)
def test_every_op_is_fully_declared(op) -> None:
    assert op.flops.text.strip() and op.min_bytes.text.strip() and op.doc.strip()
    assert op.variants
    assert len({v.name for v in op.variants}) == len(op.variants)
    assert op.group in ("attention", "norm", "ffn")
    assert op.unit in ("tensor", "vector")
    assert set(op.replaces) <= {o.name for o in CATALOG} - {op.name}


def test_catalog_names_are_unique_and_lookups_fail_cleanly() -> None:
    from roofline.errors import RooflineError

    names = [op.name for op in CATALOG]
    assert len(names) == len(set(names))
    with pytest.raises(RooflineError, match="unknown op 'nope'"):
        get_op("nope")


@pytest.mark.parametrize("op", BLOCK_ORDER, ids=lambda op: op.name)
def test_the_shown_formula_is_the_computed_one(op) -> None:
    """One declaration per formula: what `roofline ops` shows is the expression that computes the number."""
    c = make_config("mixtral-8x7b" if op.group == "ffn" and op.name.startswith("moe") else "gpt-7b",
                    seq_len=64, mode="train", dp=2 if op.name == "allreduce_grads" else 1).shard(
                        1 if op.name == "allreduce_grads" else 2)
    for formula in (op.flops, op.min_bytes, op.backward_flops, op.backward_bytes):
        if formula is None:
            continue
        shown = formula.text.split("  (")[0]
        expr = shown.replace("·", "*").replace(" − ", " - ").replace("/", "//")
        assert eval(expr, {"min": min}, {**c.dims, **formula.dims(c)}) == formula(c), (op.name, shown)
