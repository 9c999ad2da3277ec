"""`roofline sweep`: planning (the out-of-memory prediction), the per-point runs, slopes, the block totals, the
command end to end on the CPU at tiny sizes; and the fp8 path of the projections (skipped off Hopper)."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from conftest import run_cli

from roofline.analysis.placement import Roofs
from roofline.analysis.sweep import block_point, loglog_slope, split_runs, sweep_series
from roofline.cli.options import parse_seq_lens
from roofline.errors import RooflineError
from roofline.measure import session
from roofline.measure import variant as measure
from roofline.measure.sweep import plan_sweep, predicted_skips, run_sweep
from roofline.ops import get_op
from roofline.ops.base import TOLERANCE, default_check
from roofline.results import Results, Run, Settings, SweepGrid, load

TINY = """name = "tiny"
d_model = 64
n_heads = 4
n_kv_heads = 4
head_dim = 16
ffn_dim = 128
activation = "gelu"
norm = "layernorm"
dropout_p = 0.1
causal = false
"""
ROOFS = Roofs(datasheet_flops={}, datasheet_bandwidth=0.0,
              measured_flops={"vector.fp32": 1e11, "tensor.bf16": 4e11}, measured_bandwidth=2e10)
SETTINGS = Settings(budget_s=0.01, min_samples=3)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny.toml"
    path.write_text(TINY)
    return str(path)


@pytest.fixture(scope="session")
def cli_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_model: str):
    """One real tiny sweep through the CLI: N = 16, 40 (odd on purpose), the whole block, plots on."""
    out = tmp_path_factory.mktemp("sweep")
    code, stdout, stderr = run_cli(["sweep", "--model", tiny_model, "--seq-len", "40,16", "--device", "cpu",
                                    "--budget", "0.01", "--out", str(out), "--json", "-"])
    return types.SimpleNamespace(code=code, out=out, stdout=stdout, stderr=stderr)


# --- planning ---------------------------------------------------------------------------------------------

def test_seq_lens_parse_sorted_and_unique() -> None:
    assert parse_seq_lens("4096, 1024,4096,2048") == [1024, 2048, 4096]
    for bad in ("", "1024,abc", "0,16", "-8"):
        with pytest.raises(RooflineError, match="--seq-len"):
            parse_seq_lens(bad)


def test_plan_is_dtype_by_seq_len_and_filters_attention_variants_only(tiny_model: str) -> None:
    points = plan_sweep(tiny_model, [16, 32], ["fp32", "bf16"], variants=["naive", "sdpa_flash"])
    assert [(p.config.dtype, p.config.seq_len) for p in points] == [("fp32", 16), ("fp32", 32), ("bf16", 16),
                                                                     ("bf16", 32)]
    names = [(op.name, v.name) for op, v in points[0].items]
    assert [v for op, v in names if op == "attention"] == ["naive", "sdpa_flash"]
    assert {"layernorm", "qkv_proj", "softmax", "ffn_up", "gelu", "ffn_down"} <= {op for op, _ in names}
    assert ("softmax", "triton") in names  # the other ops keep all their variants

    only = plan_sweep(tiny_model, [16], ["fp32"], block=False)
    assert {op.name for op, _ in only[0].items} == {"attention"}
    prefill = only[0].config
    assert len(only[0].items) == sum(v.applies(prefill) for v in get_op("attention").variants)  # split-KV: decode
    with pytest.raises(RooflineError, match="unknown attention variant 'flash'"):
        plan_sweep(tiny_model, [16], ["fp32"], variants=["flash"])


def test_naive_attention_at_32k_is_predicted_not_to_fit_an_h100() -> None:
    """2·32·N²·2 bytes of scores ≈ 137 GB at N = 32768 (plus the 25 % margin): skipped before allocating."""
    points = plan_sweep("gpt-7b", [8192, 32768], ["bf16"], block=True)
    skips = predicted_skips(points, free_bytes=79 * 10**9)
    assert {(s.op, s.variant, s.seq_len) for s in skips} == {
        ("attention", "naive", 32768), ("qk_t", "torch", 32768), ("softmax", "torch", 32768),
        ("softmax", "triton", 32768), ("attn_v", "torch", 32768)}
    naive = next(s for s in skips if s.variant == "naive")
    n = 32768
    assert naive.need_bytes > 2 * 32 * n * n * 2 > 137e9
    c = points[1].config
    attention = get_op("attention")
    assert naive.need_bytes == measure.predicted_bytes(attention, attention.variant("naive"), c)


def test_the_sweep_skips_what_was_predicted_through_measure(monkeypatch, cpu_info, tiny_model: str,
                                                           tmp_path) -> None:
    """Free memory between naive attention's need at N = 16 and at N = 64: naive is skipped at 64 only."""
    points = plan_sweep(tiny_model, [16, 64], ["fp32"], variants=["naive", "sdpa_flash"], block=False)
    attention = get_op("attention")
    need = [measure.predicted_bytes(attention, attention.variant("naive"), p.config) for p in points]
    free = (need[0] + need[1]) // 2
    monkeypatch.setattr(measure, "free_memory_bytes", lambda info: free)
    run = session.start(cpu_info, points[0].config, tmp_path, [], SETTINGS, roofs=(ROOFS, None))
    run_sweep(run, points)
    rows = run.results.rows
    status = {(r.variant, r.seq_len): r.status for r in rows}
    assert status == {("naive", 16): "ok", ("sdpa_flash", 16): "ok", ("naive", 64): "skipped",
                      ("sdpa_flash", 64): "ok"}
    skipped = next(r for r in rows if r.status == "skipped")
    assert "would need" in skipped.note and skipped.samples == 0
    assert [(s.variant, s.seq_len) for s in predicted_skips(points, free)] == [("naive", 64)]
    res = Results(run=Run(config=points[0].config, sweep=SweepGrid(block=False)), rows=rows)
    naive = next(s for s in sweep_series(res) if s.name == "naive")
    assert [n for n, _, _ in naive.points] == [16] and naive.missing[0][0] == 64


# --- analysis ---------------------------------------------------------------------------------------------

def test_loglog_slope() -> None:
    assert loglog_slope([(n, 3e-9 * n * n) for n in (1024, 2048, 8192)]) == pytest.approx(2.0)
    assert loglog_slope([(n, 5.0 * n) for n in (16, 40)]) == pytest.approx(1.0)
    assert loglog_slope([(1024, 1.0)]) is None
    assert loglog_slope([(1024, 1.0), (2048, 0.0)]) is None  # a zero is not a measurement


def test_cli_sweep_writes_one_results_file_with_every_seq_len(cli_sweep) -> None:
    assert cli_sweep.code == 0, cli_sweep.stderr
    data = json.loads(cli_sweep.stdout)
    assert data["run"]["sweep"]["seq_lens"] == [16, 40] and data["run"]["sweep"]["block"] is True
    assert {r["seq_len"] for r in data["rows"]} == {16, 40}
    res = load(cli_sweep.out)
    assert len(res.rows) == len(data["rows"])
    assert {r.op for r in res.rows} >= {"layernorm", "attention", "ffn_down"}
    for name in ("sweep.png", "sweep.svg", "results.csv"):
        assert (cli_sweep.out / name).stat().st_size > 0
    assert not (cli_sweep.out / "roofline.png").exists()  # only with several dtypes


def test_series_have_a_point_per_measured_seq_len(cli_sweep) -> None:
    res = load(cli_sweep.out)
    series = {s.name: s for s in sweep_series(res)}
    assert {"naive", "sdpa_flash", "block (unfused)", "block (best)"} <= set(series)
    for name in ("naive", "sdpa_flash", "block (unfused)", "block (best)"):
        assert [n for n, _, _ in series[name].points] == [16, 40], name
    assert series["sdpa_cudnn"].points == [] and series["sdpa_cudnn"].missing[0][1].startswith("skipped")
    assert series["naive"].time_slope() is not None


def test_block_totals_on_a_derived_copy(cli_sweep) -> None:
    """Every ok row set to 1 ms: unfused = Σ per_block over plain ops; best swaps each chain for its fused op."""
    point = split_runs(load(cli_sweep.out))[0]
    point.rows = [dataclasses.replace(r, time_median_s=1e-3) for r in point.rows]
    # plain ops of the tiny block: layernorm×2, qkv, qk_t, softmax, attn_v, out_proj, dropout×2, residual×2,
    # ffn_up, gelu, ffn_down → 14 calls.
    assert block_point(point, best=False)[0] == pytest.approx(14e-3)
    # best: attention (1) replaces qk_t+softmax+attn_v (3); residual_dropout_norm ×2 replaces dropout×2,
    # residual×2, layernorm×2 (6) → 14 − 3 + 1 − 6 + 2 = 8 calls.
    assert block_point(point, best=True)[0] == pytest.approx(8e-3)
    point.rows = [dataclasses.replace(r, status="skipped") if r.op == "qk_t" else r for r in point.rows]
    assert block_point(point, best=False) is None  # an op not measured (did not fit): no unfused total
    assert block_point(point, best=True)[0] == pytest.approx(8e-3)  # the fused op stands in


def test_split_runs_give_one_profile_per_point(cli_sweep) -> None:
    res = load(cli_sweep.out)
    runs = split_runs(res)
    assert [(r.run.config.seq_len, r.run.config.tokens) for r in runs] == [(16, 16), (40, 40)]
    assert all({row.seq_len for row in r.rows} == {r.run.config.seq_len} for r in runs)


@pytest.mark.parametrize(("args", "message"), [
    (["--seq-len", "16,abc"], "--seq-len"),
    (["--variants", "nope"], "unknown attention variant"),
    (["--dtype", "fp64"], "unknown dtype"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model: str, tmp_path, args: list[str], message: str) -> None:
    code, _, stderr = run_cli(["sweep", "--model", tiny_model, "--device", "cpu", "--out", str(tmp_path), *args])
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


# --- fp8: the projections' scaled-matmul path --------------------------------------------------------------

def test_fp8_sweep_on_cpu_skips_everything_with_reasons(tiny_model: str, tmp_path) -> None:
    code, _, stderr = run_cli(["sweep", "--model", tiny_model, "--seq-len", "16", "--dtype", "fp8", "--device",
                               "cpu", "--out", str(tmp_path), "--no-plots"])
    assert code == 3, stderr
    notes = {(r.op, r.variant): r.note for r in load(tmp_path).rows}
    assert "compute capability ≥ 8.9" in notes["qkv_proj", "torch"]
    assert notes["gelu", "torch"] == "no fp8 path in this variant"
    assert notes["attention", "naive"] == "no fp8 path in this variant"


def test_fp8_projection_is_checked_against_float64(tiny_model: str) -> None:
    """The closure itself runs on the CPU (torch._scaled_mm has a CPU kernel), so its maths is tested here."""
    c = plan_sweep(tiny_model, [16], ["fp8"])[0].config.replace(batch=3)
    op = get_op("ffn_up")
    inputs = op.make_inputs(c, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert inputs["x"].dtype == inputs["weight"].dtype == torch.float8_e4m3fn
    out = op.variants[0].build(c, inputs)()
    assert out.dtype == torch.bfloat16 and out.shape == (48, 128)
    assert default_check(op, c, inputs, out, torch.arange(0, 48, 5)) < TOLERANCE["fp8"]
    t, k, n = 48, 64, 128
    assert op.min_bytes(c) == (t * k + k * n) * 1 + t * n * 2  # fp8 in, bf16 out
    assert "8.9" in op.variants[0].requires(c, torch.device("cpu"))
    assert op.variants[0].requires(c.replace(dtype="bf16"), torch.device("cpu")) is None



def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_gpu(), reason="needs a CUDA GPU with compute capability ≥ 8.9")
@pytest.mark.parametrize("batch", [1, 5])
def test_fp8_projection_on_the_gpu(tiny_model: str, batch: int) -> None:
    """On the device machine: torch._scaled_mm in prefill and as a decode GEMV (T = batch rows)."""
    from roofline.measure.device import detect
    from roofline.measure.timer import Timer

    info = detect("cuda")
    c = plan_sweep(tiny_model, [16], ["fp8"])[0].config.replace(mode="decode", kv_cache_len=32, batch=batch)
    op = get_op("qkv_proj")
    row = measure.measure(op, op.variants[0], c, info, ROOFS, Timer(info.torch_device, info.l2_bytes),
                          SETTINGS)
    assert row.status == "ok", row.note
    assert row.ceiling == "tensor.fp8" and row.error <= TOLERANCE["fp8"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_naive_attention_at_32k_is_skipped_on_this_gpu() -> None:
    from roofline.measure.device import detect, free_memory_bytes

    points = plan_sweep("gpt-7b", [32768], ["bf16"], block=False)
    skipped = {s.variant for s in predicted_skips(points, free_memory_bytes(detect("cuda")))}
    assert "naive" in skipped and "sdpa_flash" not in skipped
