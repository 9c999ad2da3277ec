"""Tensor parallelism on the CPU: gloo, 2 processes, small sizes.

Sharded shapes and formulas; the plan and `roofline ops --tp N` of a shard, all-reduces included; the sharded
block (column-parallel QKV and FFN-up, row-parallel output and FFN-down projections, each followed by an
all-reduce) equals the whole block; merged results; `profile --tp 2` end to end; the interconnect calibration;
`tp-scaling`; bad --tp is one line and exit 2; the HTML report of the committed 4×H200 runs (the block's
compute / memory / communication split, and the scaling efficiency when TP=1 is given with TP=N).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_report import REFERENCE_DIR, _parse

from roofline import fmt, results
from roofline.analysis.scaling import block_split, scaling, split_line
from roofline.cli import main
from roofline.config import make_config
from roofline.errors import CannotRun, RooflineError
from roofline.measure import interconnect, parallel, ranks
from roofline.ops import comm, get_op, ops_for, plan
from roofline.render import html as report
from roofline.render import report_context
from roofline.results import Results, Row

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


def test_plan_of_a_shard_puts_the_all_reduces_after_their_projections() -> None:
    """One plan for one device and for a shard: ops.plan adds the collectives only when config.tp > 1."""
    names = [op.name for op, _ in plan(make_config("gpt-7b").shard(2))]
    assert names[names.index("out_proj") + 1] == "allreduce_out_proj"
    assert names[-1] == "allreduce_ffn_down" and names[-2] == "ffn_down"
    assert [op.name for op, _ in plan(make_config("mixtral-8x7b").shard(2))][-2:] == ["moe_experts",
                                                                                      "allreduce_ffn_down"]
    only = plan(make_config("gpt-7b").shard(2), ["allreduce_ffn_down", "gelu"])
    assert [op.name for op, _ in only] == ["gelu", "allreduce_ffn_down"]
    assert not {op.unit for op, _ in plan(make_config("gpt-7b"))} & {"comm"}
    assert [op.name for op in ops_for(make_config("gpt-7b").shard(2)) if op.unit != "comm"] == [
        op.name for op in ops_for(make_config("gpt-7b"))]
    assert not plan(make_config("gpt-7b"), ["allreduce_out_proj"])  # known, but a single device has no all-reduce


def _ops_table(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """(exit code, op names in listed order, whole output) of `roofline ops ARGS`."""
    code = main(["ops", *args])
    out = capsys.readouterr().out
    return code, re.findall(r"^│ (\w+)", out, flags=re.MULTILINE), " ".join(out.split())


def test_ops_with_tp_lists_the_shard_and_its_all_reduces(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "220")
    code, names, out = _ops_table(capsys, "--tp", "2", "--seq-len", "2048", "--dtype", "bf16")
    assert code == 0
    assert names == [op.name for op in ops_for(make_config("gpt-7b", seq_len=2048).shard(2))]
    assert names[names.index("out_proj") + 1] == "allreduce_out_proj" and names[-1] == "allreduce_ffn_down"
    bus = 2 * (2 - 1) * 2048 * 4096 * 2 // 2  # 2·(n − 1)·M·out_bytes/n, M = T·d, n = 2, bf16
    adds = (2 - 1) * 2048 * 4096 // 2
    for name in ("allreduce_out_proj", "allreduce_ffn_down"):
        row = re.search(rf"│ {name} │ comm │ ([^│]+) │ ([^│]+) │", out)
        assert row and row.groups() == (fmt.flops(adds), fmt.nbytes(bus) + " bus"), name
    assert "16 of 32 heads" in out and "2·(n − 1)·M·out_bytes/n" in out and "NCCL bus bytes" in out
    qkv = re.search(r"│ qkv_proj │ tensor │ ([^│]+) │", out)
    assert qkv and qkv.group(1).strip() == fmt.flops(2 * 2048 * 4096 * 3 * 4096 // 2)  # half the heads per rank

    code, names, out = _ops_table(capsys)
    assert code == 0 and not [n for n in names if n.startswith("allreduce")]
    assert "Collectives" in out and "--tp N" in out


@pytest.mark.parametrize(("tp", "needle"), [("3", "must divide n_heads (32)"), ("0", "positive integer"),
                                            ("-2", "positive integer")])
def test_ops_with_a_bad_tp_is_one_line_and_exit_2(capsys, tp: str, needle: str) -> None:
    code = main(["ops", "--tp", tp])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err, err
    assert lines[0].startswith("roofline: error:") and needle in lines[0]


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

    ranks.start_rank("cpu")
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
    errors = ranks.launch(2, sharded_block_errors, 0)
    assert set(errors) == {0, 1}
    assert all(e <= 1e-5 for rank_errors in errors.values() for e in rank_errors), errors


def failing_rank() -> None:
    if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1:
        raise ValueError("boom")


def test_a_failing_rank_is_one_line() -> None:
    with pytest.raises(CannotRun, match="rank 0 of 1 failed: ValueError: boom"):  # one process: cheaper
        ranks.launch(1, failing_rank)


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
    assert res.run.parallel.tp == 2 and res.run.parallel.backend == "gloo" and res.run.config.n_heads == 2
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
    assert res.run.parallel.interconnect["collectives"]["all_reduce"]["busbw"] > 0
    split = block_split(res)
    assert split["comm"] > 0 and split["compute"] + split["memory"] > 0


# --- interconnect and scaling --------------------------------------------------------------------------------

def test_calibrate_interconnect_measures_and_caches(cpu_info) -> None:
    said: list[str] = []
    found = interconnect.calibrate_interconnect(cpu_info, ranks=(2,), size_bytes=1 << 16, force=True,
                                           budget_s=0.05, say=said.append)
    link = found[2]["collectives"]
    assert set(link) == {"all_reduce", "all_gather", "reduce_scatter", "p2p"}
    assert link["p2p"]["busbw"] == pytest.approx(link["p2p"]["algbw"])  # one way over one link: no factor
    assert link["p2p"]["busbw"] > 0
    assert link["all_reduce"]["busbw"] == pytest.approx(link["all_reduce"]["algbw"])  # 2(n−1)/n = 1 at n = 2
    assert link["all_gather"]["busbw"] == pytest.approx(link["all_gather"]["algbw"] / 2)  # (n−1)/n
    assert json.loads(interconnect.interconnect_path(cpu_info, 2).read_text()) == found[2]
    assert "all_reduce" in said[0]
    assert interconnect.calibrate_interconnect(cpu_info, ranks=(2,)) == found  # cached: no launch


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
    other = Results(run=dataclasses.replace(base.run, config=base.run.config.replace(seq_len=32)), rows=base.rows)
    with pytest.raises(RooflineError, match="seq_len"):
        scaling(other, tp2)


def test_tp_scaling_command(capsys, tiny_runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["tp-scaling", str(tiny_runs[0] / "results.json"), str(tiny_runs[1] / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "TP=1 → TP=2" in out and "block" in out and "communication" in out
    assert main(["tp-scaling", str(tiny_runs[1]), str(tiny_runs[1] / "nope.json")]) == 2


# --- the report of the committed 4×H200 runs (TP=1, 2, 4 of one gpt-7b block) ----------------------------

H200X4 = REFERENCE_DIR / "h200x4"


@pytest.fixture(scope="module")
def tp_runs() -> dict[int, Results]:
    paths = {n: H200X4 / f"gpt-7b-s8192-tp{n}" / "results.json" for n in (1, 2, 4)}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip("the committed 4×H200 TP runs are not in this checkout")
    return {n: results.load(p) for n, p in paths.items()}


def _printed(name: str, prefix: str) -> str:
    """The line starting with `prefix` that the tool printed when it measured the run (committed stdout)."""
    lines = (H200X4 / name).read_text().splitlines()
    return next(line.strip() for line in lines if line.strip().startswith(prefix))


def test_tp_block_split_sums_to_the_block_total(tp_runs: dict[int, Results]) -> None:
    """Compute-bound + memory-bound + communication = the block; communication = the two all-reduces at their
    slowest rank; before fusion, the same split `profile --tp` printed when the run was measured."""
    for n, res in tp_runs.items():
        slowest = {}
        for r in res.rows:  # each op's first row: the max over ranks
            slowest.setdefault(r.op, r)
        chains = ("attention", "residual_dropout_norm")  # stand for qk_t → softmax → attn_v, dropout → add → norm
        plain = [r for op, r in slowest.items() if op not in chains]
        total = sum(r.time_median_s * r.per_block for r in plain)
        comm_s = sum(r.time_median_s for r in plain if r.op.startswith("allreduce"))
        compute = sum(r.time_median_s * r.per_block for r in plain if r.bound == "compute")
        before, after = report_context.block_split(res)
        assert before["total"] == fmt.seconds(total) and [p["kind"] for p in before["parts"]] == [
            "compute", "memory", "comm"]
        assert [p["time"] for p in before["parts"]] == [fmt.seconds(compute), fmt.seconds(total - compute - comm_s),
                                                        fmt.seconds(comm_s) if n > 1 else "0"]
        for block in (before, after):
            assert sum(p["pct"] for p in block["parts"]) == pytest.approx(100.0)
        assert after["parts"][2]["time"] == before["parts"][2]["time"]  # fusion leaves the all-reduces alone
        assert (n > 1) == (comm_s > 0)
        if n > 1:
            line = _printed(f"profile-tp{n}.stdout.txt", f"TP={n} block")
            assert split_line(res) == line and line.startswith(f"TP={n} block (slowest rank per op): {before['total']}")
            shares = line.split(": ", 1)[1].split(", ", 1)[1]  # '26 % compute-bound, 67 % memory-bound, 7 % comm…'
            html = report.report_html([res], {"roofline": "data:image/svg+xml;base64,", "time_split": ""})
            assert f"Unfused it takes {before['total']}: {shares}." in " ".join(html.split())
            rows = [cells for cells in _parse(html, "split").op_rows if cells]
            assert [" ".join(c.split()) for c in rows[0][:5]] == [
                "before fusion (each op at its baseline variant)", before["total"],
                *(f"{p['time']} · {p['pct']:.0f} %" for p in before["parts"])]


def test_report_of_tp1_with_tp_n_shows_the_scaling_efficiency(tp_runs: dict[int, Results], tmp_path: Path) -> None:
    """`roofline report tp1 tp2 tp4`: one row per (op, variant) and the block, each TP=N's efficiency
    time(TP=1) / (N·time(TP=N)) as tp_scaling computes it, and the block's as `tp-scaling` printed it."""
    files = [str(H200X4 / f"gpt-7b-s8192-tp{n}" / "results.json") for n in (1, 2, 4)]
    assert main(["report", *files, "--no-png", "--no-svg", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert 'href="#scaling"' in html and html.count('class="table-wrap split"') == 3  # every run's split
    table = {(cells[0], cells[1]): cells[2:] for cells in _parse(html, "scaling").op_rows if cells}
    for k, n in enumerate((2, 4)):
        found = scaling(tp_runs[1], tp_runs[n])
        assert {(s.op, s.variant) for s in found} <= set(table) and ("block", "") in table
        for s in found:
            base, *groups = table[s.op, s.variant]
            assert base == fmt.seconds(s.base_s)
            assert groups[3 * k: 3 * k + 3] == [fmt.seconds(s.tp_s), fmt.ratio(s.base_s / s.tp_s),
                                                fmt.pct(100 * s.base_s / (n * s.tp_s))]
        printed = _printed(f"scaling-tp{n}.stdout.txt", "│block").split("│")
        assert [c.strip() for c in printed[3:7]] == [table["block", ""][0], *table["block", ""][1 + 3 * k:4 + 3 * k]]


def test_scaling_needs_a_tp1_run_of_the_same_block(tp_runs: dict[int, Results]) -> None:
    """No TP=1 run, or a TP=1 run of another block: no scaling section (and no error: the runs still overlay)."""
    images = {"roofline": "", "time_split": ""}
    assert report_context.scaling_tables([tp_runs[2], tp_runs[4]]) == []
    assert 'id="scaling"' not in report.report_html([tp_runs[2], tp_runs[4]], images)
    other = Results(run=dataclasses.replace(tp_runs[1].run, config=tp_runs[1].run.config.replace(seq_len=4096)),
                    rows=tp_runs[1].rows)
    assert report_context.scaling_tables([other, tp_runs[2]]) == []
    assert [t["tps"] for t in report_context.scaling_tables([tp_runs[4], tp_runs[1], tp_runs[2]])] == [[4, 2]]
    assert report_context.run_context(tp_runs[1], "TP=1")["split"] == []  # one device alone: the summary says it
