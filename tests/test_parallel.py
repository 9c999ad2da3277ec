"""Tensor parallelism on the CPU: gloo, 2 processes, small sizes.

Sharded shapes and formulas; the sharded block (column-parallel QKV and FFN-up, row-parallel output and
FFN-down projections, each followed by an all-reduce) equals the whole block; merged results; `profile --tp 2`
end to end; the interconnect calibration; `tp-scaling`; bad --tp is one line and exit 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from roofline import parallel, results
from roofline.cli import main
from roofline.config import make_config
from roofline.errors import CannotRun, RooflineError
from roofline.ops import comm, get_op, ops_for
from roofline.results import Results, Row
from roofline.tp_scaling import block_split, scaling

# The small block: d_model 64, 4 heads (2 KV heads here), FFN 128; written as a model .toml for the CLI.
TINY = {"name": "tiny", "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "ffn_dim": 128}
PROFILE = ["--device", "cpu", "--seq-len", "16", "--budget", "0.02", "--no-plots"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(TP=1 folder, TP=2 folder): the tiny block profiled on one CPU process, then on two gloo ranks."""
    root = tmp_path_factory.mktemp("tp")
    (root / "tiny.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items()))
    base, tp2 = root / "tp1", root / "tp2"
    model = ["--model", str(root / "tiny.toml")]
    assert main(["profile", *PROFILE, *model, "--out", str(base)]) == 0
    assert main(["profile", "--tp", "2", *PROFILE, *model, "--out", str(tp2)]) == 0
    return base, tp2


# --- shapes and formulas -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "tp"), [("gpt-7b", 2), ("gpt-7b", 4), ("llama3-8b", 8)])
def test_shard_divides_heads_and_widths(model: str, tp: int) -> None:
    full = make_config(model, seq_len=64)
    shard = full.shard(tp)
    assert (shard.n_heads, shard.n_kv_heads, shard.ffn_dim, shard.tp) == (
        full.n_heads // tp, full.n_kv_heads // tp, full.ffn_dim // tp, tp)
    assert (shard.d_model, shard.tokens, shard.head_dim) == (full.d_model, full.tokens, full.head_dim)
    for name in ("qkv_proj", "out_proj", "ffn_up", "ffn_down", "qk_t", "softmax", "attention"):
        assert get_op(name).flops(shard) * tp == get_op(name).flops(full), name  # split work
    for name in ("residual_add", "dropout", full.norm):
        assert get_op(name).flops(shard) == get_op(name).flops(full), name  # replicated work


def test_comm_formulas_follow_nccl_tests() -> None:
    c = make_config("gpt-7b", seq_len=64, dtype="bf16").shard(4)
    elements = 64 * 4096
    ar, ag, rs = (comm.COLLECTIVES[k] for k in ("all_reduce", "all_gather", "reduce_scatter"))
    assert (ar.flops(c), ar.min_bytes(c)) == (3 * elements // 4, 2 * 3 * elements * 2 // 4)
    assert (ag.flops(c), ag.min_bytes(c)) == (0, 3 * elements * 2 // 4)
    assert (rs.flops(c), rs.min_bytes(c)) == (3 * elements // 4, 3 * elements * 2 // 4)
    fp8 = make_config("gpt-7b", seq_len=64, dtype="fp8").shard(4)  # fp8 projections write bf16
    assert ar.min_bytes(fp8) == ar.min_bytes(c)
    assert not any(op.applies(make_config("gpt-7b")) for op in comm.OPS)


def test_tp_plan_puts_the_all_reduces_after_their_projections() -> None:
    names = [op.name for op, _ in parallel.tp_plan(make_config("gpt-7b").shard(2))]
    assert names[names.index("out_proj") + 1] == "allreduce_out_proj"
    assert names[-1] == "allreduce_ffn_down" and names[-2] == "ffn_down"
    assert [op.name for op, _ in parallel.tp_plan(make_config("mixtral-8x7b").shard(2))][-1] == "allreduce_ffn_down"
    only = parallel.tp_plan(make_config("gpt-7b").shard(2), ["allreduce_ffn_down", "gelu"])
    assert [op.name for op, _ in only] == ["gelu", "allreduce_ffn_down"]
    assert {op.name for op, _ in parallel.tp_plan(make_config("gpt-7b"))} == {op.name for op in ops_for(
        make_config("gpt-7b"))}


@pytest.mark.parametrize("tp", [3, 0, -2])
def test_bad_tp_is_rejected(tp: int) -> None:
    with pytest.raises(RooflineError, match="--tp"):
        make_config("gpt-7b").shard(tp)


@pytest.mark.parametrize(("args", "needle"), [(["--tp", "3"], "n_heads (32)"), (["--tp", "0"], "--tp"),
                                              (["--tp", "2", "--device", "cpu", "--counters"], "--counters"),
                                              (["--tp", "2", "--device", "cpu", "--ops", "nope"], "nope")])
def test_bad_tp_on_the_command_line_is_one_line_and_exit_2(capsys, args: list[str], needle: str) -> None:
    code = main(["profile", "--device", "cpu", *args])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err, err
    assert lines[0].startswith("roofline: error:") and needle in lines[0]


# --- the sharded block equals the whole block ----------------------------------------------------------------

BLOCKS = [dict(activation="gelu", norm="layernorm", n_kv_heads=4, causal=False),
          dict(activation="swiglu", norm="rmsnorm", n_kv_heads=2, causal=True)]


def sharded_block_errors(seed: int) -> list[float]:
    """In each rank: max |sharded − whole| / max |whole| of every block in BLOCKS (run with parallel.launch)."""
    from roofline.ops.ffn import up_width

    parallel.start_rank("cpu")
    rank, n = dist.get_rank(), dist.get_world_size()
    errors = []
    for overrides in BLOCKS:
        c = make_config("gpt-7b", **{**TINY, **overrides}, seq_len=16, batch=2, dtype="fp32")
        gen = torch.Generator().manual_seed(seed)
        shapes = {"qkv": (c.qkv_dim, c.d_model), "out": (c.d_model, c.attn_dim), "up": (up_width(c), c.d_model),
                  "down": (c.d_model, c.ffn_dim)}
        w = {k: torch.randn(s, generator=gen) * s[1] ** -0.5 for k, s in shapes.items()}
        x = torch.randn((c.batch, c.seq_len, c.d_model), generator=gen)
        whole = parallel.block_forward(x, w, c)

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        sharded = parallel.block_forward(x, parallel.shard_weights(w, c, n, rank), c.shard(n), all_reduce)
        errors.append(float((sharded - whole).abs().max() / whole.abs().max()))
    dist.destroy_process_group()
    return errors


def test_sharded_block_equals_the_whole_block() -> None:
    errors = parallel.launch(2, sharded_block_errors, 0)
    assert set(errors) == {0, 1}
    assert all(e <= 1e-5 for rank_errors in errors.values() for e in rank_errors), errors


def failing_rank() -> None:
    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
        raise ValueError("boom")


def test_a_failing_rank_is_one_line() -> None:
    with pytest.raises(CannotRun, match="rank 0 of 1 failed: ValueError: boom"):  # one process: cheaper
        parallel.launch(1, failing_rank)


# --- merged results ------------------------------------------------------------------------------------------

def row(rank: int, time_s: float, status: str = "ok", note: str = "", mem: int | None = None) -> Row:
    return Row(op="qkv_proj", variant="torch", group="attention", fused=False, unit="tensor", model="m", batch=1,
               seq_len=8, q_len=8, kv_len=8, dtype="fp32", mode="prefill", per_block=1, flops=1.0, min_bytes=1.0,
               intensity=1.0, status=status, note=note, time_median_s=time_s, rank=rank, peak_mem_bytes=mem)


def test_merge_puts_the_slowest_rank_first() -> None:
    top, *ranks = parallel.merge([row(0, 2.0, mem=5), row(1, 3.0, mem=4)])
    assert (top.rank, top.time_median_s, top.peak_mem_bytes) == (None, 3.0, 5)
    assert "max over 2 ranks (slowest: rank 1)" in top.note and [r.rank for r in ranks] == [0, 1]
    top = parallel.merge([row(0, 2.0), row(1, None, "failed", "wrong result")])[0]  # type: ignore[arg-type]
    assert (top.status, top.note) == ("failed", "rank 1: wrong result")
    top = parallel.merge([row(0, None, "skipped", "no GPU"), row(1, None, "skipped", "no GPU")])[0]  # type: ignore
    assert (top.status, top.note) == ("skipped", "no GPU")


def test_profile_tp2_merges_both_ranks(tiny_runs: tuple[Path, Path]) -> None:
    res = results.load(tiny_runs[1])
    assert res.run["tp"] == 2 and res.run["backend"] == "gloo" and res.run["config"]["n_heads"] == 2
    by_key: dict[tuple[str, str], list[int | None]] = {}
    for r in res.rows:
        by_key.setdefault((r.op, r.variant), []).append(r.rank)
    assert all(ranks == [None, 0, 1] for ranks in by_key.values()), by_key
    assert ("allreduce_out_proj", "torch") in by_key and ("allreduce_ffn_down", "torch") in by_key
    for r in res.rows:
        if r.unit == "comm":
            assert r.status == "ok" and r.error is not None and r.error < 1e-6  # every rank got the sum
            assert r.ceiling == "comm.busbw" and r.peak_bytes_per_s and r.peak_bytes_per_s > 0
            assert r.flops == 16 * 64 // 2 and r.min_bytes == 2 * 16 * 64 * 4 // 2
    qkv = res.find("qkv_proj")
    assert qkv and qkv.rank is None and qkv.flops == 2 * 16 * 64 * (2 + 2 * 1) * 16  # 2 of 4 heads, 1 of 2 KV
    assert res.run["interconnect"]["collectives"]["all_reduce"]["busbw"] > 0
    split = block_split(res)
    assert split["comm"] > 0 and split["compute"] + split["memory"] > 0


# --- interconnect and scaling --------------------------------------------------------------------------------

def test_calibrate_interconnect_measures_and_caches(cpu_info) -> None:
    said: list[str] = []
    found = parallel.calibrate_interconnect(cpu_info, ranks=(2,), size_bytes=1 << 16, force=True,
                                           budget_s=0.05, say=said.append)
    link = found[2]["collectives"]
    assert set(link) == {"all_reduce", "all_gather", "reduce_scatter"}
    assert link["all_reduce"]["busbw"] == pytest.approx(link["all_reduce"]["algbw"])  # 2(n−1)/n = 1 at n = 2
    assert link["all_gather"]["busbw"] == pytest.approx(link["all_gather"]["algbw"] / 2)  # (n−1)/n
    assert json.loads(parallel.interconnect_path(cpu_info, 2).read_text()) == found[2]
    assert "all_reduce" in said[0]
    assert parallel.calibrate_interconnect(cpu_info, ranks=(2,)) == found  # cached: no launch


def test_scaling_efficiency(tiny_runs: tuple[Path, Path], tmp_path: Path) -> None:
    base, tp2 = (results.load(p) for p in tiny_runs)
    rows = {(s.op, s.variant): s for s in scaling(base, tp2)}
    qkv = rows["qkv_proj", "torch"]
    assert qkv.efficiency == pytest.approx(qkv.base_s / (2 * qkv.tp_s))
    assert ("allreduce_out_proj", "torch") not in rows and ("block", "") in rows
    block = rows["block", ""]
    assert block.tp_s == pytest.approx(sum(block_split(tp2).values()))
    with pytest.raises(RooflineError, match="TP=1"):
        scaling(tp2, base)
    other = Results(run={**base.run, "config": {**base.run["config"], "seq_len": 32}}, rows=base.rows)
    with pytest.raises(RooflineError, match="seq_len"):
        scaling(other, tp2)


def test_tp_scaling_command(capsys, tiny_runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["tp-scaling", str(tiny_runs[0] / "results.json"), str(tiny_runs[1] / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "TP=1 → TP=2" in out and "block" in out and "communication" in out
    assert main(["tp-scaling", str(tiny_runs[1]), str(tiny_runs[1] / "nope.json")]) == 2
