"""The mixture-of-experts ops (router, experts), their formulas against torch's FLOP counter and by hand, every
variant against the float64 reference, the dense FFN making way for them, and FLOPs per token vs dense."""

from __future__ import annotations

import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from roofline import fmt
from roofline.analysis.placement import Roofs
from roofline.measure import variant as measure
from roofline.measure.timer import Timer
from roofline.ops import get_op, ops_for
from roofline.ops.base import default_check
from roofline.ops.moe import balanced_routing, block_flops, moe_flops, touched_experts
from roofline.results import Run, Settings

CPU = torch.device("cpu")
# 36 tokens × top 2 = 72 slots: 9 per expert, so padded bmm pads nothing and every count is exact.
MOE_SHAPE = {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "ffn_dim": 96, "seq_len": 18, "batch": 2}
ROOFS = Roofs(datasheet_flops={}, datasheet_bandwidth=0.0,
              measured_flops={"vector.fp32": 1e11, "tensor.bf16": 4e11}, measured_bandwidth=2e10)


@pytest.fixture
def mixtral(small_config):
    return lambda **kw: small_config("mixtral-8x7b", **{**MOE_SHAPE, **kw})


def inputs_for(op, c, seed: int = 0):
    return op.make_inputs(c, CPU, torch.Generator().manual_seed(seed))


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_a_moe_block_has_router_and_experts_instead_of_the_dense_ffn(small_config, mixtral) -> None:
    names = [op.name for op in ops_for(mixtral())]
    assert names[-2:] == ["moe_router", "moe_experts"]
    assert not {"ffn_up", "gelu", "swiglu", "ffn_down"} & set(names)
    dense = [op.name for op in ops_for(small_config("llama3-8b"))]
    assert {"ffn_up", "swiglu", "ffn_down"} <= set(dense) and not {"moe_router", "moe_experts"} & set(dense)


def test_router_flops_are_the_gate_matmul(mixtral) -> None:
    c = mixtral()
    op = get_op("moe_router")
    t, d, e, k = c.tokens, c.d_model, c.n_experts, c.top_k
    assert op.flops(c) == counted_flops(op.variants[0].build(c, inputs_for(op, c))) == 2 * t * d * e
    assert op.min_bytes(c) == (t * d + e * d + t * k) * 4 + t * k * 8


@pytest.mark.parametrize("variant", ["loop", "padded_bmm"])
def test_expert_flops_match_the_flop_counter(mixtral, variant: str) -> None:
    c = mixtral()
    op = get_op("moe_experts")
    assert op.flops(c) == 2 * 3 * c.tokens * c.top_k * c.d_model * c.ffn_dim
    assert counted_flops(op.variant(variant).build(c, inputs_for(op, c))) == op.flops(c)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("name", ["moe_router", "moe_experts"])
def test_min_bytes_is_inputs_read_once_plus_outputs_written_once(mixtral, name: str) -> None:
    c = mixtral()
    op = get_op(name)
    inputs = inputs_for(op, c)
    out = op.variants[0].build(c, inputs)()
    written = nbytes(*out) if isinstance(out, tuple) else nbytes(out)
    assert op.min_bytes(c) == nbytes(*inputs.values()) + written


def test_decode_reads_only_the_experts_that_get_a_token(mixtral) -> None:
    c = mixtral(mode="decode", kv_cache_len=41, batch=1)
    op = get_op("moe_experts")
    assert touched_experts(c) == c.top_k == 2
    expert = 3 * c.d_model * c.ffn_dim
    assert op.min_bytes(c) == (2 * c.d_model + c.top_k + 2 * expert) * 4 + c.top_k * 8
    assert touched_experts(mixtral(mode="decode", kv_cache_len=41, batch=64)) == c.n_experts


def test_balanced_routing_gives_every_expert_its_share(mixtral) -> None:
    c = mixtral(seq_len=37, batch=1)  # 74 slots over 8 experts: 9 or 10 each
    experts = balanced_routing(c, CPU, torch.Generator().manual_seed(1))
    assert experts.shape == (37, 2)
    assert all(len(set(row)) == 2 for row in experts.tolist())  # k distinct experts per token
    assert set(torch.bincount(experts.flatten(), minlength=8).tolist()) == {9, 10}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_variant_matches_the_reference_or_says_why_not(monkeypatch, cpu_info, mixtral, dtype: str) -> None:
    monkeypatch.setattr(measure, "gc", types.SimpleNamespace(collect=lambda: 0))
    c = mixtral(dtype=dtype)
    timer = Timer(cpu_info.torch_device)
    rows = {(op.name, v.name): measure.measure(op, v, c, cpu_info, ROOFS, timer, Settings(0.01, 3))
            for op in (get_op("moe_router"), get_op("moe_experts")) for v in op.variants}
    for key, row in rows.items():
        if key == ("moe_experts", "grouped") and dtype != "bf16":
            assert row.status == "skipped" and "bf16" in row.note
        elif key == ("moe_experts", "grouped") and not hasattr(torch, "_grouped_mm"):
            assert row.status == "skipped"
        else:
            assert row.status == "ok", f"{key}: {row.note}"
            assert row.error <= row.tolerance


def test_variants_agree_with_each_other(mixtral) -> None:
    c = mixtral(dtype="bf16")
    op = get_op("moe_experts")
    inputs = inputs_for(op, c, seed=3)
    rows = torch.arange(c.tokens)
    errors = {v.name: default_check(op, c, inputs, v.build(c, inputs)(), rows) for v in op.variants
              if v.requires(c, CPU) is None}
    assert {"loop", "padded_bmm"} <= set(errors) and max(errors.values()) < 2e-2


def test_router_weights_sum_to_one_over_distinct_experts(mixtral) -> None:
    c = mixtral()
    op = get_op("moe_router")
    weights, experts = op.variants[0].build(c, inputs_for(op, c))()
    assert weights.shape == experts.shape == (c.tokens, c.top_k)
    assert torch.allclose(weights.sum(-1), torch.ones(c.tokens))
    assert all(len(set(row)) == c.top_k for row in experts.tolist())


def test_moe_ops_have_no_fp8_path(monkeypatch, cpu_info, mixtral) -> None:
    c = mixtral(dtype="fp8")
    op = get_op("moe_experts")
    row = measure.measure(op, op.variants[0], c, cpu_info, ROOFS, Timer(CPU), Settings(0.01, 3))
    assert (row.status, row.note) == ("skipped", "no fp8 path in this variant")


def test_flops_per_token_moe_vs_dense_equivalent(small_config, mixtral) -> None:
    c = mixtral()
    dense = c.replace(n_experts=0, top_k=0, ffn_dim=c.n_experts * c.ffn_dim)
    d, f, e, k = c.d_model, c.ffn_dim, c.n_experts, c.top_k
    router_per_token = 2 * d * e
    # The dense FFN runs all e experts' worth of weights per token, and its SwiGLU is an op of its own (6·e·f);
    # the MoE runs k experts (matmul FLOPs only, as the experts' formula counts them) plus the router.
    saved = (block_flops(dense) - block_flops(c)) / c.tokens
    assert saved == 2 * 3 * d * f * (e - k) + 6 * e * f - router_per_token
    flops = moe_flops(c)  # measured runs save it in their record; the table's line reads it from there
    assert flops.flops_per_token == block_flops(c) / c.tokens
    assert flops.dense_flops_per_token == block_flops(dense) / dense.tokens
    line = fmt.moe_line(Run(config=c, moe=flops))
    assert line and line.startswith("FLOPs per token: MoE ") and "dense-equivalent" in line
    assert "top 2 of 8 experts" in line
    assert moe_flops(small_config("llama3-8b")) is None and fmt.moe_line(Run(config=small_config("llama3-8b"))) is None


@pytest.mark.parametrize("model", ["mixtral-8x7b", "llama3-8b", "gpt-7b"])
def test_decode_measures_every_op_of_the_block(monkeypatch, cpu_info, small_config, model: str) -> None:
    """Decode end to end at a tiny shape: one token per sequence against a 41-token KV cache (GQA for two)."""
    monkeypatch.setattr(measure, "gc", types.SimpleNamespace(collect=lambda: 0))
    c = small_config(model, mode="decode", kv_cache_len=41, batch=3)
    timer = Timer(cpu_info.torch_device)
    for op in ops_for(c):
        for v in op.variants:
            row = measure.measure(op, v, c, cpu_info, ROOFS, timer, Settings(0.005, 3))
            assert row.status in ("ok", "skipped"), f"{op.name}/{v.name}: {row.note}"
            assert row.status == "ok" or row.note, f"{op.name}/{v.name}"
            assert (row.q_len, row.kv_len) == (1, 41)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_moe_variant_on_the_gpu(mixtral) -> None:
    """On the device machine: the grouped GEMM (sm90), padded bmm and loop all pass their check in bf16."""
    from roofline.measure.device import detect

    info = detect("cuda")
    c = mixtral(dtype="bf16", d_model=128, ffn_dim=256, seq_len=257)
    timer = Timer(info.torch_device, info.l2_bytes)
    for op in (get_op("moe_router"), get_op("moe_experts")):
        for v in op.variants:
            row = measure.measure(op, v, c, info, ROOFS, timer, Settings(0.02, 3))
            assert row.status == "ok", f"{op.name}/{v.name}: {row.note}"
            assert row.peak_mem_bytes is not None
