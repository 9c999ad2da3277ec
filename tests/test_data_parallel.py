"""Parallelism in train mode on the CPU (gloo, 2 processes, a tiny block): `profile --dp 2` (whole replicas plus
the gradients' all-reduce) and `profile --tp 2 --mode train` (each all-reduce row is the forward's and the
backward's conjugate one); the parameter count behind the gradients' all-reduce; TP × DP; bad combinations
(pipelines combined with both: test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_parallel import PROFILE, TINY

from roofline import results
from roofline.cli import main
from roofline.config import make_config
from roofline.errors import RooflineError
from roofline.ops import comm, get_op, ops_for
from roofline.ops.ffn import up_width


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, results.Results]:
    root = tmp_path_factory.mktemp("train-parallel")
    (root / "tiny.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items()))
    model = ["--model", str(root / "tiny.toml"), "--mode", "train", "--variants", "torch,eager,naive"]
    out = {}
    for name, flags in (("dp2", ["--dp", "2"]), ("tp2", ["--tp", "2"])):
        assert main(["profile", *flags, *PROFILE, *model, "--out", str(root / name)]) == 0
        out[name] = results.load(root / name)
    return out


@pytest.mark.parametrize("model", ["gpt-7b", "llama3-8b", "mixtral-8x7b"])
def test_parameter_rows_count_every_weight_of_the_block(model: str) -> None:
    c = make_config(model, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96)
    ffn = (up_width(c) + c.ffn_dim) * c.d_model
    ffn = c.n_experts * ffn + c.n_experts * c.d_model if c.n_experts else ffn  # experts and the router
    norms = (4 if c.norm == "layernorm" else 2) * c.d_model
    weights = c.qkv_dim * c.d_model + c.d_model * c.attn_dim + ffn + norms
    assert comm.GRADIENTS.elements(c) == weights


def test_the_gradients_all_reduce_is_an_op_of_data_parallel_training_only() -> None:
    train = make_config("gpt-7b", mode="train", dp=4)
    assert [op.name for op in ops_for(train)][-1] == "allreduce_grads"
    assert "allreduce_grads" not in [op.name for op in ops_for(train.replace(dp=1))]
    op = get_op("allreduce_grads")
    p = comm.GRADIENTS.elements(train)
    assert op.min_bytes(train) == 2 * 3 * p * 2 // 4 and op.flops(train) == 3 * p // 4  # bf16, n = 4
    assert op.step_flops(train) == op.flops(train)  # it is part of the backward already


@pytest.mark.parametrize("overrides, needle", [({"dp": 2}, "--dp needs --mode train"),
                                               ({"dp": 2, "pp": 2}, "--dp needs --mode train"),
                                               ({"dp": 0, "mode": "train"}, "dp must be a positive")])
def test_bad_data_parallel_configs(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(RooflineError, match=needle):
        make_config("gpt-7b", **overrides)


def test_tp_and_dp_combine() -> None:
    """TP × DP: each replica a TP shard; the gradients' all-reduce moves the shard's parameters over the DP group."""
    c = make_config("gpt-7b", mode="train", dp=2).shard(4)
    assert (c.tp, c.dp, c.ranks) == (4, 2, 8)
    names = [op.name for op in ops_for(c)]
    assert {"allreduce_out_proj", "allreduce_ffn_down", "allreduce_grads"} <= set(names)
    assert comm.GRADIENTS.elements(c) < comm.GRADIENTS.elements(c.replace(n_heads=32, n_kv_heads=32, ffn_dim=16384))


def test_dp_without_train_on_the_command_line_is_one_line_and_exit_2(capsys) -> None:
    assert main(["profile", "--dp", "2", *PROFILE]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--dp needs --mode train" in lines[0]


def test_profile_dp2_measures_whole_replicas_and_the_gradients_all_reduce(train_runs) -> None:
    res = train_runs["dp2"]
    assert (res.run.parallel.tp, res.run.parallel.dp, res.run.parallel.ranks) == (1, 2, 2)
    assert res.run.config.dp == 2 and res.run.config.n_heads == TINY["n_heads"]
    grads = [r for r in res.rows if r.op == "allreduce_grads"]
    assert [r.rank for r in grads] == [None, 0, 1]
    c = make_config("gpt-7b", **{k: v for k, v in TINY.items() if k != "name"}, mode="train", dp=2, dtype="fp32")
    for r in grads:
        assert r.status == "ok" and r.error < 1e-6, r.note  # each rank got the sum of both replicas' gradients
        assert r.min_bytes == comm.GRADIENTS.elements(c) * 4  # 2·(n−1)/n·P·4 bytes at n = 2
    qkv = res.find("qkv_proj")
    assert qkv and qkv.backward_time_s and qkv.grad_error is not None  # a whole replica, trained
    assert qkv.flops == 3 * 2 * 16 * TINY["d_model"] * (TINY["n_heads"] + 2 * TINY["n_kv_heads"]) * 16


def test_tp_all_reduce_rows_in_train_mode_are_forward_plus_backward(train_runs) -> None:
    res = train_runs["tp2"]
    rows = [r for r in res.rows if r.op.startswith("allreduce_") and r.rank is None]
    assert {r.op for r in rows} == {"allreduce_out_proj", "allreduce_ffn_down"}
    for r in rows:
        assert r.status == "ok" and r.error < 1e-6, r.note
        assert r.flops == 2 * (16 * TINY["d_model"] // 2)  # the forward's and the backward's reduction adds
        assert r.min_bytes == 2 * (2 * 16 * TINY["d_model"] * 4 // 2)


def test_every_rank_row_of_a_parallel_train_run_is_measured(train_runs) -> None:
    for name, res in train_runs.items():
        bad = [(r.op, r.variant, r.rank, r.note) for r in res.rows if r.status != "ok"]
        assert not bad, (name, bad)
        assert Path(res.run.command.split("--out ")[-1]).name == name


def test_committed_dp4_run_on_four_gpus() -> None:
    """The 4-GPU data-parallel training run: the gradients' all-reduce near the interconnect roof, labelled DP."""
    from roofline.analysis.scaling import split_line
    from roofline.results import Results

    res = results.load(Path(__file__).parent.parent / "reports/reference/h200x4/train/gpt-7b-train-s4096-dp4")
    top = Results(run=res.run, rows=[r for r in res.rows if r.rank is None])
    grads = top.find("allreduce_grads")
    assert grads and grads.min_bytes == 2 * 3 * comm.GRADIENTS.elements(make_config("gpt-7b")) * 2 // 4
    assert 0.5 < grads.pct_of_roof / 100 <= 1.05 and grads.ceiling == "comm.busbw"
    assert split_line(top).startswith("DP=4 block (slowest rank per op)")
