"""Pipeline parallelism on the CPU (gloo, a tiny block) and parallel axes combined: `profile --pp 2`, `--tp 2 --pp 2`
and `--dp 2 --pp 2` end to end (one module fixture, three runs); the pipeline's output and input gradient equal the
unsplit stack of layers; the schedule's maths (theory, the simulated step against its closed forms); the rank layout
and process groups; the stage boundary's send/recv as a catalog op on its own roof; `roofline ops --tp 2 --pp 2`;
bad combinations are one line and exit 2; the terminal summary and the HTML report show the bubble.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from test_parallel import PROFILE, TINY

from roofline import results
from roofline.analysis import pipeline as pipe
from roofline.analysis.block import block_before
from roofline.analysis.placement import DP_ROOF, P2P_ROOF, Roofs
from roofline.cli import main
from roofline.config import make_config
from roofline.errors import RooflineError
from roofline.measure.groups import coordinates, groups_of
from roofline.ops import comm, describe, get_op, ops_for
from roofline.render import html as report
from roofline.render import report_context
from roofline.results import Results

LLAMA_TINY = {**TINY, "name": "tiny-llama", "activation": "swiglu", "norm": "rmsnorm", "causal": True}


def _model(root: Path, name: str, fields: dict[str, object]) -> list[str]:
    path = root / f"{name}.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    return ["--model", str(path)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Results]:
    """pp2: the tiny GPT block, prefill, 4 layers over 2 stages, 3 microbatches, every op; tp2pp2: a tiny Llama
    block (SwiGLU, RMSNorm, causal, GQA) trained over TP 2 × PP 2; dp2pp2: the tiny GPT block trained over DP 2 ×
    PP 2 (the last two measure a few ops only: the pipeline is what they are for)."""
    root = tmp_path_factory.mktemp("pp")
    gpt, llama = _model(root, "tiny", TINY), _model(root, "tiny-llama", LLAMA_TINY)
    train = ["--mode", "train", "--variants", "torch,eager,naive"]
    flags = {"pp2": [*gpt, "--pp", "2", "--layers", "4", "--microbatches", "3"],
             "tp2pp2": [*llama, *train, "--tp", "2", "--pp", "2", "--layers", "2", "--microbatches", "2",
                        "--ops", "qkv_proj,allreduce_out_proj,p2p_activation"],
             "dp2pp2": [*gpt, *train, "--dp", "2", "--pp", "2", "--layers", "2", "--microbatches", "2",
                        "--ops", "ffn_up,p2p_activation,allreduce_grads"]}
    out = {}
    for name, args in flags.items():
        assert main(["profile", *PROFILE, *args, "--out", str(root / name)]) == 0, name
        out[name] = results.load(root / name)
    return out


# --- the schedule's maths --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "m"), [(2, 1), (2, 8), (4, 4), (4, 16), (3, 2)])
def test_simulated_step_of_equal_stages_meets_the_closed_forms(n: int, m: int) -> None:
    f, b, t = 1.0, 2.0, 0.25
    forward = pipe.simulate([f] * n, None, t, m)
    assert forward.step_s == pytest.approx((m + n - 1) * f + (n - 1) * t)
    free = pipe.simulate([f] * n, [b] * n, 0.0, m)  # no transfer time: exactly the theory's bubble
    assert free.step_s == pytest.approx((m + n - 1) * (f + b))
    assert free.bubble == pytest.approx(pipe.theory_bubble(n, m)) == pytest.approx((n - 1) / (m + n - 1))
    sent = pipe.simulate([f] * n, [b] * n, t, m)  # the fill and drain cross 2(N − 1) boundaries, maybe more
    assert sent.step_s >= free.step_s + 2 * (n - 1) * t - 1e-12


def test_the_slowest_stage_sets_the_pace() -> None:
    """Unequal stages: the steady state runs at the slowest stage's pace, (M − 1)·slowest + the fill and drain."""
    fast, slow = pipe.simulate([1.0, 1.0], [1.0, 1.0], 0.0, 10), pipe.simulate([1.0, 3.0], [1.0, 3.0], 0.0, 10)
    assert slow.step_s == pytest.approx(9 * 6 + 2 + 6) and slow.step_s > fast.step_s == pytest.approx(22)
    assert slow.busy_s == [20.0, 60.0]


@pytest.mark.parametrize(("n", "m"), [(4, 2), (4, 8), (2, 3)])
def test_1f1b_order_runs_every_microbatch_once_each_way(n: int, m: int) -> None:
    for s in range(n):
        order = pipe.schedule(s, n, m, train=True)
        assert sorted(order) == sorted([("F", k) for k in range(m)] + [("B", k) for k in range(m)])
        warm = min(n - s - 1, m)
        assert order[:warm] == [("F", k) for k in range(warm)] and all(k == "B" for k, _ in order[len(order) - warm:])
        assert max(sum(1 if k == "F" else -1 for k, _ in order[:i]) for i in range(len(order) + 1)) <= min(n - s, m)


def test_transfers_of_a_stage() -> None:
    assert [pipe.transfers(s, 4, 8, False) for s in range(4)] == [8, 16, 16, 8]
    assert [pipe.transfers(s, 2, 8, True) for s in range(2)] == [16, 16]


# --- config, layout, ops --------------------------------------------------------------------------------------

def test_pipeline_defaults_and_stage_layers() -> None:
    c = make_config("gpt-7b", pp=4)
    assert (c.layers, c.microbatches, c.stage_layers, c.ranks) == (8, 16, 2, 4)
    c = make_config("gpt-7b", pp=2, layers=6, microbatches=3, dp=2, mode="train").shard(2)
    assert (c.stage_layers, c.ranks, c.tp, c.dp, c.pp) == (3, 8, 2, 2, 2)
    assert (make_config("gpt-7b").layers, make_config("gpt-7b").microbatches) == (1, 1)


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"pp": 4, "layers": 2}, "--pp 4 needs at least 4 layers"),
    ({"pp": 2, "layers": 3}, "must be a multiple of --pp 2"),
    ({"layers": 4}, "need --pp N"), ({"microbatches": 4}, "need --pp N"),
    ({"pp": 2, "microbatches": 0}, "microbatches must be a positive"),
    ({"pp": 0}, "pp must be a positive"),
    ({"pp": 2, "mode": "decode", "kv_cache_len": 64}, "prefill or train"),
    ({"pp": 2, "dtype": "fp8"}, "no fp8 path")])
def test_bad_pipeline_configs(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(RooflineError, match=re.escape(needle)):
        make_config("gpt-7b", **overrides)
    with pytest.raises(RooflineError, match="dense block"):
        make_config("mixtral-8x7b", pp=2)


def test_ranks_are_laid_out_tp_fastest_then_dp_then_pp() -> None:
    assert groups_of("tp", 2, 2, 2) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert groups_of("dp", 2, 2, 2) == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert groups_of("pp", 2, 2, 2) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert coordinates(5, 2, 2, 2) == {"tp": 1, "dp": 0, "pp": 1}
    for name in ("tp", "dp", "pp"):  # every rank in exactly one group of each axis
        assert sorted(r for g in groups_of(name, 2, 3, 2) for r in g) == list(range(12))


def test_p2p_activation_is_an_op_of_a_pipeline_on_its_own_roof() -> None:
    c = make_config("gpt-7b", seq_len=2048, dtype="bf16", pp=2)
    op = get_op("p2p_activation")
    assert op.flops(c) == 0 and op.min_bytes(c) == 2048 * 4096 * 2 and op.roof == P2P_ROOF
    assert op.step_bytes(c.replace(mode="train")) == 2 * op.min_bytes(c)  # the gradient comes back
    assert not op.applies(make_config("gpt-7b")) and op.applies(c)
    names = [o.name for o in ops_for(make_config("gpt-7b", mode="train", dp=2, pp=2).shard(2))]
    assert names[-3:] == ["allreduce_ffn_down", "p2p_activation", "allreduce_grads"]
    assert get_op("allreduce_grads").roof == DP_ROOF and comm.axis_of(get_op("allreduce_out_proj")) == "tp"
    roofs = Roofs({}, 1.0, {}, 0.0, interconnect_bandwidth=3.0, dp_bandwidth=2.0, p2p_bandwidth=1.0, p2p_source="x")
    assert roofs.bandwidth(P2P_ROOF) == (1.0, "x") and roofs.bandwidth(DP_ROOF)[0] == 2.0
    assert roofs.bandwidth("comm.busbw")[0] == 3.0


def test_ops_with_tp_and_pp_lists_one_ranks_stage(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "240")
    assert main(["ops", "--tp", "2", "--pp", "2", "--layers", "6"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^│ (\w+)(?: ×(\d+))? +│", out, flags=re.MULTILINE))
    c = make_config("gpt-7b", pp=2, layers=6).shard(2)
    assert list(rows) == [e["name"] for e in describe(c)]
    assert rows["qkv_proj"] == "3" and rows["layernorm"] == "6" and rows["p2p_activation"] == ""  # ×1: no mark
    assert rows["allreduce_out_proj"] == "3" and "PP=2, one rank's stage: 3 of 6 layers" in " ".join(out.split())


@pytest.mark.parametrize(("args", "needle"), [
    (["--pp", "3", "--layers", "4"], "must be a multiple of --pp 3"),
    (["--pp", "4", "--layers", "2"], "at least 4 layers"),
    (["--layers", "4"], "need --pp N"), (["--pp", "2", "--counters"], "--counters"),
    (["--pp", "2", "--model", "mixtral-8x7b"], "dense block")])
def test_bad_pipeline_on_the_command_line_is_one_line_and_exit_2(capsys, args: list[str], needle: str) -> None:
    code = main(["profile", "--device", "cpu", "--seq-len", "16", "--ops", "qkv_proj", "--budget", "0.01", *args])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err, err
    assert lines[0].startswith("roofline: error:") and needle in lines[0]


def test_a_launched_world_that_is_not_tp_dp_pp_is_one_line(capsys, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """Under an external launcher the world must be tp·dp·pp: said before any rank waits for another."""
    for name, value in {"MASTER_ADDR": "localhost", "MASTER_PORT": "1", "RANK": "0", "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    code = main(["profile", *PROFILE, "--pp", "2", "--out", str(tmp_path), "--ops", "qkv_proj"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the launcher started 3 ranks" in err[0] and "tp·dp·pp = 2" in err[0]


# --- the runs ------------------------------------------------------------------------------------------------

def test_pipeline_output_equals_the_unsplit_layers(runs: dict[str, Results]) -> None:
    """Microbatch 0 through the real pipeline against the unsplit stack (fp32): the output on the last stage, and
    in train mode the input gradient on stage 0, through the TP split too."""
    for name, res in runs.items():
        p = res.run.parallel.pipeline
        assert p is not None and p.error is not None and p.error <= 1e-5, (name, p)
    assert runs["tp2pp2"].run.parallel.pipeline.error > 0  # the TP split sums in another order: not trivially 0


def test_pipeline_record_of_each_run(runs: dict[str, Results]) -> None:
    for res in runs.values():
        c, par = res.run.config, res.run.parallel
        p = par.pipeline
        assert (par.pp, par.ranks, c.pp) == (2, c.tp * c.dp * 2, 2)
        assert (p.stages, p.layers, p.microbatches) == (2, c.layers, c.microbatches)
        assert p.schedule == ("1F1B" if c.mode == "train" else "forward")
        assert len(p.forward_s) == len(p.busy_s) == len(p.p2p_s) == 2 and min(p.forward_s + p.busy_s) > 0
        assert len(p.backward_s) == (2 if c.mode == "train" else 0)
        assert p.step_s and p.step_s >= max(p.busy_s) and len(p.step_samples_s) >= 2  # 2: a step past its budget
        assert p.transfer_s and p.transfer_s > 0 and par.links["pp"]["collectives"]["p2p"]["busbw"] > 0
        p2p = [r for r in res.rows if r.op == "p2p_activation"]
        assert [r.rank for r in p2p] == [None, *range(par.ranks)]
        for r in p2p:
            assert r.status == "ok" and r.error == 0 and r.ceiling == P2P_ROOF and r.peak_bytes_per_s, r.note
            assert r.min_bytes == 16 * 64 * 4 * (2 if c.mode == "train" else 1)


def test_collectives_run_on_their_own_groups(runs: dict[str, Results]) -> None:
    """TP × PP: each all-reduce sums its TP group's two partials (a wrong group sums four, or hangs); DP × PP: the
    gradients' all-reduce sums the DP group's two replicas, on the DP group's roof."""
    tp = runs["tp2pp2"]
    assert set(tp.run.parallel.links) == {"tp", "pp"} and tp.run.config.n_heads == 2
    ar = [r for r in tp.rows if r.op == "allreduce_out_proj"]
    assert [r.rank for r in ar] == [None, 0, 1, 2, 3] and all(r.status == "ok" and r.error < 1e-6 for r in ar)
    assert ar[0].ceiling == "comm.busbw"
    dp = runs["dp2pp2"]
    assert set(dp.run.parallel.links) == {"dp", "pp"}
    grads = [r for r in dp.rows if r.op == "allreduce_grads"]
    assert all(r.status == "ok" and r.error < 1e-6 and r.ceiling == DP_ROOF for r in grads), grads[0].note


def test_the_step_splits_into_compute_memory_communication_and_bubble(runs: dict[str, Results]) -> None:
    res = runs["pp2"]
    s = pipe.summarize(res)
    assert s is not None and list(s.split) == list(pipe.STEP_KINDS)
    assert sum(s.split.values()) == pytest.approx(s.step_s) and min(s.split.values()) >= 0
    assert s.theory == pytest.approx(1 / 4) and 0 <= s.bubble < 1 and s.from_stages_s and s.from_profile_s
    p = res.run.parallel.pipeline
    assert s.from_stages_s == pytest.approx(pipe.simulate(p.forward_s, None, p.transfer_s, 3).step_s)
    assert "p2p_activation" not in {o.op for o in block_before(res)}  # once per stage, not part of a block
    f, b = pipe.profile_stage(res, 2, train=False)
    assert b == 0 and f == pytest.approx(2 * sum(r.time_median_s * r.per_block for r in pipe.step_rows(res)))


def test_terminal_and_report_show_the_bubble(runs: dict[str, Results]) -> None:
    from rich.console import Console

    from roofline.render.table import print_results

    res = runs["tp2pp2"]
    console = Console(width=250, record=True)
    print_results(Results(run=res.run, rows=[r for r in res.rows if r.rank is None]), console)
    text = " ".join(console.export_text().split())
    s = pipe.summarize(res)
    assert "Pipeline: PP=2 1F1B step, 2 microbatches, 1 of 2 layers per stage" in text
    assert "% bubble (an average stage)" in text and f"{100 * s.theory:.0f} % in theory" in text
    assert "from the stages' times and sends" in text and "relative error" in text
    html = " ".join(report.report_html([res], {"roofline": "", "time_split": ""}).split())
    assert 'href="#pipeline"' in html and 'id="pipeline"' in html and "Bubble" in html
    assert f"4 × {res.run.device.name} ran 2 tiny-llama blocks as a 2-stage pipeline" in html


def test_the_model_reads_a_single_device_profile_given_beside_the_run(runs: dict[str, Results]) -> None:
    """`roofline report single.json pp.json`: the op profile of one device (here: the run's own rows, twice as slow,
    as a one-device results file) feeds the model instead of the run's rows."""
    res = runs["pp2"]
    rows = [dataclasses.replace(r, time_median_s=2 * r.time_median_s if r.time_median_s else None, rank=None)
            for r in res.rows if r.rank is None]
    single = Results(run=dataclasses.replace(res.run, config=res.run.config.replace(pp=1, layers=1, microbatches=1),
                                             parallel=None), rows=rows)
    own, given = pipe.summarize(res), pipe.summarize(res, single)
    p = res.run.parallel.pipeline
    f, _ = pipe.profile_stage(single, 2, train=False)
    assert given.from_profile_s == pytest.approx(pipe.simulate([f, f], None, p.transfer_s, 3).step_s)
    assert given.from_profile_s > own.from_profile_s and given.from_stages_s == own.from_stages_s
    sections = report_context.pipeline_sections([single, res])
    assert len(sections) == 1 and "from the op profile, tiny · prefill · batch 1" in " ".join(sections[0]["lines"])
