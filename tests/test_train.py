"""Train mode: backward formulas vs torch's FLOP counter, gradient checks that catch a wrong backward, step
timing, activation memory (naive attention's N² vs FlashAttention's O(N)), and the CLI."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from roofline.analysis.placement import Roofs
from roofline.errors import RooflineError
from roofline.measure import train
from roofline.measure import variant as measure
from roofline.measure.timer import Timer
from roofline.ops import CATALOG, get_op
from roofline.ops.base import Variant
from roofline.results import Settings

SETTINGS = Settings(budget_s=0.02, min_samples=3)
ROOFS = Roofs(datasheet_flops={}, datasheet_bandwidth=0.0,
              measured_flops={"vector.fp32": 1e11, "tensor.fp32": 4e11}, measured_bandwidth=2e10)
TENSOR_OPS = [op.name for op in CATALOG if op.unit == "tensor"]
MODELS = ["gpt-7b", "llama3-8b", "mixtral-8x7b"]


@pytest.fixture
def run(cpu_info, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(measure, "gc", types.SimpleNamespace(collect=lambda: 0))
    timer = Timer(cpu_info.torch_device)
    return lambda op, variant, config: measure.measure(op, variant, config, cpu_info, ROOFS, timer, SETTINGS)


def counted_backward_flops(op, config, variant: str | None = None) -> int:
    """FLOPs torch's counter sees in the backward of one call (forward + backward minus forward)."""
    inputs = op.make_inputs(config, torch.device("cpu"), torch.Generator().manual_seed(0))
    names = train.require_grads(inputs)
    fn = (op.variant(variant) if variant else op.variants[0]).build(config, inputs)
    with FlopCounterMode(display=False) as forward:
        outs = train.differentiable(fn())
    with FlopCounterMode(display=False) as backward:
        torch.autograd.grad(outs, [inputs[n] for n in names], [torch.ones_like(o) for o in outs], allow_unused=True)
    assert forward.get_total_flops() == op.flops(config)
    return backward.get_total_flops()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", TENSOR_OPS)
def test_backward_flops_match_torch_flop_counter(small_config, name: str, model: str) -> None:
    config = small_config(model, mode="train")
    op = get_op(name)
    if not op.applies(config):
        pytest.skip(f"{name} is not an op of {model}")
    if name == "attention":  # the formula counts unmasked pairs; the counter sees the full matmuls
        config = config.replace(causal=False)
    assert op.backward_flops(config) == counted_backward_flops(op, config)


def test_every_op_declares_its_backward() -> None:
    for op in CATALOG:
        assert op.backward_flops is not None and op.backward_bytes is not None, op.name
        assert op.backward_flops.text and op.backward_bytes.text, op.name


def test_a_train_row_counts_forward_plus_backward(run, small_config) -> None:
    config = small_config(mode="train")
    op = get_op("ffn_up")
    row = run(op, op.variants[0], config)
    assert row.status == "ok", row.note
    assert row.flops == op.flops(config) + op.backward_flops(config) == 3 * op.flops(config)
    assert row.min_bytes == op.min_bytes(config) + op.backward_bytes(config)
    assert row.backward_flops == 2 * op.flops(config)
    assert row.grad_error is not None and row.grad_error <= row.tolerance
    assert row.backward_time_s > 0 and row.backward_samples >= SETTINGS.min_samples
    assert row.saved_new_bytes == 0 and row.saved_bytes > 0  # a linear keeps only its input and weight


@pytest.mark.parametrize("model", MODELS)
def test_every_variant_passes_its_gradient_check_or_is_skipped(run, small_config, cpu_info, model: str) -> None:
    config = small_config(model, mode="train")
    for op in CATALOG:
        if not op.applies(config):
            continue
        for variant in op.variants:
            row = run(op, variant, config)
            if variant.requires(config, cpu_info.torch_device) or row.variant == "sdpa_efficient":
                assert row.status == "skipped", f"{row.op}/{row.variant}"
                continue
            assert row.status == "ok", f"{row.op}/{row.variant}: {row.note}"
            assert row.grad_error <= row.tolerance, f"{row.op}/{row.variant}"


class WrongGradient(torch.autograd.Function):
    """x + residual whose backward gives x the gradient scaled by `factor` (1.0 is right)."""

    @staticmethod
    def forward(ctx, x, residual, factor):
        ctx.factor = factor
        return x + residual

    @staticmethod
    def backward(ctx, dy):
        return dy * ctx.factor, dy, None


def with_variant(op_name: str, build) -> tuple:
    op = get_op(op_name)
    variant = Variant("test", build)
    return dataclasses.replace(op, variants=(variant,)), variant


@pytest.mark.parametrize("factor", [1.0, 1.1, 0.0])
def test_a_wrong_backward_fails_and_is_never_timed(run, small_config, factor: float) -> None:
    op, variant = with_variant("residual_add", lambda c, i: lambda: WrongGradient.apply(i["x"], i["residual"], factor))
    row = run(op, variant, small_config(mode="train"))
    if factor == 1.0:
        assert row.status == "ok" and row.grad_error < 1e-6, row.note
    else:
        assert row.status == "failed" and "gradient relative error" in row.note
        assert row.samples == 0 and row.time_median_s is None


def test_a_dropout_backward_with_another_mask_fails(run, small_config) -> None:
    def build(c, i):
        def run_once():
            y = torch.nn.functional.dropout(i["x"], c.dropout_p, training=True)
            other = torch.nn.functional.dropout(torch.ones_like(i["x"]), c.dropout_p, training=True)
            return y.detach() + (i["x"] * other - (i["x"] * other).detach())  # right values, another mask's grad
        return run_once

    op, variant = with_variant("dropout", build)
    row = run(op, variant, small_config(mode="train"))
    assert row.status == "failed" and "gradient" in row.note


def test_a_forward_only_variant_is_skipped_in_train_mode(run, small_config) -> None:
    op, variant = with_variant("residual_add", lambda c, i: lambda: (i["x"] + i["residual"]).detach())
    row = run(op, variant, small_config(mode="train"))
    assert row.status == "skipped" and "no backward" in row.note


def test_naive_attention_saves_the_score_matrix_flash_does_not(run, small_config) -> None:
    config = small_config(mode="train", seq_len=64)
    attention = get_op("attention")
    naive, flash = (run(attention, attention.variant(v), config) for v in ("naive", "sdpa_flash"))
    scores = config.batch * config.n_heads * config.q_len * config.kv_len * config.dtype_bytes
    output = config.batch * config.n_heads * config.q_len * config.head_dim * config.dtype_bytes
    assert naive.saved_new_bytes >= scores  # the probabilities, N² per head
    assert output <= flash.saved_new_bytes < scores / 2  # O and its log-sum-exp: O(N)


def test_fp8_has_no_train_mode(small_config) -> None:
    with pytest.raises(RooflineError, match="train mode has no fp8"):
        small_config(mode="train", dtype="fp8")


def test_profile_train_on_the_cli(tmp_path) -> None:
    from conftest import run_cli

    code, stdout, stderr = run_cli(["profile", "--device", "cpu", "--mode", "train", "--seq-len", "24",
                                    "--ops", "layernorm,attention,gelu", "--variants", "torch,naive,sdpa_flash",
                                    "--out", str(tmp_path), "--budget", "0.02", "--no-plots"])
    assert code == 0, stderr
    assert "bwd" in stdout and "saved" in stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"train"}
    assert all(r["status"] == "ok" and r["backward_time_s"] > 0 and r["grad_error"] is not None for r in rows)


@pytest.mark.parametrize("model", ["gpt-7b", "llama3-8b"])
@pytest.mark.parametrize("op_name", ["softmax", "residual_dropout_norm", "attention"])
def test_catalog_triton_variants_in_train_mode(model: str, op_name: str) -> None:
    """Our Triton kernels under the interpreter: softmax and the fused norm have a backward that passes the op's
    gradient check; FlashAttention is forward-only, so train mode skips it."""
    from roofline.config import make_config
    from roofline.errors import Unsupported

    config = make_config(model, seq_len=24, d_model=64, n_heads=4, n_kv_heads=4 if model == "gpt-7b" else 2,
                         head_dim=16, ffn_dim=128, dtype="bf16" if op_name == "attention" else "fp32",
                         dropout_p=0.1, mode="train")
    op = get_op(op_name)
    inputs = op.make_inputs(config, torch.device("cpu"), torch.Generator().manual_seed(7))
    names = train.require_grads(inputs)
    output = op.variant("triton").build(config, inputs)()
    rows = torch.arange(0, config.q_len, 3)
    if op_name == "attention":
        with pytest.raises(Unsupported, match="no backward"):
            train.grad_error(op, config, inputs, names, output, rows, torch.Generator().manual_seed(1))
        return
    assert train.grad_error(op, config, inputs, names, output, rows, torch.Generator().manual_seed(1)) < 1e-4


class OnceBackward(torch.autograd.Function):
    """x + residual whose backward refuses to run twice over one graph (as torch.compile's donated buffers do)."""

    @staticmethod
    def forward(ctx, x, residual):
        ctx.used = False
        return x + residual

    @staticmethod
    def backward(ctx, dy):
        if ctx.used:
            raise RuntimeError("backward ran twice over one graph")
        ctx.used = True
        return dy, dy


def test_the_backward_is_timed_over_a_fresh_forward_each_sample(run, small_config) -> None:
    op, variant = with_variant("residual_add", lambda c, i: lambda: OnceBackward.apply(i["x"], i["residual"]))
    row = run(op, variant, small_config(mode="train"))
    assert row.status == "ok", row.note
    assert row.backward_time_s > 0 and row.backward_samples >= SETTINGS.min_samples


def test_ops_in_train_mode_lists_backward_formulas(capsys) -> None:
    from roofline.cli import main

    assert main(["ops", "--mode", "train", "--seq-len", "4096"]) == 0
    out = capsys.readouterr().out
    assert "backward FLOPs = 4·T·K·N" in out and "1.24 TFLOP" in out  # qkv_proj: 3 × 412 GFLOP
    assert "[b, h, q, kv]" in out  # formulas are text, not rich markup


def test_a_model_without_dropout_has_no_dropout_op(small_config) -> None:
    """Llama and Mixtral train at p = 0, where F.dropout returns x: a dropout row would time nothing."""
    from roofline.ops import ops_for

    assert "dropout" in [op.name for op in ops_for(small_config("gpt-7b"))]
    assert "dropout" not in [op.name for op in ops_for(small_config("llama3-8b"))]


def test_committed_h100_train_run_renders_its_backward_columns(tmp_path) -> None:
    """The H100 train run: the HTML report and the fusion summary carry the backward and activation memory."""
    from pathlib import Path

    from roofline import results
    from roofline.analysis.fusion import summarize
    from roofline.render import html as report

    res = results.load(Path(__file__).parent.parent / "reports/reference/h100/gpt-7b-train-s4096")
    html = report.report_html([res], {"roofline": "", "time_split": ""})
    assert "<th class=\"num\">backward</th>" in html and "saved for backward" in html
    naive = res.find("attention", "naive")
    cudnn = res.find("attention", "sdpa_cudnn")
    assert naive and cudnn and naive.saved_new_bytes > 20 * cudnn.saved_new_bytes  # N² probabilities vs O(N)
    assert all(r.grad_error is not None and r.grad_error <= r.tolerance for r in res.ok_rows())
    fused = {f.fused_variant: f for f in summarize(res) if f.group == "attention"}
    assert fused["sdpa_cudnn"].chain_saved_bytes == naive.saved_new_bytes
