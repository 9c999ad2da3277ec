"""Shared fixtures: a private ceilings cache, small odd block shapes, and one real CPU profile per session."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before roofline is imported anywhere: tests never read or write the user's ceilings cache.
if "ROOFLINE_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="roofline-test-cache-")
    os.environ["ROOFLINE_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

# A rank that waits for another (a dead or stuck rank) fails after this, well before gloo's default 300 s.
os.environ.setdefault("ROOFLINE_RANK_TIMEOUT_S", "90")

# Without a GPU our Triton kernels run under Triton's interpreter. TRITON_INTERPRET is read when a kernel is
# decorated, so it must be set before any test module imports roofline.kernels.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from roofline.config import BlockConfig, make_config  # noqa: E402
from roofline.measure.device import detect
from roofline.results import DeviceInfo  # noqa: E402

# Small and deliberately odd: 6 heads of 16 (GQA 6/2 for Llama-like models), FFN 160, 37 tokens, batch 2.
SMALL_SHAPE = {"d_model": 96, "n_heads": 6, "head_dim": 16, "ffn_dim": 160, "seq_len": 37, "batch": 2}
SMALL_KV_HEADS = {"gpt-7b": 6, "llama3-8b": 2, "mixtral-8x7b": 2}


@pytest.fixture(scope="session")
def small_config() -> Callable[..., BlockConfig]:
    """small_config(model, **overrides): the model preset at the small odd shape, fp32 unless overridden."""

    def make(model: str = "gpt-7b", **overrides: object) -> BlockConfig:
        values = {**SMALL_SHAPE, "n_kv_heads": SMALL_KV_HEADS[model], "dtype": "fp32", **overrides}
        return make_config(model, **values)

    return make


@pytest.fixture(scope="session")
def issue_columns() -> list[str]:
    """The columns issue #3 asks every row to have (results.json, the CSV and the DataFrame)."""
    return ["op", "variant", "group", "fused", "batch", "seq_len", "dtype", "mode", "flops", "min_bytes",
            "intensity", "time_median_s", "time_p20_s", "time_p80_s", "samples", "flops_per_s", "bytes_per_s",
            "bound", "pct_of_roof", "peak_mem_bytes", "status", "note"]


@pytest.fixture(scope="session")
def cpu_info() -> DeviceInfo:
    return detect("cpu")


@dataclass
class CliRun:
    exit_code: int
    out_dir: Path
    stdout: str
    stderr: str


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """roofline.cli.main with stdout/stderr captured (for session fixtures, where capsys is not available)."""
    from roofline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def cpu_profile(tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """One real small profile on the CPU (calibrates once into the test cache), JSON also on stdout."""
    out_dir = tmp_path_factory.mktemp("cpu-profile")
    code, stdout, stderr = run_cli(["profile", "--device", "cpu", "--seq-len", "32", "--ops",
                                    "layernorm,qkv_proj,softmax", "--out", str(out_dir), "--budget", "0.05",
                                    "--no-plots", "--json", "-"])
    return CliRun(code, out_dir, stdout, stderr)
