"""Results: one row per (op, variant, shape, dtype, mode) plus run metadata — the contract every later command reads.

results.json = {"schema_version": 1, "run": {...}, "rows": [...]}. JSON is the source of truth; the pandas
DataFrame and CSV are views of the rows. Files are written atomically (temp file, then rename) after every
row, so a crash loses nothing already measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from roofline.errors import RooflineError

SCHEMA_VERSION = 1


@dataclass
class Row:
    """One measured (or skipped, or failed) variant of one op."""

    op: str
    variant: str
    group: str
    fused: bool
    unit: str
    model: str
    batch: int
    seq_len: int
    q_len: int
    kv_len: int
    dtype: str
    mode: str
    per_block: int
    flops: float
    min_bytes: float
    intensity: float
    status: str = "ok"  # "ok" | "failed" | "skipped"
    note: str = ""
    time_median_s: float | None = None
    time_p20_s: float | None = None
    time_p80_s: float | None = None
    samples: int = 0
    rel_err: float | None = None  # relative standard error of the median
    stop_reason: str = ""
    flops_per_s: float | None = None
    bytes_per_s: float | None = None
    ceiling: str = ""  # which compute roof applies, e.g. "tensor.bf16"
    ceiling_source: str = ""  # "measured" | "datasheet"
    peak_flops_per_s: float | None = None
    peak_bytes_per_s: float | None = None
    attainable_flops_per_s: float | None = None
    floor_s: float | None = None  # the time the roof allows
    bound: str = ""  # "compute" | "memory"
    pct_of_roof: float | None = None
    peak_mem_bytes: int | None = None  # peak memory allocated by the op beyond its inputs
    error: float | None = None  # relative error against the float64 reference
    tolerance: float | None = None
    first_call_s: float | None = None  # compile / autotune / plan time, excluded from the timing
    measure_s: float | None = None  # wall time spent on this variant: inputs, check, timing
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    throttle: str = ""
    time_samples_s: list[float] = field(default_factory=list)
    host_time_s: float | None = None  # host time to launch one call; above time_median_s the op is host-bound
    # Hardware counters (`profile --counters`, counters.py): what the op's kernels did move and execute, summed.
    measured_dram_bytes: float | None = None  # DRAM read + write
    measured_dram_read_bytes: float | None = None
    measured_dram_write_bytes: float | None = None
    measured_l2_bytes: float | None = None  # L2 requests (reads + writes), bytes
    measured_l1_bytes: float | None = None  # L1/TEX requests, bytes
    measured_flops: float | None = None  # CUDA-core (FMA = 2) + tensor-core FLOPs executed
    measured_tensor_flops: float | None = None
    measured_kernels: int | None = None  # kernels the op launched
    # Train mode (train.py): time_* above time the whole step (forward + backward); flops and min_bytes count both.
    backward_flops: float | None = None
    backward_min_bytes: float | None = None
    backward_time_s: float | None = None  # median of the backward alone, over a kept forward's graph
    backward_samples: int = 0
    grad_error: float | None = None  # largest relative error of the input gradients vs the float64 reference
    saved_bytes: int | None = None  # tensors autograd keeps for the backward (one count per storage)
    saved_new_bytes: int | None = None  # of which not the op's inputs: the activation memory the op adds
    rank: int | None = None  # `profile --tp N`: the rank that measured the row; None for one device or the max

    @property
    def key(self) -> tuple[str, str, int, int, str, str]:
        """Identity used to align rows across runs (compare)."""
        return (self.op, self.variant, self.batch, self.seq_len, self.dtype, self.mode)


ROW_FIELDS = [f.name for f in dataclasses.fields(Row)]
REQUIRED_FIELDS = [f.name for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]


@dataclass
class Results:
    run: dict[str, object]
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"schema_version": SCHEMA_VERSION, "run": _clean(self.run),
                "rows": [_clean(dataclasses.asdict(r)) for r in self.rows]}

    def to_dataframe(self, with_samples: bool = False) -> pd.DataFrame:
        df = pd.DataFrame([dataclasses.asdict(r) for r in self.rows], columns=ROW_FIELDS)
        return df if with_samples else df.drop(columns=["time_samples_s"])

    def ok_rows(self) -> list[Row]:
        return [r for r in self.rows if r.status == "ok"]

    def find(self, op: str, variant: str | None = None) -> Row | None:
        for r in self.rows:
            if r.op == op and (variant is None or r.variant == variant) and r.status == "ok":
                return r
        return None


def _clean(value: object) -> object:
    """JSON has no NaN/inf: store them as null (a failed check's error of inf reads as 'not finite')."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write text (as UTF-8) or bytes to a temp file in the same folder, then rename: readers never see half a
    file. Returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_json_text(results: Results) -> str:
    return json.dumps(results.to_dict(), indent=1)


def to_csv_text(results: Results) -> str:
    return results.to_dataframe().to_csv(index=False)


def save(results: Results, out_dir: Path) -> None:
    atomic_write(out_dir / "results.json", to_json_text(results))
    atomic_write(out_dir / "results.csv", to_csv_text(results))


def load(path: str | Path) -> Results:
    """Read a results.json, with one clear line for a missing, corrupt or incompatible file."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise RooflineError(f"no results file at {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RooflineError(f"{path} is not a valid results.json: {exc}") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise RooflineError(f"{path} is not a roofline results file (no schema_version)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise RooflineError(f"{path} has schema version {data['schema_version']}; this roofline reads "
                            f"version {SCHEMA_VERSION} (re-run `roofline profile` to regenerate it)")
    rows = data.get("rows")
    if not isinstance(rows, list) or not isinstance(data.get("run"), dict):
        raise RooflineError(f"{path} is missing its 'run' or 'rows'")
    parsed = []
    for i, raw in enumerate(rows):
        if not isinstance(raw, dict):
            raise RooflineError(f"{path}: row {i} is not an object")
        missing = [k for k in REQUIRED_FIELDS if k not in raw]
        if missing:
            raise RooflineError(f"{path}: row {i} lacks {', '.join(missing)}")
        parsed.append(Row(**{k: v for k, v in raw.items() if k in ROW_FIELDS}))
    return Results(run=data["run"], rows=parsed)
