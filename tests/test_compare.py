"""`roofline compare`: alignment, verdicts from rounds (and from one round's samples), clocks, the gate, outputs,
exit codes, and the CI workflow file.

Real results only: the committed reference runs (reports/reference/**/results.json) — among them same-code pairs
measured on the H100 — and two CPU runs of five rounds made once per session. Modified copies (times scaled, a
row removed, metadata changed) are derived from those in tmp_path, never invented.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from roofline import cli
from roofline.analysis.compare import align, compare_files
from roofline.analysis.verdict import bootstrap_ratio_ci, exact_p, judge, mann_whitney
from roofline.render.markdown import compare_markdown
from roofline.results import load

REPO = Path(__file__).resolve().parents[1]
OPS = "layernorm,softmax,residual_add,gelu"


def reference_results() -> list[Path]:
    return sorted(REPO.glob("reports/reference/**/results.json"))


@pytest.fixture(scope="session")
def cpu_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real profiles of the same ops on this CPU, five rounds each (a few seconds each): the CI mode's
    rounds (three can never be significant)."""
    paths = []
    for name in ("run-a", "run-b"):
        out = tmp_path_factory.mktemp(name)
        argv = ["profile", "--device", "cpu", "--seq-len", "64", "--ops", OPS, "--out", str(out),
                "--no-plots", "--budget", "0.08", "--rounds", "5"]
        assert cli.main(argv) == 0
        paths.append(out / "results.json")
    return paths


@pytest.fixture(scope="session")
def real_files(request: pytest.FixtureRequest) -> list[Path]:
    """The committed GPU runs; a CPU run only when none is committed (CPU timings on a shared 2-core machine
    can be too noisy for the shifted-copy verdicts)."""
    return reference_results() or [request.getfixturevalue("cpu_runs")[0]]


def derived(src: Path, dst: Path, time_factor: float = 1.0, sample_factors: tuple[float, ...] = (),
            run_changes: dict[str, object] | None = None, drop_op: str | None = None,
            clock_factor: float = 1.0, roof_factor: float = 1.0) -> Path:
    """A copy of a real results.json with every time scaled (the rates and rounds with them), the sustained SM
    clock scaled, every roof scaled, or metadata changed."""
    data = json.loads(src.read_text())
    for row in data["rows"]:
        factors = sample_factors or (time_factor,)
        row["time_samples_s"] = [t * factors[i % len(factors)] for i, t in enumerate(row["time_samples_s"])]
        row["round_medians_s"] = [t * factors[i % len(factors)] for i, t in enumerate(row.get("round_medians_s", []))]
        if row.get("sm_clock_mhz"):
            row["sm_clock_mhz"] = int(row["sm_clock_mhz"] * clock_factor)
        for key in ("peak_flops_per_s", "peak_bytes_per_s", "attainable_flops_per_s"):
            if row.get(key) is not None:
                row[key] *= roof_factor

        for key in ("time_median_s", "time_p20_s", "time_p80_s"):
            if row[key] is not None:
                row[key] *= time_factor
        for key in ("flops_per_s", "bytes_per_s", "pct_of_roof"):
            if row[key] is not None:
                row[key] /= time_factor * (roof_factor if key == "pct_of_roof" else 1.0)
    data["rows"] = [r for r in data["rows"] if r["op"] != drop_op]
    for dotted, value in (run_changes or {}).items():
        *parents, leaf = dotted.split(".")
        target = data
        for p in parents:
            target = target[p]
        target[leaf] = value
    dst.write_text(json.dumps(data))
    return dst


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = cli.main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def verdicts(base: Path, new: Path) -> dict[tuple, str]:
    (c,) = compare_files([str(base), str(new)], 0.05)
    return {(r.base.op, r.base.variant): r.verdict.verdict for r in c.rows if r.ok}


# ---- the statistics, against hand-computed cases ----

def test_mann_whitney_separated_samples() -> None:
    # ranks of new = 4, 5, 6 → U = 15 − 3·4/2 = 9 (all 9 pairs slower); σ² = 3·3/12 · 7 = 5.25. Exact p: of the
    # C(6, 3) = 20 equally likely orderings, one has U = 9 and one U = 0: p = 2/20 (the normal approximation's
    # 0.0495 would let three rounds a side "prove" anything)
    t = mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t.u == 9
    assert t.z == pytest.approx(4.5 / math.sqrt(5.25))
    assert t.p == pytest.approx(0.1)
    swapped = mann_whitney([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert (swapped.u, swapped.z, swapped.p) == (0, -t.z, t.p)


@pytest.mark.parametrize(("n_base", "n_new"), [(3, 3), (5, 5), (4, 6), (2, 7)])
def test_mann_whitney_exact_p_counts_every_ordering(n_base: int, n_new: int) -> None:
    """The exact p against brute force: every way to place the new values among the sorted pooled values."""
    from itertools import combinations

    slots = range(n_base + n_new)
    us = [sum(1 for b in slots if b not in chosen for n in chosen if n > b) for chosen in combinations(slots, n_new)]
    for u in range(n_base * n_new + 1):
        tail = min(sum(x <= u for x in us), sum(x >= u for x in us))
        assert exact_p(n_base, n_new, u) == pytest.approx(min(1.0, 2 * tail / len(us)))
    separated = mann_whitney([float(b) for b in range(n_base)], [10.0 + i for i in range(n_new)])
    assert separated.p == pytest.approx(exact_p(n_base, n_new, n_base * n_new))


def test_mann_whitney_ties() -> None:
    # sorted 1, 2, 2, 2, 3, 4: the three 2s share rank 3; new = {2, 3, 4} → R = 3 + 5 + 6, U = 14 − 6 = 8
    # tie correction: σ² = 9/12 · (7 − (3³ − 3) / (6 · 5)) = 4.65
    t = mann_whitney([1.0, 2.0, 2.0], [2.0, 3.0, 4.0])
    assert t.u == 8
    assert t.z == pytest.approx(3.5 / math.sqrt(4.65))
    assert t.p == pytest.approx(math.erfc(3.5 / math.sqrt(4.65) / math.sqrt(2)))
    assert t.p == pytest.approx(0.1046, abs=1e-4)
    assert mann_whitney([2.0, 2.0], [2.0, 2.0, 2.0]).p == 1.0  # all tied: no evidence at all


def test_bootstrap_ratio_ci_small_cases() -> None:
    assert bootstrap_ratio_ci([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == (2.0, 2.0)
    # 3 samples: a resample's median is the smallest value with probability 7/27, so each extreme ratio
    # (1.2·1/3 and 1.2·3/1) has probability (7/27)² ≈ 6.7 % > 2.5 %: the 95 % CI is exactly [0.4, 3.6]
    low, high = bootstrap_ratio_ci([1.0, 2.0, 3.0], [1.2, 2.4, 3.6])
    assert (low, high) == (pytest.approx(0.4), pytest.approx(3.6))
    assert bootstrap_ratio_ci([1.0, 2.0, 3.0], [1.2, 2.4, 3.6]) == (low, high)  # fixed seed


def test_judge_rules_on_one_round_of_samples() -> None:
    base = [1.00, 1.01, 0.99, 1.02, 0.98, 1.00, 1.01]
    assert judge(base, [x * 1.2 for x in base], 0.05).verdict == "SLOWER"
    assert judge([x * 1.2 for x in base], base, 0.05).verdict == "FASTER"  # swapping swaps the verdict
    assert judge(base, base, 0.05).verdict == "SAME"
    assert judge(base, [x * 1.02 for x in base], 0.05).verdict == "SAME"  # real but below the threshold
    assert judge(base, [x * 1.2 for x in base], 0.25).verdict in ("SAME", "AMBIGUOUS")
    assert judge(base[:2], [x * 2 for x in base[:2]], 0.05).verdict == "AMBIGUOUS"  # < 3 samples
    noisy = judge(base, [0.8, 1.3, 0.9, 1.25, 1.1, 0.85, 1.2], 0.05)
    assert noisy.verdict == "AMBIGUOUS" and "not significant" in noisy.reason
    one_round = judge(base, [x * 1.2 for x in base], 0.05)
    assert not one_round.gates and "one round" in one_round.reason  # no gate acts on one run's samples


def test_judge_rules_on_rounds() -> None:
    """Rounds: a change must exceed the threshold AND the spread the rounds show (the op's noise floor)."""
    base = [1.00, 1.02, 0.99, 1.01, 1.00]  # 3 % spread
    slow = judge(base, [x * 1.10 for x in base], 0.05, rounds=True)
    assert slow.verdict == "SLOWER" and slow.gates and slow.noise == pytest.approx(0.0303, abs=1e-3)
    assert judge(base, [x * 1.04 for x in base], 0.05, rounds=True).verdict != "SLOWER"  # below the threshold
    wide = [1.00, 1.12, 0.99, 1.05, 1.00]  # 13 % spread: a 10 % shift cannot be told from it
    assert judge(wide, [x * 1.10 for x in wide], 0.05, rounds=True).verdict == "AMBIGUOUS"
    assert judge(base, [x * 1.10 for x in base], 0.05, rounds=True).p_value < 0.01
    assert judge(base[:2], base[:2], 0.05, rounds=True).verdict == "AMBIGUOUS"  # fewer than 3 rounds


def test_a_clock_drop_is_its_own_verdict() -> None:
    """10 % slower at a 10 % lower clock: the GPU ran slower, not the code; 10 % slower at the same clock is SLOWER."""
    base = [1.00, 1.01, 0.99, 1.00, 1.01]
    at_low_clock = judge(base, [x * 1.10 for x in base], 0.05, clock=1980 / 1800, rounds=True)
    assert at_low_clock.verdict == "SLOWER (clock)" and not at_low_clock.gates
    assert judge(base, [x * 1.10 for x in base], 0.05, clock=1.0, rounds=True).verdict == "SLOWER"
    assert judge(base, [x * 1.30 for x in base], 0.05, clock=1980 / 1800, rounds=True).verdict == "SLOWER"
    faster = judge([x * 1.10 for x in base], base, 0.05, clock=1800 / 1980, rounds=True)
    assert faster.verdict == "FASTER (clock)"


# ---- verdicts on real files ----

def test_cpu_runs_have_rounds(cpu_runs: list[Path]) -> None:
    for row in load(cpu_runs[0]).ok_rows():
        assert row.rounds == 5 and len(row.round_medians_s) == 5
        assert row.time_median_s == sorted(row.round_medians_s)[2]  # the median of the round medians
        assert row.samples == len(row.time_samples_s) >= 15


def test_a_real_slowdown_beyond_the_noise_is_slower_and_gates(cpu_runs: list[Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Every row 3× slower in every round: beyond any spread of this CPU's rounds, so SLOWER, and the gate trips."""
    base = cpu_runs[0]
    slow = derived(base, tmp_path / "slow.json", time_factor=3.0)
    (c,) = compare_files([str(base), str(slow)], 0.05)
    judged = [r for r in c.rows if r.ok and r.verdict.noise is not None and r.verdict.noise < 1.0]
    assert judged and all(r.verdict.verdict == "SLOWER" and r.verdict.gates for r in judged)
    code, out, err = run_cli(capsys, base, slow, "--fail-on", "slower")
    assert code == 1 and "SLOWER" in out and "SLOWER" in err
    assert run_cli(capsys, base, slow)[0] == 0  # --fail-on none is the default
    fast = derived(base, tmp_path / "fast.json", time_factor=1 / 3.0)
    assert {r.verdict.verdict for r in compare_files([str(base), str(fast)], 0.05)[0].rows if r.ok} <= {
        "FASTER", "AMBIGUOUS"}


def test_two_real_cpu_runs_of_the_same_code_do_not_gate(cpu_runs: list[Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (c,) = compare_files([str(p) for p in cpu_runs], 0.05)
    assert [r.base.key for r in c.rows] == [r.key for r in load(cpu_runs[0]).rows]
    assert not c.only_in_base and not c.only_in_new and not c.slower
    assert all(r.verdict.rounds for r in c.rows if r.ok)
    code, out, _ = run_cli(capsys, *cpu_runs, "--fail-on", "slower")
    assert code == 0 and "geomean speedup" in out


AA_HISTORY = sorted((REPO / "reports/reference/h100/aa-history").glob("*"))


@pytest.mark.parametrize("pair", AA_HISTORY, ids=lambda p: p.name)
def test_one_round_same_code_pairs_never_gate(pair: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The H100's committed same-code pairs of one round each: their pooled samples call rows SLOWER that only the
    GPU's clock moved (why a gate needs rounds); `--fail-on slower` must not trip on them, and says why."""
    base, new = pair / "gpt-7b-s8192" / "results.json", pair / "gpt-7b-s8192-aa" / "results.json"
    code, _, err = run_cli(capsys, base, new, "--fail-on", "slower")
    assert code == 0 and "one round each" in err


def test_a_slowdown_the_clock_explains_is_not_a_regression(tmp_path: Path) -> None:
    """A real H100 run, copied 15 % slower at a 15 % lower sustained SM clock: compute-bound rows are SLOWER
    (clock), memory-bound ones (whose time does not follow the SM clock) SLOWER."""
    base = REPO / "reports/reference/h100/gpt-7b-s8192/results.json"
    slow = derived(base, tmp_path / "clock.json", time_factor=1.15, clock_factor=1 / 1.15)
    (c,) = compare_files([str(base), str(slow)], 0.05)
    by_bound = {b: {r.verdict.verdict for r in c.rows if r.ok and r.bound == b and r.verdict.p_value < 0.05}
                for b in ("compute", "memory")}
    assert by_bound["compute"] == {"SLOWER (clock)"} and "SLOWER" in by_bound["memory"]
    assert not [r for r in c.slower if r.bound == "compute"]


def test_gating_on_percent_of_roof_forgives_a_lower_roof(cpu_runs: list[Path], tmp_path: Path) -> None:
    """Twice the time on a device whose roofs are half as high: slower in time, the same % of its own roof."""
    base = cpu_runs[0]
    other = derived(base, tmp_path / "half.json", time_factor=2.0, roof_factor=0.5)
    (by_time,) = compare_files([str(base), str(other)], 0.05)
    (by_roof,) = compare_files([str(base), str(other)], 0.05, "roof")
    assert any(r.verdict.verdict == "SLOWER" for r in by_time.rows)
    assert not by_roof.slower and {r.verdict.verdict for r in by_roof.rows if r.ok} <= {"SAME", "AMBIGUOUS"}


def test_different_work_is_refused(cpu_runs: list[Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    for change, words in (({"run.config.tp": 4}, "tp 1 vs 4"), ({"run.config.causal": False}, "causal")):
        other = derived(cpu_runs[0], tmp_path / "w.json", run_changes=change)
        code, _, err = run_cli(capsys, cpu_runs[0], other)
        assert code == 2 and "different work" in err and words in err


def test_rows_in_only_one_file_are_listed(cpu_runs: list[Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = cpu_runs[0]
    fewer = derived(base, tmp_path / "fewer.json", drop_op="gelu")
    (c,) = compare_files([str(base), str(fewer)], 0.05)
    assert [r.op for r in c.only_in_base] == ["gelu"] and not c.only_in_new
    assert "gelu" not in {r.base.op for r in c.rows}
    (back,) = compare_files([str(fewer), str(base)], 0.05)
    assert [r.op for r in back.only_in_new] == ["gelu"]
    code, out, _ = run_cli(capsys, base, fewer)
    assert code == 0 and "only in new" not in out
    assert "only in base: gelu · torch (b1 s64 fp32 prefill)" in out
    assert "<details><summary>1 rows in only one file</summary>" in compare_markdown([c])


def test_more_than_two_files_compare_each_to_the_first(cpu_runs: list[Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    slow = derived(cpu_runs[0], tmp_path / "slow.json", time_factor=3.0)
    cs = compare_files([str(cpu_runs[0]), str(cpu_runs[1]), str(slow)], 0.05)
    assert [c.new_path for c in cs] == [str(cpu_runs[1]), str(slow)]
    assert not cs[0].slower and cs[1].slower
    assert run_cli(capsys, cpu_runs[0], cpu_runs[1], slow, "--fail-on", "slower")[0] == 1


def test_cross_device_gates_with_a_note(cpu_runs: list[Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = derived(cpu_runs[0], tmp_path / "other.json", time_factor=3.0,
                    run_changes={"run.device.name": "Another CPU"})
    code, _, err = run_cli(capsys, cpu_runs[0], other)
    assert code == 0 and "different devices" in err
    code, _, err = run_cli(capsys, cpu_runs[0], other, "--fail-on", "slower")
    assert code == 1 and "gating anyway" in err


def test_reference_runs_across_devices_are_informational(capsys: pytest.CaptureFixture[str]) -> None:
    """H100 vs H200 of the same run (same folder name under each device): exit 0 by default, with a note."""
    pairs = [(REPO / "reports/reference/h100" / run / "results.json", REPO / "reports/reference/h200" / run /
              "results.json") for run in ("gpt-7b-s2048", "gpt-7b-s8192")]
    for base, new in pairs:
        code, out, err = run_cli(capsys, base, new)
        assert code == 0 and "geomean speedup" in out and "different devices" in err


# ---- outputs ----

def test_markdown_json_png_html(cpu_runs: list[Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    md, js, png, html = (tmp_path / n for n in ("summary.md", "cmp.json", "cmp.png", "cmp.html"))
    code, out, _ = run_cli(capsys, *cpu_runs, "--markdown", md, "--json", js, "--png", png, "--html", html)
    assert code == 0
    text = md.read_text()
    header = ("| op | variant | base time | new time | speedup | verdict | noise | % roof base | % roof new "
              "| why |")
    assert header in text
    ok_ops = {r.op for r in load(cpu_runs[0]).ok_rows()}
    for op in ok_ops:
        assert f"| {op} | " in text
    data = json.loads(js.read_text())
    assert data["threshold"] == 0.05 and {r["op"] for r in data["comparisons"][0]["rows"]} >= ok_ops
    assert png.read_bytes().startswith(b"\x89PNG")
    page = html.read_text()
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    code, out, _ = run_cli(capsys, *cpu_runs, "--json", "-")
    assert code == 0 and json.loads(out)["comparisons"][0]["model"] == "gpt-7b"  # data only on stdout


# ---- bad input: exit 2 and one line ----

def second_file(case: str, base: Path, tmp_path: Path) -> Path:
    """The NEW file of each bad-input case, derived from a real run."""
    if case == "other model":
        return derived(base, tmp_path / "m.json", run_changes={"run.config.name": "llama3-8b"})
    if case == "other schema":
        return derived(base, tmp_path / "s.json", run_changes={"schema_version": 3})
    if case == "corrupt":
        (tmp_path / "c.json").write_text("{not json")
        return tmp_path / "c.json"
    if case == "nothing in common":
        data = json.loads(base.read_text())
        for row in data["rows"]:
            row["seq_len"] *= 2
        (tmp_path / "n.json").write_text(json.dumps(data))
        return tmp_path / "n.json"
    return tmp_path / "missing.json"


@pytest.mark.parametrize("case", ["one file", "threshold", "other model", "other schema", "missing",
                                  "corrupt", "nothing in common"])
def test_bad_input_exits_2(case: str, cpu_runs: list[Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    base = cpu_runs[0]
    args: list[object] = {"one file": [base], "threshold": [base, base, "--threshold", "5"]}.get(
        case, [base, second_file(case, base, tmp_path)])
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (case, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("roofline: error:"), err
    assert out == ""


def test_align_keeps_the_first_of_repeated_keys(cpu_runs: list[Path]) -> None:
    res = load(cpu_runs[0])
    res.rows.append(res.rows[0])
    c = align("a", "b", res, res, 0.05)
    assert len(c.rows) == len({r.key for r in res.rows})


# ---- the CI workflow ----

def test_workflow_is_valid_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    flow = yaml.safe_load((REPO / ".github/workflows/roofline.yml").read_text())
    job = next(iter(flow["jobs"].values()))
    assert job["runs-on"] == ["self-hosted", "gpu"]
    steps = job["steps"]
    commands = "\n".join(s.get("run", "") for s in steps)
    assert "pip install -e ." in commands and "--rounds 5" in commands
    gate = next(s["run"] for s in steps if "--fail-on slower" in s.get("run", ""))
    assert "reports/ci/base/results.json reports/ci/new/results.json" in gate and "$GITHUB_STEP_SUMMARY" in gate
    named = {s.get("name"): s.get("run", "") for s in steps}
    base, new = named["Profile the base"], named["Profile the change"]
    assert base.split("profile", 1)[1].split("--out")[0] == new.split("profile", 1)[1].split("--out")[0]  # same mode
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/ci"
