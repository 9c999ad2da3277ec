"""`roofline` through cli.main: bad input is one line and exit 2; a real small profile writes its files."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch

from roofline import __version__
from roofline.cli import main
from roofline.config import make_config
from roofline.ops import CATALOG, ops_for
from roofline.results import SCHEMA_VERSION

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render as an 80-column, non-terminal stream would, whatever terminal runs the tests."""
    monkeypatch.setenv("COLUMNS", "80")


def assert_one_error_line(capsys: pytest.CaptureFixture[str], code: int, expected_code: int = 2) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("roofline: error:"), err
    assert code == expected_code
    return lines[0]


BAD_INPUT = {
    "seq-len 0": (["--seq-len", "0"], "seq-len"),
    "seq-len abc": (["--seq-len", "abc"], "seq-len"),
    "batch -1": (["--batch", "-1"], "batch"),
    "unknown model": (["--model", "nope"], "nope"),
    "unknown dtype": (["--dtype", "fp7"], "fp7"),
    "unknown mode": (["--mode", "finetune"], "finetune"),
    "decode without kv-len": (["--mode", "decode"], "kv-len"),
    "cuda without a GPU": pytest.param(["--device", "cuda"], "cuda", marks=NO_GPU),
    "unknown device": (["--device", "tpu"], "tpu"),
    "unknown op": (["--device", "cpu", "--ops", "nope"], "nope"),
    "unknown variant": (["--device", "cpu", "--variants", "nope"], "nope"),
    "unknown option": (["--frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize(("args", "needle"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_and_exit_2(capsys, args: list[str], needle: str) -> None:
    line = assert_one_error_line(capsys, main(["profile", *args]))
    assert needle in line


def test_an_unwritable_out_folder_is_one_line(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    code = main(["profile", "--device", "cpu", "--seq-len", "8", "--ops", "gelu", "--out", f"{blocker}/s"])
    line = assert_one_error_line(capsys, code)
    assert "cannot write" in line


def test_a_negative_budget_is_bad_input(capsys, tmp_path: Path) -> None:
    code = main(["profile", "--device", "cpu", "--seq-len", "8", "--ops", "gelu", "--out", str(tmp_path),
                 "--budget", "-1", "--no-plots"])
    assert "budget" in assert_one_error_line(capsys, code)


def test_an_unknown_command_is_exit_2(capsys) -> None:
    assert "frobnicate" in assert_one_error_line(capsys, main(["frobnicate"]))


def test_nothing_measurable_is_exit_3(capsys, tmp_path: Path) -> None:
    # Only a CUDA-only variant: every row is skipped, the results are still saved.
    code = main(["profile", "--device", "cpu", "--seq-len", "8", "--ops", "attention",
                 "--variants", "sdpa_cudnn", "--out", str(tmp_path), "--no-plots"])
    out, err = capsys.readouterr()
    assert code == 3 and "Traceback" not in out + err
    assert err.splitlines()[-1].startswith("roofline: error: no op could be measured")
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["variant"], r["status"]) for r in rows] == [("sdpa_cudnn", "skipped")]


def test_profile_writes_results(cpu_profile) -> None:
    assert cpu_profile.exit_code == 0, cpu_profile.stderr
    assert "Traceback" not in cpu_profile.stderr
    assert (cpu_profile.out_dir / "results.csv").is_file()
    data = json.loads((cpu_profile.out_dir / "results.json").read_text())
    assert json.loads(cpu_profile.stdout) == data  # --json - prints exactly what was saved
    assert data["schema_version"] == SCHEMA_VERSION == 2


def test_profile_run_metadata(cpu_profile) -> None:
    run = json.loads((cpu_profile.out_dir / "results.json").read_text())["run"]
    assert "git_commit" in run and run["roofline_version"] == __version__
    assert run["command"].startswith("roofline profile --device cpu --seq-len 32")
    assert run["device"]["kind"] == "cpu" and run["device"]["name"]
    assert (run["config"]["name"], run["config"]["seq_len"], run["config"]["dtype"]) == ("gpt-7b", 32, "fp32")
    assert run["config"]["tokens"] == 32
    assert set(run["peaks"]) == {"datasheet", "measured"}
    measured = run["peaks"]["measured"]  # the CPU has no datasheet: its roofs are measured
    assert measured["memory_bandwidth"] > 0 and measured["peak_flops"]["vector.fp32"] > 0
    assert run["wall_s"] > 0


def test_profile_rows(cpu_profile, issue_columns: list[str]) -> None:
    rows = json.loads((cpu_profile.out_dir / "results.json").read_text())["rows"]
    for row in rows:
        assert set(issue_columns) <= set(row)
    by_variant = {(r["op"], r["variant"]): r for r in rows}
    assert set(by_variant) == {("layernorm", "torch"), ("qkv_proj", "torch"), ("softmax", "torch"),
                               ("softmax", "triton")}
    assert by_variant["softmax", "triton"]["status"] == "skipped" and by_variant["softmax", "triton"]["note"]
    c = make_config(seq_len=32, dtype="fp32")
    for name in ("layernorm", "qkv_proj", "softmax"):
        row = by_variant[name, "torch"]
        op = next(op for op in CATALOG if op.name == name)
        assert row["status"] == "ok", row["note"]
        assert (row["flops"], row["min_bytes"]) == (op.flops(c), op.min_bytes(c))
        assert (row["batch"], row["seq_len"], row["dtype"], row["mode"]) == (1, 32, "fp32", "prefill")
        # samples: a call longer than its budget takes 2 (LONG_CALL_BUDGETS)
        assert row["samples"] >= 2 and row["time_p20_s"] <= row["time_median_s"] <= row["time_p80_s"]
        assert row["flops_per_s"] == pytest.approx(row["flops"] / row["time_median_s"])
        assert row["bound"] in ("compute", "memory") and row["pct_of_roof"] > 0
        assert row["peak_mem_bytes"] is None  # only measured on CUDA
    assert by_variant["qkv_proj", "torch"]["bound"] == "compute"  # a 32×4096×12288 GEMM is right of the ridge
    assert by_variant["layernorm", "torch"]["bound"] == "memory"


def test_profile_csv_to_stdout(capsys, cpu_profile, tmp_path: Path, issue_columns: list[str]) -> None:
    code = main(["profile", "--device", "cpu", "--seq-len", "16", "--ops", "gelu", "--out", str(tmp_path),
                 "--budget", "0.02", "--no-plots", "--csv", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert set(issue_columns) <= set(table[0])
    assert [(r["op"], r["variant"], r["status"]) for r in table] == [("gelu", "torch", "ok")]


@pytest.mark.parametrize("model", ["gpt-7b", "llama3-8b", "qwen3-8b", "gemma-2-9b"])
def test_ops_lists_the_catalog(capsys, monkeypatch, model: str) -> None:
    monkeypatch.setenv("COLUMNS", "220")
    assert main(["ops", "--model", model]) == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"^│ (\w+)", out, flags=re.MULTILINE))
    assert listed == {op.name for op in ops_for(make_config(model))}


def test_ops_of_the_shipped_models_cover_every_op() -> None:
    models = ("gpt-7b", "llama3-8b", "mixtral-8x7b", "qwen3-8b", "gemma-2-9b")
    both = {op.name for m in models for op in ops_for(make_config(m))}
    assert both == {op.name for op in CATALOG}


def test_devices_cpu(capsys) -> None:
    assert main(["devices", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "kind" in out and "cpu" in out and "Roofs" in out


def test_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"roofline {__version__}"


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["profile", "-h"]])
def test_help(capsys, args: list[str]) -> None:
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: roofline")
    assert ("--seq-len" in out) if "profile" in args else all(c in out for c in ("profile", "ops", "devices"))
