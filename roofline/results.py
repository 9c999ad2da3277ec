"""Results: the contract every command reads — a typed run record and one row per (op, variant, shape, dtype, mode).

results.json = {"schema_version": 2, "run": {...}, "rows": [...]}. JSON is the source of truth; the pandas
DataFrame and CSV are views of the rows. Files are written atomically (temp file, then rename) after every row,
so a crash loses nothing already measured. A results file carries everything needed to render it again — the
device, the roofs it was placed against, the config and the fusion groups of the catalog that measured it — so an
old file renders the same tomorrow, without the catalog (and without torch).

Schema versions: 2 adds `run.fusion_groups`, `run.parallel` (was `tp`, `dp`, `ranks`, `backend`, `interconnect`
at the top of `run`) and `run.moe`; version 1 files are read and upgraded on load (their fusion groups are the
ones the catalog had then, LEGACY_FUSION_GROUPS). Fields added since (`parallel.pp`, `.links`, `.pipeline`, the
config's `pp`, `layers`, `microbatches`) have defaults: a file without them reads as a run without a pipeline.
`roofline trace` writes schema 2 too: its run has a `trace` record and each row a `trace` record (the aten op call
it stands for); files without them read as before.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from roofline.config import BlockConfig
from roofline.errors import RooflineError

if TYPE_CHECKING:
    import pandas as pd
    import torch

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
CEILINGS_VERSION = 2  # the format of a Ceilings entry: a cached entry of another version is measured again


@dataclass
class DeviceInfo:
    """One device and its headline roofs (detected by measure/device.py). peak_flops keys are '<unit>.<dtype>'."""

    kind: str  # "cuda" | "cpu"
    name: str
    index: int = 0
    sm_count: int = 0
    compute_capability: str = ""
    memory_bytes: int = 0
    l2_bytes: int = 0  # the GPU's L2
    llc_bytes: int = 0  # the CPU's last-level cache (L3)
    max_sm_clock_mhz: int = 0
    max_mem_clock_mhz: int = 0
    memory_bus_width_bits: int = 0
    theoretical_bandwidth: float = 0.0
    power_limit_w: float = 0.0
    driver: str = ""
    cuda: str = ""
    torch: str = ""
    triton: str = ""
    cpu_threads: int = 0
    datasheet: str = ""  # the configs/devices entry that matched, "" if none
    datasheet_source: str = ""
    peak_flops: dict[str, float] = field(default_factory=dict)
    memory_bandwidth: float = 0.0
    peaks_source: str = "datasheet"  # "datasheet" | "derived from NVML" | "none"
    warnings: list[str] = field(default_factory=list)

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(f"cuda:{self.index}" if self.kind == "cuda" else "cpu")

    @property
    def cache_bytes(self) -> int:
        """The last-level cache the timer flushes before each sample: the GPU's L2 or the CPU's L3."""
        return self.l2_bytes if self.kind == "cuda" else self.llc_bytes

    @property
    def slug(self) -> str:
        """Short lower-case name for folders: 'h100-sxm', 'cpu'."""
        import re

        if self.kind == "cpu":
            return "cpu"
        base = self.datasheet or self.name
        return re.sub(r"[^a-z0-9]+", "-", base.lower().replace("nvidia", "")).strip("-")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Ceilings:
    """Measured roofs of one device (`roofline calibrate`), keyed like DeviceInfo.peak_flops.

    quick: measured by a run's implicit calibration (the run's dtypes and shapes only, smaller buffers); a full
    `roofline calibrate` replaces it. gemm_shapes holds every shape's rate: the roof is the best of them.
    """

    device: str
    key: str
    peak_flops: dict[str, float] = field(default_factory=dict)
    memory_bandwidth: float = 0.0  # the copy bandwidth: the roof used for memory-bound ops
    read_bandwidth: float = 0.0
    write_bandwidth: float = 0.0
    l2_bandwidth: float = 0.0
    gemm_shapes: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> "MxNxK" -> FLOP/s
    wall_s: float = 0.0
    measured_at: str = ""
    torch: str = ""
    version: int = CEILINGS_VERSION
    quick: bool = False
    raised: list[str] = field(default_factory=list)  # roofs a run beat within their error, raised to its rate

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Settings:
    """How hard a run measured: budget_s per variant (timing stops earlier once the median is stable)."""

    budget_s: float = 0.5
    min_samples: int = 5
    seed: int = 0
    rounds: int = 1  # each op timed in this many rounds, interleaved across ops (`--rounds`: the CI mode)


@dataclass
class Clocks:
    """NVML's reading of the GPU at one moment (empty on a CPU or without NVML)."""

    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    throttle: str = ""
    other_processes: int | None = None


@dataclass
class Peaks:
    """The roofs a run was placed against: the datasheet's (the headline) and the measured ones (`calibrate`)."""

    datasheet_flops: dict[str, float] = field(default_factory=dict)
    datasheet_bandwidth: float = 0.0
    datasheet_source: str = ""
    measured: Ceilings | None = None

    def to_dict(self) -> dict[str, object]:
        return {"datasheet": {"flops": self.datasheet_flops, "memory_bandwidth": self.datasheet_bandwidth,
                              "source": self.datasheet_source},
                "measured": self.measured.to_dict() if self.measured else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Peaks:
        sheet = data.get("datasheet") or {}
        measured = data.get("measured")
        return cls(sheet.get("flops") or {}, sheet.get("memory_bandwidth") or 0.0, sheet.get("source") or "",
                   from_dict(Ceilings, measured) if isinstance(measured, dict) else None)


@dataclass(frozen=True)
class FusionGroup:
    """An unfused chain of ops and the op whose fused variants replace it (attention: qk_t → softmax → attn_v)."""

    name: str
    chain: tuple[str, ...]  # op names, each at its baseline (first) variant
    fused_op: str  # the op whose fused variants replace the chain


# The catalog's fusion groups when schema 1 was written (those files do not carry them).
LEGACY_FUSION_GROUPS = (FusionGroup("softmax", ("softmax",), "softmax"),
                        FusionGroup("attention", ("qk_t", "softmax", "attn_v"), "attention"),
                        FusionGroup("residual_dropout_norm", ("dropout", "residual_add", "layernorm", "rmsnorm"),
                                    "residual_dropout_norm"),
                        FusionGroup("moe_experts", ("moe_experts",), "moe_experts"))


@dataclass
class Pipeline:
    """What `profile --pp N` measured of the pipeline itself, beside the per-op rows: the stages alone, then a real
    step of the schedule (analysis/pipeline.py turns it into the bubble, the time split and the model check).

    Times per stage are in stage order. A stage's forward/backward is one microbatch through its layers, the slowest
    of the stage's ranks; busy_s / p2p_s are what each stage spent, inside the measured step, computing and in its
    sends/receives (median step, mean over the stage's ranks). step_s is the whole step, barrier to the last rank's
    end: every microbatch's forward (and, in train, backward) through every stage; the DP gradients' all-reduce
    comes after the step and is not in it (its own row).
    """

    stages: int = 1
    layers: int = 1
    microbatches: int = 1
    schedule: str = "1F1B"  # "1F1B" (train: one forward, one backward) | "forward" (prefill: forwards only)
    forward_s: list[float] = field(default_factory=list)
    backward_s: list[float] = field(default_factory=list)  # [] outside train mode
    transfer_s: float | None = None  # one microbatch's activation across one boundary (the p2p row, one way)
    step_s: float | None = None  # median of step_samples_s
    step_samples_s: list[float] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)
    p2p_s: list[float] = field(default_factory=list)
    error: float | None = None  # the pipeline's output vs the unsplit stack of layers (relative)
    tolerance: float | None = None
    note: str = ""  # e.g. why transfer_s is missing


@dataclass
class Parallel:
    """Several ranks (`profile --tp/--dp/--pp`): how many, over what, the roofs they measured and the pipeline.

    interconnect: the link of the run's first axis (TP, else DP, else PP), as runs before `links` saved it;
    links: each axis's link ("tp", "dp", "pp"), measured over that axis's group.
    """

    tp: int = 1
    dp: int = 1
    ranks: int = 1
    backend: str = ""
    interconnect: dict[str, Any] = field(default_factory=dict)
    pp: int = 1
    links: dict[str, Any] = field(default_factory=dict)
    pipeline: Pipeline | None = None


@dataclass
class SweepGrid:
    """What `roofline sweep` measured: every (dtype, N) of the grid."""

    seq_lens: list[int] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    block: bool = True
    attention_variants: list[str] | None = None


@dataclass
class CountersPass:
    """The hardware-counter pass of `profile --counters` (Nsight Compute)."""

    tool: str = "ncu"
    metrics: list[str] = field(default_factory=list)
    dropped_metrics: list[str] = field(default_factory=list)
    clock_control: str = "none"
    kernels: int = 0
    unmapped_kernels: int = 0
    counted_rows: int = 0
    not_counted: list[str] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class MoeFlops:
    """FLOPs per token of a mixture-of-experts block against a dense block holding all its experts' parameters."""

    flops_per_token: float
    dense_flops_per_token: float


@dataclass
class Textbook:
    """`profile` of the same shapes beside a trace: the catalog's block unfused and with its best fused variants."""

    unfused_s: float
    fused_s: float
    source: str = ""  # the profile's results.json
    fused_ops: list[str] = field(default_factory=list)  # "attention · sdpa_cudnn", the fusions the best block uses
    mismatch: str = ""  # how its shapes differ from the trace's, "" when they are the same


@dataclass
class TraceRun:
    """What `roofline trace` ran and the run-level checks: the step timed whole, its kernels summed, its FLOPs
    counted by torch's FlopCounterMode.

    A step is one forward (train: forward + backward) of the target: `layers` decoder layers of a Hugging Face
    model, or a user's module or function. Kernel times are medians over `repeats` profiled steps.
    """

    target: str
    kind: str = "module"  # "hf" | "module" | "api"
    attn_impl: str = ""
    layers: int = 1
    repeats: int = 0
    step_time_s: float | None = None  # the whole step, timed by CUDA events (CPU: perf_counter); median
    step_samples_s: list[float] = field(default_factory=list)
    timer: str = ""
    kernel_time_s: float | None = None  # the step's kernels (CPU: its aten ops) summed; median over repeats
    kernel_launches: int = 0  # per step
    outside_time_s: float = 0.0  # kernels launched outside any aten op (a raw Triton launch, say)
    outside_launches: int = 0
    flop_counter_flops: float | None = None  # FlopCounterMode's count of one step
    flop_counter_error: str = ""  # why FlopCounterMode could not count, if it could not
    peak_mem_bytes: int | None = None  # memory one step allocates beyond what was allocated before it (GPU)
    outputs: list[str] = field(default_factory=list)  # tensor ids the step hands back (incl. gradients)
    model_type: str = ""
    notes: list[str] = field(default_factory=list)
    textbook: Textbook | None = None


@dataclass
class Run:
    """Everything about a run but its rows: what ran where, against which roofs, and how."""

    roofline_version: str = ""
    git_commit: str = ""
    command: str = ""
    started_at: str = ""
    python: str = ""
    device: DeviceInfo = field(default_factory=lambda: DeviceInfo(kind="?", name="?"))
    clocks_at_start: Clocks = field(default_factory=Clocks)
    config: BlockConfig = field(default_factory=BlockConfig)
    settings: Settings = field(default_factory=Settings)
    peaks: Peaks = field(default_factory=Peaks)
    fusion_groups: list[FusionGroup] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parallel: Parallel | None = None
    sweep: SweepGrid | None = None
    counters: CountersPass | None = None
    moe: MoeFlops | None = None
    trace: TraceRun | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["config"] = config_dict(self.config)
        out["peaks"] = self.peaks.to_dict()
        return out


@dataclass
class TraceOp:
    """What `roofline trace` knows of a row's aten op call: where it came from and what it touched.

    Tensors are named by ids ("12"): one per storage, a new one for each fresh allocation, so a chain of kernels
    can tell the tensors it passes along from those it reads from, or hands to, the rest of the step.
    """

    index: int  # call order in one step: the forward's ops, then the backward's
    aten_op: str  # "aten::mm"
    phase: str = "forward"  # "forward" | "backward"
    module: str = ""  # the innermost module: "layers.0.self_attn.q_proj" (backward: its forward op's)
    module_class: str = ""
    functions: list[str] = field(default_factory=list)  # the calling Python functions, innermost first
    source: str = ""  # file:line of the innermost caller
    kernels: list[str] = field(default_factory=list)  # the GPU kernels it launched, in order ([] on a CPU)
    shapes: str = ""  # its input shapes
    reads: dict[str, int] = field(default_factory=dict)  # tensor id -> bytes read
    writes: dict[str, int] = field(default_factory=dict)  # tensor id -> bytes written
    torch_flops: float | None = None  # torch's FLOP formula (torch.utils.flop_counter), where it has one
    flop_rule: str = ""  # how `flops` was counted: torch, attention, pointwise, data movement, none
    forward_index: int | None = None  # backward: the forward op whose gradient it computes
    node: str = ""  # backward: the autograd node ("MmBackward0")


@dataclass
class Row:
    """One measured (or skipped, or failed) variant of one op; for `roofline trace`, one aten op call."""

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
    sm_clock_mhz: int | None = None  # the SM clock sustained while the samples ran (median of NVML readings)
    mem_clock_mhz: int | None = None
    throttle: str = ""  # NVML's throttle reasons seen while the samples ran
    sm_clock_min_mhz: int | None = None  # the lowest SM clock seen while the samples ran
    time_samples_s: list[float] = field(default_factory=list)
    rounds: int = 1  # `--rounds N`: timed N times, interleaved with the other ops (each round a fresh set of samples)
    round_medians_s: list[float] = field(default_factory=list)  # one median per round: the run-to-run spread
    suspect: str = ""  # above its roof by more than the roof's error: why it cannot be a result (placement.py)
    host_time_s: float | None = None  # host time to launch one call; above time_median_s the op is host-bound
    # Hardware counters (`profile --counters`, measure/counters.py): what the op's kernels moved and executed.
    measured_dram_bytes: float | None = None  # DRAM read + write
    measured_dram_read_bytes: float | None = None
    measured_dram_write_bytes: float | None = None
    measured_l2_bytes: float | None = None  # L2 requests (reads + writes), bytes
    measured_l1_bytes: float | None = None  # L1/TEX requests, bytes
    measured_flops: float | None = None  # CUDA-core (FMA = 2) + tensor-core FLOPs executed
    measured_tensor_flops: float | None = None
    measured_kernels: int | None = None  # kernels the op launched
    # Train mode (measure/train.py): time_* above time the whole step (forward + backward); flops and min_bytes
    # count both.
    backward_flops: float | None = None
    backward_min_bytes: float | None = None
    backward_time_s: float | None = None  # median of the backward alone, over a kept forward's graph
    backward_samples: int = 0
    grad_error: float | None = None  # largest relative error of the input gradients vs the float64 reference
    saved_bytes: int | None = None  # tensors autograd keeps for the backward (one count per storage)
    saved_new_bytes: int | None = None  # of which not the op's inputs: the activation memory the op adds
    rank: int | None = None  # `profile --tp N`: the rank that measured the row; None for one device or the max
    trace: TraceOp | None = None  # `roofline trace`: the aten op call (op is the block op it is attributed to)

    @property
    def key(self) -> tuple[str, str, int, int, int, str, str]:
        """Identity used to align rows across runs (compare); the run's config holds the rest of the work."""
        return (self.op, self.variant, self.batch, self.seq_len, self.kv_len, self.dtype, self.mode)


ROW_FIELDS = [f.name for f in dataclasses.fields(Row)]
REQUIRED_FIELDS = [f.name for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]


@dataclass
class Results:
    run: Run
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"schema_version": SCHEMA_VERSION, "run": _clean(self.run.to_dict()),
                "rows": [_clean(dataclasses.asdict(r)) for r in self.rows]}

    def to_dataframe(self, with_samples: bool = False) -> pd.DataFrame:
        """One column per Row field; a trace row's record spread over trace_* columns (its tensor ids left out)."""
        import pandas as pd

        columns, records = flat_rows(self.rows)
        df = pd.DataFrame(records, columns=columns)
        return df if with_samples else df.drop(columns=["time_samples_s"])

    def ok_rows(self) -> list[Row]:
        return [r for r in self.rows if r.status == "ok"]

    def find(self, op: str, variant: str | None = None) -> Row | None:
        for r in self.rows:
            if r.op == op and (variant is None or r.variant == variant) and r.status == "ok":
                return r
        return None


def config_dict(c: BlockConfig) -> dict[str, object]:
    """A config as results.json holds it: its fields, and the derived q_len, kv_len and tokens for readers."""
    return {**asdict(c), "q_len": c.q_len, "kv_len": c.kv_len, "tokens": c.tokens}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A dataclass from its dict, nested dataclasses too; unknown keys are dropped, missing ones take defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    """value as the type `hint` says: a dataclass (or one in `X | None`), a list or tuple of them, else as is."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return origin(_convert(args[0], v) for v in value)
    if origin is tuple:
        return tuple(value)
    target = hint if dataclasses.is_dataclass(hint) else next((a for a in args if dataclasses.is_dataclass(a)), None)
    if target is not None and isinstance(value, dict):
        return target.from_dict(value) if hasattr(target, "from_dict") else from_dict(target, value)
    return value


def run_from_dict(data: dict[str, Any]) -> Run:
    """The run record of a results.json, either schema: version 1's top-level tp/dp/ranks/backend/interconnect
    become `parallel`, and its fusion groups are the catalog's of that time."""
    data = dict(data)
    if "fusion_groups" not in data:  # schema 1
        data["fusion_groups"] = [asdict(g) for g in LEGACY_FUSION_GROUPS]
        if "tp" in data or "dp" in data:
            data["parallel"] = {k: data.pop(k) for k in ("tp", "dp", "ranks", "backend", "interconnect") if k in data}
            data["parallel"].setdefault("ranks", data["parallel"].get("tp", 1) * data["parallel"].get("dp", 1))
    return from_dict(Run, data)


def _clean(value: object) -> object:
    """JSON has no NaN/inf: store them as null (a failed check's error of inf reads as 'not finite')."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
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




def flat_rows(rows: list[Row]) -> tuple[list[str], list[dict[str, object]]]:
    """One flat record per row for the CSV and the DataFrame: a trace row's record spread over trace_* columns
    (its tensor ids left out); columns in Row's order, then the trace columns."""
    records = []
    for r in rows:
        record = dataclasses.asdict(r)
        trace = record.pop("trace")
        if trace is not None:
            record.update({f"trace_{k}": v for k, v in trace.items() if k not in ("reads", "writes")})
        records.append(record)
    columns = [c for c in ROW_FIELDS if c != "trace"]
    columns += [c for c in dict.fromkeys(k for record in records for k in record) if c not in columns]
    return columns, records


def to_csv_text(results: Results) -> str:
    """The rows as CSV (the DataFrame's columns, without the raw samples), written without pandas: a profile saves
    it after every row and should not pay pandas' import for it."""
    columns, records = flat_rows(results.rows)
    columns.remove("time_samples_s")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow("" if (v := record.get(name)) is None else v for name in columns)
    return buffer.getvalue()


def save(results: Results, out_dir: Path) -> None:
    atomic_write(out_dir / "results.json", to_json_text(results))
    atomic_write(out_dir / "results.csv", to_csv_text(results))


def load(path: str | Path) -> Results:
    """Read a results.json (schema 1 or 2), with one clear line for a missing, corrupt or incompatible file."""
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
    if data["schema_version"] not in READABLE_SCHEMAS:
        raise RooflineError(f"{path} has schema version {data['schema_version']}; this roofline reads versions "
                            f"{', '.join(map(str, READABLE_SCHEMAS))} (re-run `roofline profile` to regenerate it)")
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
        values = {k: v for k, v in raw.items() if k in ROW_FIELDS}
        if isinstance(values.get("trace"), dict):
            values["trace"] = from_dict(TraceOp, values["trace"])
        parsed.append(Row(**values))
    try:
        run = run_from_dict(data["run"])
    except (TypeError, ValueError) as exc:
        raise RooflineError(f"{path}: its 'run' record is malformed: {exc}") from None
    return Results(run=run, rows=parsed)
