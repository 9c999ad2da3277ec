"""Hardware counters (`profile --counters`): ncu's raw CSV, kernels → ops, sums, merge, gap words, the driver, the plot.

Parsing is tested on a real ncu export captured on the H100 (tests/fixtures/ncu_h100_raw.csv, written by
scripts/capture_ncu_fixture.sh). The driver is tested without a GPU: ncu missing, a CPU run, and a stand-in
`ncu` executable that plays ncu's failure modes (rejected metric, no permission, NVTX filter matching nothing).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from roofline import results
from roofline.analysis import counters as gaps
from roofline.config import make_config
from roofline.measure import counters, ncu
from roofline.measure.ncu import Kernel
from roofline.measure.ncu_worker import WORKER_TAG, range_name
from roofline.render.figures import counters as counters_plot
from roofline.render.html import write_figure
from roofline.render.table import counters_table

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "ncu_h100_raw.csv"
# The plan scripts/capture_ncu_fixture.sh profiles: gpt-7b, seq 2048, bf16.
FIXTURE_PAIRS = {("layernorm", "torch"), ("softmax", "torch"), ("qkv_proj", "torch"), ("attention", "naive"),
                 ("attention", "sdpa_cudnn")}


def kernel(op: str | None, variant: str = "torch", **metrics: float | None) -> Kernel:
    nvtx = f"<default>:{range_name(op, variant)}" if op else ""
    return Kernel(id="0", name="k", nvtx=nvtx, metrics=dict(metrics))


def m(**named: float | None) -> dict[str, float | None]:
    """Metric dict from short names: read, write, l2, l1, ffma, fadd, hfma, bf16 (tensor)."""
    full = {"read": counters.DRAM_READ, "write": counters.DRAM_WRITE, "l2": counters.L2_BYTES,
            "l1": counters.L1_BYTES, "bf16": counters.TENSOR_FLOP_METRICS[0],
            **{k: f"smsp__sass_thread_inst_executed_op_{k}_pred_on.sum" for k in ("ffma", "fadd", "fmul", "hfma")}}
    return {full[k]: v for k, v in named.items()}


# --- ncu as a tool -------------------------------------------------------------------------------------------------

def test_metric_list_is_one_constant_of_sums() -> None:
    assert len(set(counters.METRICS)) == len(counters.METRICS)
    assert all("__" in name and name.endswith(".sum") for name in counters.METRICS)
    cmd = ncu.command("ncu", list(counters.METRICS), ["python3", "app.py"], Path("r.ncu-rep"), counters.NVTX_INCLUDE)
    assert cmd[cmd.index("--clock-control") + 1] == "none"
    assert cmd[cmd.index("--nvtx-include") + 1] == counters.NVTX_INCLUDE and "--nvtx" in cmd
    assert cmd[cmd.index("--metrics") + 1] == ",".join(counters.METRICS)
    assert cmd[-2:] == ["python3", "app.py"]


@pytest.mark.parametrize(("text", "unit", "value"), [
    ("1,048,576", "byte", 1048576.0), ("2.5", "Kbyte", 2500.0), ("3", "Mbyte", 3e6), ("12", "usecond", 12e-6),
    ("7", "inst", 7.0), ("n/a", "byte", None), ("", "", None), ("158 (0: 158)", "", 158.0)])
def test_parse_value_reads_base_and_scaled_units(text: str, unit: str, value: float | None) -> None:
    assert ncu.parse_value(text, unit) == (pytest.approx(value) if value is not None else None)


def test_rejected_metrics_and_permission_are_recognised() -> None:
    ours = ["sm__a.sum", "dram__bytes_read.sum", "lts__t_bytes.sum"]
    log = "==PROF== Connected\n==ERROR== Failed to find metric sm__a.sum\n==WARNING== lts__t_bytes.sum: fine\n"
    assert ncu.rejected_metrics(log, ours) == ["sm__a.sum"]
    assert ncu.rejected_metrics("==ERROR== Unknown metric dram__bytes_read", ours) == ["dram__bytes_read.sum"]
    assert ncu.permission_problem("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission")
    assert ncu.permission_problem(log) is None


# --- kernels → ops, sums, merge ------------------------------------------------------------------------------------

def test_op_counters_sum_kernels_and_weigh_fma_twice() -> None:
    mine = [kernel("attention", "naive", **m(read=100, write=50, l2=400, l1=900, ffma=10, fadd=3, bf16=1000)),
            kernel("attention", "naive", **m(read=20, write=None, l2=40, l1=None, hfma=5, bf16=None))]
    got = counters.op_counters(mine)
    assert got["measured_dram_read_bytes"] == 120 and got["measured_dram_write_bytes"] == 50
    assert got["measured_dram_bytes"] == 170 and got["measured_l2_bytes"] == 440 and got["measured_l1_bytes"] == 900
    assert got["measured_tensor_flops"] == 1000
    assert got["measured_flops"] == 2 * 10 + 3 + 2 * 5 + 1000
    assert got["measured_kernels"] == 2
    assert set(got) <= set(results.ROW_FIELDS)


def test_op_counters_are_none_when_no_kernel_reported_a_metric() -> None:
    got = counters.op_counters([kernel("softmax", **m(l2=5.0))])
    assert got["measured_dram_bytes"] is None and got["measured_flops"] is None and got["measured_l2_bytes"] == 5


def test_kernels_outside_our_ranges_belong_to_no_op() -> None:
    groups = counters.group_by_op([kernel("softmax"), kernel(None), kernel("attention", "sdpa_cudnn"),
                                   kernel("softmax")])
    assert {k: len(v) for k, v in groups.items()} == {("softmax", "torch"): 2, ("attention", "sdpa_cudnn"): 1}


def _row(**fields: object) -> results.Row:
    base = dict(op="softmax", variant="torch", group="attention", fused=False, unit="vector", model="gpt-7b",
                batch=1, seq_len=64, q_len=64, kv_len=64, dtype="bf16", mode="prefill", per_block=1,
                flops=1000.0, min_bytes=1000.0, intensity=1.0, time_median_s=1e-6)
    return results.Row(**{**base, **fields})  # type: ignore[arg-type]


def test_merge_fills_only_ok_rows_with_kernels() -> None:
    rows = [_row(), _row(variant="triton"), _row(op="gelu", status="failed")]
    counted = counters.merge(rows, [kernel("softmax", **m(read=1, write=2)), kernel("gelu", **m(read=5, write=5))])
    assert counted == 1
    assert rows[0].measured_dram_bytes == 3 and rows[0].measured_kernels == 1
    assert rows[1].measured_kernels is None and rows[2].measured_dram_bytes is None


# --- explaining the gaps ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "words"), [
    ({"measured_dram_bytes": 5000.0, "measured_kernels": 3}, ["5.0×", "3 kernels", "N×N", "fused"]),
    ({"measured_dram_bytes": 2000.0, "measured_kernels": 1}, ["2.0×", "re-read", "L2"]),
    ({"measured_dram_bytes": 400.0, "measured_dram_read_bytes": 350.0, "measured_dram_write_bytes": 50.0,
      "measured_kernels": 1}, ["0.40×", "write-back", "only 50 B written"]),
    ({"measured_dram_bytes": 400.0, "measured_dram_read_bytes": 200.0, "measured_dram_write_bytes": 200.0,
      "measured_kernels": 1}, ["0.40×", "served by L2"]),
    ({"measured_flops": 2100.0, "measured_kernels": 1, "unit": "tensor"}, ["2.1×", "causal", "recomputation"]),
    ({"measured_flops": 4400.0, "measured_kernels": 1, "unit": "vector"}, ["4.4×", "textbook", "compute-bound"]),
    ({"measured_flops": 100.0, "measured_kernels": 1, "unit": "vector"}, ["SFU"]),
    ({"measured_flops": 100.0, "measured_kernels": 1, "unit": "tensor"}, ["tensor-core counters"]),
])
def test_explain_gap_rules(fields: dict[str, object], words: list[str]) -> None:
    text = gaps.explain_gap(_row(**fields))
    for word in words:
        assert word in text


def test_explain_gap_is_silent_when_counters_agree_or_are_missing() -> None:
    assert gaps.explain_gap(_row(measured_dram_bytes=1100.0, measured_flops=900.0, measured_kernels=1)) == ""
    assert gaps.explain_gap(_row()) == ""
    assert gaps.pct_diff(1000.0, 1100.0) == pytest.approx(10.0)
    assert gaps.pct_diff(0.0, 5.0) is None and gaps.pct_diff(None, 5.0) is None


# --- the driver ----------------------------------------------------------------------------------------------------

@pytest.fixture()
def gpu_like_results(cpu_profile, tmp_path: Path) -> tuple[results.Results, Path]:  # type: ignore[no-untyped-def]
    """A copy of the real CPU run, its device relabelled CUDA, so the driver gets as far as looking for ncu."""
    res = results.load(cpu_profile.out_dir)
    res.run.device = dataclasses.replace(res.run.device, kind="cuda", index=0)
    results.save(res, tmp_path)
    return res, tmp_path


def _pass(res: results.Results, out_dir: Path, ncu_path: str | None = None) -> tuple[str | None, str]:
    """(why nothing was counted or None, what the pass said and the counters table)."""
    said: list[str] = []
    pairs = [(r.op, r.variant) for r in res.rows]
    problem = counters.count(res, pairs, res.run.config, out_dir, ncu_path, lambda *a: None, said.append)
    console = Console(record=True, width=200)
    console.print(counters_table(res))
    return problem, "\n".join(said) + console.export_text()


def test_no_ncu_on_path_is_a_clear_message_and_keeps_the_timing(gpu_like_results, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    res, out_dir = gpu_like_results
    monkeypatch.setattr(ncu.shutil, "which", lambda name: None)
    monkeypatch.setattr(ncu, "TOOLKIT_NCU", str(out_dir / "no-such-ncu"))
    before = (out_dir / "results.json").read_text()
    problem, _ = _pass(res, out_dir)
    assert "`ncu` is not on PATH" in str(problem) and "--ncu" in str(problem)
    assert (out_dir / "results.json").read_text() == before


def test_bad_ncu_path_is_named(gpu_like_results) -> None:  # type: ignore[no-untyped-def]
    res, out_dir = gpu_like_results
    problem, _ = _pass(res, out_dir, "/nowhere/ncu")
    assert "no ncu at /nowhere/ncu" in str(problem)


def test_cpu_run_cannot_be_counted(cpu_profile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = results.load(cpu_profile.out_dir)
    problem, _ = _pass(res, tmp_path)
    assert "NVIDIA GPU" in str(problem)


def test_counted_rows_are_merged_saved_tabled_and_plotted(gpu_like_results, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    res, out_dir = gpu_like_results
    ok = [r for r in res.rows if r.status == "ok"]
    first, rest = ok[0], ok[1:]
    # A real run's row scaled: the first op's kernels moved twice its minimum bytes and executed its FLOPs.
    found = [kernel(first.op, first.variant, **m(read=first.min_bytes, write=first.min_bytes, l2=3 * first.min_bytes,
                                                 l1=5 * first.min_bytes, fadd=first.flops))]
    log = "".join(f"{WORKER_TAG} failed {r.op}:{r.variant}: RuntimeError: boom\n" for r in rest)
    run = ncu.NcuRun(csv_text="ID\n", log=log, metrics=list(counters.METRICS))
    monkeypatch.setattr(counters, "profile_plan", lambda *a: run)
    monkeypatch.setattr(ncu, "parse_raw_csv", lambda text: found)
    problem, text = _pass(res, out_dir)
    assert problem is None
    saved = results.load(out_dir)
    row = saved.find(first.op, first.variant)
    assert row is not None and row.measured_dram_bytes == 2 * first.min_bytes and row.measured_kernels == 1
    assert saved.run.counters.counted_rows == 1
    assert all("boom" in item for item in saved.run.counters.not_counted)
    assert "Analytic vs measured" in text and "+100 %" in text and "2.0× the minimum" in text
    assert counters_plot.counters_figure(saved) is not None
    assert json.loads((out_dir / "counters" / "plan.json").read_text())["items"][0] == [first.op, first.variant]


def test_nothing_counted_is_exit_3(gpu_like_results, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    res, out_dir = gpu_like_results
    monkeypatch.setattr(counters, "profile_plan", lambda *a: ncu.NcuRun("ID\n", "", []))
    monkeypatch.setattr(ncu, "parse_raw_csv", lambda text: [kernel(None)])
    problem, _ = _pass(res, out_dir)
    assert "no kernel could be tied" in str(problem)


def test_cli_counters_on_cpu_exits_3_and_keeps_results(tmp_path: Path) -> None:
    from conftest import run_cli

    code, _, stderr = run_cli(["profile", "--device", "cpu", "--seq-len", "32", "--ops", "layernorm",
                               "--out", str(tmp_path), "--budget", "0.05", "--no-plots", "--counters"])
    assert code == 3 and "no hardware counters" in stderr
    assert results.load(tmp_path).ok_rows()


# --- a stand-in ncu executable: ncu's failure modes without a GPU ------------------------------------------------

FAKE_NCU = """#!{python}
import os, sys, pathlib
args, mode = sys.argv[1:], os.environ["FAKE_NCU_MODE"]
calls = pathlib.Path(os.environ["FAKE_NCU_CALLS"])
calls.write_text(calls.read_text() + " ".join(args) + "\\n" if calls.exists() else " ".join(args) + "\\n")
kept = pathlib.Path(str(calls) + ".metrics")
if "--import" in args:
    print(",".join(f'"{{name}}"' for name in ["ID", "Kernel Name", *kept.read_text().split(",")])); sys.exit(0)
metrics = args[args.index("--metrics") + 1].split(",")
kept.write_text(",".join(name for name in metrics if not (mode == "silent" and name == "{bad}")))
if mode == "perm":
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters")
    sys.exit(1)
if mode == "reject" and "{bad}" in metrics:
    print("==ERROR== Failed to find metric {bad}"); sys.exit(1)
if mode == "nofilter" and "--nvtx-include" in args:
    print("==WARNING== No kernels were profiled."); sys.exit(0)
pathlib.Path(args[args.index("--export") + 1]).write_text("report")
"""


@pytest.fixture()
def fake_ncu(tmp_path: Path, monkeypatch) -> tuple[str, Path]:  # type: ignore[no-untyped-def]
    path = tmp_path / "ncu"
    path.write_text(FAKE_NCU.format(python=sys.executable, bad=counters.TENSOR_FLOP_METRICS[-1]))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_NCU_CALLS", str(tmp_path / "calls.txt"))
    return str(path), tmp_path / "calls.txt"


@pytest.mark.parametrize("mode", ["ok", "reject", "silent", "nofilter", "perm"])
def test_profile_retries_what_ncu_rejects(fake_ncu, mode: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    exe, calls = fake_ncu
    monkeypatch.setenv("FAKE_NCU_MODE", mode)
    lines: list[str] = []
    args = (exe, list(counters.METRICS), ["true"], tmp_path / "work", counters.NVTX_INCLUDE, lines.append)
    if mode == "perm":
        with pytest.raises(ncu.NcuProblem, match="ERR_NVGPUCTRPERM"):
            ncu.profile(*args)
        return
    run = ncu.profile(*args)
    runs = [c for c in calls.read_text().splitlines() if "--import" not in c]
    assert run.csv_text.startswith('"ID"') and (tmp_path / "work" / "ncu.log").is_file()
    if mode in ("reject", "silent"):
        assert run.dropped_metrics == [counters.TENSOR_FLOP_METRICS[-1]] and len(runs) == (2 if mode == "reject" else 1)
        assert counters.TENSOR_FLOP_METRICS[-1] not in run.metrics
        assert any("retry" in ln for ln in lines) == (mode == "reject")
    elif mode == "nofilter":
        assert len(runs) == 2 and "--nvtx-include" not in runs[1] and "--nvtx" in runs[1]
    else:
        assert len(runs) == 1 and not run.dropped_metrics


# --- the hierarchical roofline ---------------------------------------------------------------------------------

def test_hierarchical_plot_from_results_with_counters(cpu_profile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = results.load(cpu_profile.out_dir)
    for r in res.ok_rows():  # the real rows, with counters derived from their own bytes
        r.measured_dram_bytes, r.measured_l2_bytes, r.measured_l1_bytes = r.min_bytes, 3 * r.min_bytes, 9 * r.min_bytes
        r.measured_flops, r.measured_kernels = r.flops, 1
    measured = res.run.peaks.measured
    assert measured and measured.memory_bandwidth
    roofs = counters_plot.memory_roofs(res)
    assert roofs["DRAM"][1] == "measured" and "L1" not in roofs
    paths, _ = write_figure(counters_plot.counters_figure(res), tmp_path, "counters_roofline")
    assert [p.name for p in paths] == ["counters_roofline.png", "counters_roofline.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and b"no roof" in paths[1].read_bytes()


def test_hierarchical_plot_needs_counters(cpu_profile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert counters_plot.counters_figure(results.load(cpu_profile.out_dir)) is None


# --- the real H100 capture ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captured() -> list[Kernel]:
    return ncu.parse_raw_csv(FIXTURE.read_text())


@pytest.fixture(scope="module")
def captured_rows(captured: list[Kernel]) -> list[results.Row]:
    """The capture's (op, variant) rows as `profile` builds them (formulas from the catalog), counters merged."""
    from roofline.measure.variant import base_row
    from roofline.ops import get_op

    c = make_config("gpt-7b", seq_len=2048, dtype="bf16", causal=False)  # captured before gpt-7b became causal
    rows = [base_row(get_op(op), get_op(op).variant(variant), c) for op, variant in sorted(FIXTURE_PAIRS)]
    assert counters.merge(rows, captured) == len(rows)
    return rows


def _captured(rows: list[results.Row], op: str, variant: str) -> results.Row:
    return next(r for r in rows if (r.op, r.variant) == (op, variant))


def test_real_capture_parses_one_row_per_kernel(captured: list[Kernel]) -> None:
    assert len(captured) == 8 and len({k.id for k in captured}) == 8
    assert all(k.name for k in captured)
    for name in (counters.DRAM_READ, counters.DRAM_WRITE, counters.L2_BYTES, counters.L1_BYTES):
        assert all(isinstance(k.metrics.get(name), float) for k in captured), name


def test_real_capture_maps_every_kernel_to_a_planned_op(captured: list[Kernel]) -> None:
    groups = counters.group_by_op(captured)
    assert set(groups) == FIXTURE_PAIRS and sum(map(len, groups.values())) == len(captured)
    naive = [k.name for k in groups[("attention", "naive")]]
    assert len(naive) >= 3 and any("softmax" in name for name in naive)  # QKᵀ, softmax, ·V (+ a fill)


def test_real_capture_tensor_flops_equal_the_matmul_formula(captured_rows: list[results.Row]) -> None:
    """sm__ops_path_tensor_src_bf16_dst_fp32 counts Hopper wgmma exactly: 2·M·N·K per matmul, nothing else."""
    for op, variant in (("qkv_proj", "torch"), ("attention", "naive"), ("attention", "sdpa_cudnn")):
        row = _captured(captured_rows, op, variant)
        assert row.measured_tensor_flops == row.flops, (op, variant)


def test_real_capture_unfused_attention_moves_far_more_dram_than_fused(captured_rows: list[results.Row]) -> None:
    naive, fused = _captured(captured_rows, "attention", "naive"), _captured(captured_rows, "attention", "sdpa_cudnn")
    c = make_config("gpt-7b", seq_len=2048, dtype="bf16", causal=False)
    scores_bytes = c.n_heads * c.seq_len * c.seq_len * c.dtype_bytes
    assert naive.measured_dram_bytes > 2 * scores_bytes  # the N×N scores/probabilities go through DRAM
    assert fused.measured_dram_bytes < naive.measured_dram_bytes / 10


@pytest.mark.parametrize(("op", "variant", "words"), [
    ("attention", "naive", ["4 kernels", "N×N", "fused"]),
    ("layernorm", "torch", ["write-back", "16.8 MB read but only 1.35 MB written", "textbook"]),
    ("softmax", "torch", ["textbook"]),
    ("attention", "sdpa_cudnn", []),
])
def test_real_capture_gaps_are_explained(captured_rows: list[results.Row], op: str, variant: str,
                                         words: list[str]) -> None:
    text = gaps.explain_gap(_captured(captured_rows, op, variant))
    assert all(word in text for word in words) and bool(text) == bool(words), text


def test_real_capture_hierarchical_plot(captured_rows: list[results.Row], captured: list[Kernel],
                                        tmp_path: Path) -> None:
    groups = counters.group_by_op(captured)
    rows = [dataclasses.replace(r) for r in captured_rows]
    for r in rows:  # ncu's own kernel durations stand in for the timing pass
        r.time_median_s = sum(k.metrics[counters.DURATION] for k in groups[(r.op, r.variant)])
    qkv = _captured(rows, "qkv_proj", "torch")
    assert set(counters_plot.op_points(qkv)[1]) == {"L2", "DRAM"}  # TMA: no L1 point for the GEMM
    assert set(counters_plot.op_points(_captured(rows, "layernorm", "torch"))[1]) == {"L1", "L2", "DRAM"}
    run = results.Run(config=make_config("gpt-7b", seq_len=2048, dtype="bf16"),
                      device=results.DeviceInfo(kind="cuda", name="NVIDIA H100 80GB HBM3"))
    paths, _ = write_figure(counters_plot.counters_figure(results.Results(run=run, rows=rows)), tmp_path, "c")
    assert paths[0].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_worker_runs_a_plan_on_the_gpu(tmp_path: Path) -> None:
    c = make_config("gpt-7b", seq_len=64, dtype="bf16")
    counters.write_plan(tmp_path / "plan.json", c, [("layernorm", "torch"), ("qkv_proj", "torch")], "cuda")
    out = subprocess.run([sys.executable, "-m", "roofline.measure.ncu_worker", str(tmp_path / "plan.json")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.count(f"{WORKER_TAG} start") == 2
    assert "failed" not in out.stdout, out.stdout


def test_dataclass_fields_cover_what_the_pass_writes() -> None:
    names = {f.name for f in dataclasses.fields(results.Row)}
    assert set(counters.op_counters([kernel("softmax")])) <= names
