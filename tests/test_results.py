"""Results: JSON round trip of every field, NaN/inf as null, one-line load errors, atomic writes, views."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import pytest

from roofline import results
from roofline.errors import RooflineError
from roofline.results import (
    LEGACY_FUSION_GROUPS,
    REQUIRED_FIELDS,
    ROW_FIELDS,
    Ceilings,
    DeviceInfo,
    FusionGroup,
    Parallel,
    Peaks,
    Results,
    Row,
    Run,
    SweepGrid,
    TraceOp,
    atomic_write,
)

VIEW_COLUMNS = [name for name in ROW_FIELDS if name not in ("time_samples_s", "trace")]
# A trace row's record is spread over trace_* columns (its tensor ids, reads and writes, stay in the JSON).
TRACE_COLUMNS = [f"trace_{f.name}" for f in dataclasses.fields(TraceOp) if f.name not in ("reads", "writes")]


def distinct_row(seed: int = 0) -> Row:
    """A row whose every field holds a distinct non-default value, so a dropped or renamed field shows."""
    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(Row), start=seed):
        kind = str(f.type)
        if f.name == "trace":
            values[f.name] = TraceOp(index=i, aten_op=f"aten::op{i}", phase="backward", module=f"layers.{i}",
                                     module_class="Linear", functions=[f"f{i}"], source=f"m.py:{i}",
                                     kernels=[f"k{i}"], shapes=f"{i}×2", reads={str(i): i}, writes={str(i + 1): i},
                                     torch_flops=i + 0.5, flop_rule="torch", forward_index=i, node="MmBackward0")
        elif kind == "bool":
            values[f.name] = True
        elif kind.startswith("list"):
            values[f.name] = [i + 0.25, i + 0.75]
        elif kind.startswith("int"):
            values[f.name] = i + 1
        elif kind.startswith("float"):
            values[f.name] = i + 0.5
        else:
            values[f.name] = f"{f.name}-{i}"
    return Row(**values)  # type: ignore[arg-type]


RUN = Run(device=DeviceInfo(kind="cpu", name="Test CPU", peak_flops={"vector.fp32": 1.5e11}),
          command="roofline profile", fusion_groups=[FusionGroup("attention", ("qk_t", "softmax"), "attention")],
          peaks=Peaks({"tensor.bf16": 1e15}, 3e12, "a datasheet",
                      Ceilings(device="Test CPU", key="k", l2_bandwidth=2.0)),
          parallel=Parallel(tp=2, ranks=2, backend="gloo", interconnect={"ranks": 2}),
          sweep=SweepGrid([16, 32], ["fp32"]))


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = Results(run=RUN, rows=[distinct_row(0), distinct_row(100)])
    assert all(getattr(original.rows[0], name) != getattr(Row, name, None) for name in ROW_FIELDS)
    results.save(original, tmp_path)
    loaded = results.load(tmp_path / "results.json")
    assert loaded.rows == original.rows
    assert loaded.run == original.run


def test_round_trip_of_a_real_profile(cpu_profile, tmp_path: Path) -> None:
    measured = results.load(cpu_profile.out_dir)
    results.save(measured, tmp_path)
    again = results.load(tmp_path)
    assert again.rows == measured.rows and again.run == measured.run
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(
        (cpu_profile.out_dir / "results.json").read_text())


def strict_json(text: str) -> object:
    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_nan_and_inf_in_rows_are_stored_as_null(tmp_path: Path) -> None:
    row = dataclasses.replace(distinct_row(), error=math.inf, rel_err=math.nan, pct_of_roof=-math.inf,
                              time_samples_s=[1e-3, math.nan])
    results.save(Results(run=RUN, rows=[row]), tmp_path)
    data = strict_json((tmp_path / "results.json").read_text())
    assert data["rows"][0]["error"] is None and data["rows"][0]["time_samples_s"] == [1e-3, None]  # type: ignore
    loaded = results.load(tmp_path).rows[0]
    assert (loaded.error, loaded.rel_err, loaded.pct_of_roof) == (None, None, None)


def test_nan_in_run_metadata_is_stored_as_null() -> None:
    res = Results(run=Run(peaks=Peaks(measured=Ceilings(device="x", key="k", l2_bandwidth=math.nan))))
    assert strict_json(results.to_json_text(res))["run"]["peaks"]["measured"]["l2_bandwidth"] is None  # type: ignore


def valid_file() -> dict[str, object]:
    return json.loads(results.to_json_text(Results(run=RUN, rows=[distinct_row()])))


def without(data: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in data.items() if k != key}


def row_without_flops() -> dict[str, object]:
    data = valid_file()
    data["rows"] = [without(data["rows"][0], "flops")]  # type: ignore[index]
    return data


BAD_FILES = {
    "corrupt json": ('{"schema_version": 1, "rows": [', "not a valid results.json"),
    "not utf-8": (b"\xff\xfe\x00", "not a valid results.json"),
    "a list": ("[1, 2]", "no schema_version"),
    "no schema_version": (json.dumps(without(valid_file(), "schema_version")), "no schema_version"),
    "schema 0": (json.dumps({**valid_file(), "schema_version": 0}), "schema version 0"),
    "missing rows": (json.dumps(without(valid_file(), "rows")), "missing its 'run' or 'rows'"),
    "missing run": (json.dumps(without(valid_file(), "run")), "missing its 'run' or 'rows'"),
    "row missing flops": (json.dumps(row_without_flops()), "row 0 lacks flops"),
    "row not an object": (json.dumps({**valid_file(), "rows": [1]}), "row 0 is not an object"),
}


@pytest.mark.parametrize(("content", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_raise_one_line(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RooflineError, match=expected) as info:
        results.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("where", ["absent.json", "empty-folder"])
def test_missing_file_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(RooflineError, match="no results file") as info:
        results.load(tmp_path / where)
    assert "\n" not in str(info.value)


def test_a_row_with_unknown_extra_keys_still_loads(tmp_path: Path) -> None:
    data = valid_file()
    data["rows"][0]["from_the_future"] = 1  # type: ignore[index]
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert results.load(tmp_path).rows == [distinct_row()]


def test_required_fields_are_the_identity_and_formula_columns() -> None:
    assert {"op", "variant", "flops", "min_bytes", "intensity", "dtype", "mode"} <= set(REQUIRED_FIELDS)
    assert "time_median_s" not in REQUIRED_FIELDS  # a skipped row has no timing


def test_atomic_write_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "results.json"
    atomic_write(path, "first")
    atomic_write(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    atomic_write(path, "old")
    with pytest.raises(TypeError):
        atomic_write(path, object())  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_dataframe_and_csv_columns(issue_columns: list[str]) -> None:
    res = Results(run=RUN, rows=[distinct_row(), distinct_row(50)])
    assert list(res.to_dataframe().columns) == VIEW_COLUMNS + TRACE_COLUMNS
    with_samples = [name for name in ROW_FIELDS if name != "trace"]  # the samples where the row keeps them
    assert list(res.to_dataframe(with_samples=True).columns) == with_samples + TRACE_COLUMNS
    assert list(Results(run=RUN).to_dataframe().columns) == VIEW_COLUMNS
    profile_rows = Results(run=RUN, rows=[dataclasses.replace(distinct_row(), trace=None)])
    assert list(profile_rows.to_dataframe().columns) == VIEW_COLUMNS  # no trace_* columns in a profile's CSV
    table = list(csv.reader(io.StringIO(results.to_csv_text(res))))
    assert table[0] == VIEW_COLUMNS + TRACE_COLUMNS and len(table) == 3
    assert set(issue_columns) <= set(VIEW_COLUMNS)


def test_save_writes_json_and_csv_of_the_same_rows(tmp_path: Path) -> None:
    res = Results(run=RUN, rows=[distinct_row(), distinct_row(50)])
    results.save(res, tmp_path)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["op"] for r in rows] == [r.op for r in res.rows]


def test_find_and_ok_rows_ignore_failed_rows() -> None:
    ok = dataclasses.replace(distinct_row(), op="softmax", variant="torch", status="ok")
    failed = dataclasses.replace(ok, variant="triton", status="failed")
    res = Results(run=RUN, rows=[failed, ok])
    assert res.ok_rows() == [ok]
    assert res.find("softmax") is ok and res.find("softmax", "triton") is None


REFERENCE = Path(__file__).resolve().parents[1] / "reports" / "reference"


@pytest.mark.parametrize("path", sorted(REFERENCE.rglob("results.json")), ids=lambda p: str(p.relative_to(REFERENCE)))
def test_every_committed_results_file_loads_as_a_typed_run(path: Path) -> None:
    """Schema 1 files (every file measured before the typed record) load: their fusion groups are the catalog's of
    that time, their tp/dp/ranks/backend/interconnect become `parallel`."""
    res = results.load(path)
    raw = json.loads(path.read_text())["run"]
    assert res.run.device.name == raw["device"]["name"] and res.run.config.seq_len == raw["config"]["seq_len"]
    if "fusion_groups" not in raw:
        assert tuple(res.run.fusion_groups) == LEGACY_FUSION_GROUPS
        assert (res.run.parallel is not None) == ("tp" in raw)
        if "tp" in raw:
            assert res.run.parallel.tp == raw["tp"] and res.run.parallel.interconnect == raw.get("interconnect", {})


def test_a_schema_1_file_saves_as_schema_2_with_the_same_rows(tmp_path: Path) -> None:
    old = results.load(REFERENCE / "h200x4" / "gpt-7b-s8192-tp4")
    results.save(old, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema_version"] == 2 and data["run"]["parallel"]["tp"] == 4
    assert [g["chain"] for g in data["run"]["fusion_groups"]][1] == ["qk_t", "softmax", "attn_v"]
    assert results.load(tmp_path).rows == old.rows
