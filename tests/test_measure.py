"""measure(): check before timing, failed/skipped rows with their reasons; the roofline maths by hand."""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch

from roofline.analysis import placement as model
from roofline.analysis.placement import Roofs
from roofline.errors import Unsupported
from roofline.measure import variant as measure
from roofline.measure.timer import Timer
from roofline.ops import CATALOG, get_op
from roofline.ops.base import Variant
from roofline.results import Settings

SETTINGS = Settings(budget_s=0.02, min_samples=3)
ROOFS = Roofs(datasheet_flops={}, datasheet_bandwidth=0.0,
              measured_flops={"vector.fp32": 1e11, "tensor.bf16": 4e11}, measured_bandwidth=2e10)


@pytest.fixture
def run(cpu_info, monkeypatch: pytest.MonkeyPatch):
    """run(op, variant, config) -> Row, on the CPU with a tiny budget."""
    # gc.collect() after every variant costs ~0.1 s on CPU and changes nothing these tests look at.
    monkeypatch.setattr(measure, "gc", types.SimpleNamespace(collect=lambda: 0))
    timer = Timer(cpu_info.torch_device)
    return lambda op, variant, config: measure.measure(op, variant, config, cpu_info, ROOFS, timer, SETTINGS)


class Counting:
    """Wraps a variant's closure and counts its calls (a failed variant must never reach the timer)."""

    def __init__(self, body) -> None:
        self.body, self.calls, self.builds = body, 0, 0

    def build(self, c, i):
        self.builds += 1

        def closure():
            self.calls += 1
            return self.body(i)

        return closure


def with_variant(op_name: str, counting: Counting):
    op = get_op(op_name)
    variant = Variant("test", counting.build)
    return dataclasses.replace(op, variants=(variant,)), variant


def test_a_correct_variant_is_timed_and_placed(run, small_config) -> None:
    counting = Counting(lambda i: i["x"] + i["residual"])
    op, variant = with_variant("residual_add", counting)
    row = run(op, variant, small_config())
    assert row.status == "ok" and row.note == ""
    assert row.samples >= SETTINGS.min_samples and counting.calls > row.samples
    assert 0 < row.time_p20_s <= row.time_median_s <= row.time_p80_s
    assert row.tolerance == 1e-4 and row.error is not None and row.error <= row.tolerance
    assert row.flops_per_s == pytest.approx(row.flops / row.time_median_s)
    assert row.bytes_per_s == pytest.approx(row.min_bytes / row.time_median_s)
    assert (row.ceiling, row.ceiling_source, row.bound) == ("vector.fp32", "measured", "memory")
    assert row.pct_of_roof == pytest.approx(100 * row.bytes_per_s / 2e10)
    assert len(row.time_samples_s) == row.samples


@pytest.mark.parametrize("wrong", [lambda i: i["x"] + i["residual"] + 1.0,
                                   lambda i: (i["x"] + i["residual"]) * math.nan,
                                   lambda i: i["x"]], ids=["plus one", "nan", "one input"])
def test_a_wrong_variant_fails_and_is_never_timed(run, small_config, wrong) -> None:
    counting = Counting(wrong)
    op, variant = with_variant("residual_add", counting)
    row = run(op, variant, small_config())
    assert (row.status, row.time_median_s, row.samples, row.flops_per_s) == ("failed", None, 0, None)
    assert "relative error" in row.note
    assert counting.calls == 1  # the first call, whose output was checked


def test_a_variant_that_raises_fails_with_its_reason(run, small_config) -> None:
    def broken(i):
        raise ValueError("shapes do not match\nsecond line")

    op, variant = with_variant("residual_add", Counting(broken))
    row = run(op, variant, small_config())
    assert (row.status, row.note, row.samples) == ("failed", "ValueError: shapes do not match", 0)


def test_unsupported_is_skipped_not_failed(run, small_config) -> None:
    def unsupported(i):
        raise Unsupported("no kernel for this shape")

    op, variant = with_variant("residual_add", Counting(unsupported))
    row = run(op, variant, small_config())
    assert (row.status, row.note, row.time_median_s) == ("skipped", "no kernel for this shape", None)


def test_an_op_that_cannot_fit_is_skipped_before_anything_is_built(run, small_config, monkeypatch) -> None:
    monkeypatch.setattr(measure, "free_memory_bytes", lambda info: 1)
    counting = Counting(lambda i: i["x"] + i["residual"])
    op, variant = with_variant("residual_add", counting)
    row = run(op, variant, small_config())
    assert row.status == "skipped" and "GB" in row.note
    assert counting.builds == 0 and row.samples == 0


def test_naive_attention_scratch_counts_towards_fitting(small_config) -> None:
    c = small_config()
    attention = get_op("attention")
    naive, flash = attention.variant("naive"), attention.variant("sdpa_flash")
    scores = c.batch * c.n_heads * c.q_len * c.kv_len * c.dtype_bytes
    copies = 3 if c.causal else 2  # scores, probabilities (and the masked copy of the scores)
    assert measure.predicted_bytes(attention, naive, c) == int(1.25 * (attention.min_bytes(c) + copies * scores))
    assert measure.predicted_bytes(attention, flash, c) == int(1.25 * attention.min_bytes(c))


def test_fp8_is_skipped_with_a_note(run, small_config) -> None:
    op = get_op("gelu")
    row = run(op, op.variants[0], small_config(dtype="fp8"))
    assert row.status == "skipped" and "fp8" in row.note


@pytest.mark.parametrize("model_name", ["gpt-7b", "llama3-8b"])
def test_every_variant_passes_its_check_or_is_skipped_with_a_reason(run, small_config, cpu_info,
                                                                    model_name: str) -> None:
    c = small_config(model_name)
    rows = [(variant, run(op, variant, c)) for op in CATALOG if op.applies(c) for variant in op.variants]
    for variant, row in rows:
        label = f"{row.op}/{row.variant}"
        reason = variant.requires(c, cpu_info.torch_device)
        if reason:
            assert (row.status, row.note) == ("skipped", reason), label
        elif row.variant == "sdpa_efficient":  # SDPA has no memory-efficient backend on the CPU
            assert row.status == "skipped" and "not available" in row.note, label
        else:
            assert row.status == "ok", f"{label}: {row.note}"
            assert row.error <= row.tolerance and row.samples >= SETTINGS.min_samples, label
    cuda_only = {f"{r.op}/{r.variant}" for v, r in rows if v.requires(c, torch.device("cpu"))}
    assert {"attention/sdpa_cudnn", "attention/triton", "softmax/triton"} <= cuda_only


# The roofline maths on hand numbers: peak 100 FLOP/s, bandwidth 10 B/s, so the ridge is at 10 FLOP/B.
def test_ridge_attainable_and_bound() -> None:
    assert model.ridge_point(100.0, 10.0) == 10.0
    assert model.attainable_flops(5.0, 100.0, 10.0) == 50.0
    assert model.attainable_flops(20.0, 100.0, 10.0) == 100.0
    assert model.bound(9.99, 100.0, 10.0) == "memory"
    assert model.bound(10.0, 100.0, 10.0) == "compute"
    assert model.intensity(100.0, 20.0) == 5.0 and model.intensity(1.0, 0.0) == math.inf


def test_place_a_memory_bound_op() -> None:
    p = model.place(flops=100.0, min_bytes=20.0, time_s=4.0, peak_flops=100.0, bandwidth=10.0)
    # AI 5 → attainable 50 FLOP/s; achieved 25 FLOP/s and 5 B/s: half the roof; the roof allows 2 s.
    assert (p.intensity, p.attainable_flops, p.achieved_flops, p.achieved_bytes) == (5.0, 50.0, 25.0, 5.0)
    assert (p.bound, p.pct_of_roof, p.floor_s) == ("memory", 50.0, 2.0)


def test_place_a_compute_bound_op() -> None:
    p = model.place(flops=4000.0, min_bytes=100.0, time_s=80.0, peak_flops=100.0, bandwidth=10.0)
    assert (p.intensity, p.attainable_flops, p.achieved_flops) == (40.0, 100.0, 50.0)
    assert (p.bound, p.pct_of_roof, p.floor_s) == ("compute", 50.0, 40.0)


@pytest.mark.parametrize(("unit", "dtype", "key"), [
    ("tensor", "bf16", "tensor.bf16"), ("tensor", "fp8", "tensor.fp8"),
    ("tensor", "fp32", "vector.fp32"), ("vector", "bf16", "vector.fp32")])
def test_ceiling_key(unit: str, dtype: str, key: str) -> None:
    assert model.ceiling_key(unit, dtype) == key


def test_roofs_prefer_measured_then_datasheet() -> None:
    roofs = Roofs(datasheet_flops={"tensor.bf16": 9e14, "tensor.fp8": 2e15}, datasheet_bandwidth=3e12,
                  measured_flops={"tensor.bf16": 7e14}, measured_bandwidth=0.0)
    assert roofs.peak("tensor.bf16") == (7e14, "measured")
    assert roofs.peak("tensor.fp8") == (2e15, "datasheet")
    assert roofs.bandwidth() == (3e12, "datasheet")
