"""Hardware counters beside the analytic numbers: DRAM, L2 and L1 bytes and executed FLOPs per op, from Nsight Compute.

The analytic `min_bytes` is what an op must move; the counters say what its kernels did move. The pass:

1. writes a plan (config + the (op, variant) pairs that timed ok) and runs `python -m roofline.measure.ncu_worker`
   under `ncu` (ncu_worker.py): each closure once to warm up, then once inside the NVTX range
   `roofline:<op>:<variant>`; ncu profiles only kernels inside such ranges (`--nvtx-include "regex:roofline:.*/"`),
   each replayed once per group of counters.
2. reads ncu's raw CSV page (one row per kernel; ncu.py) and sums each op's kernels, found by the NVTX range
   in the row.
3. fills the rows' measured_* fields and saves results.json again; analysis/counters.py turns big gaps into words.

Caches: ncu's default `--cache-control all` flushes them before each kernel, as the timing pass flushes L2.
Clocks are left alone (ncu.py says why).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from roofline.config import BlockConfig
from roofline.measure import ncu
from roofline.measure.ncu import Kernel, NcuProblem, NcuRun
from roofline.measure.ncu_worker import RANGE_PREFIX, WORKER_TAG
from roofline.results import CountersPass, Results, Row, atomic_write, save

NVTX_INCLUDE = f"regex:{RANGE_PREFIX}:.*/"  # push/pop ranges end in '/' in ncu's NVTX filter syntax

DRAM_READ = "dram__bytes_read.sum"
DRAM_WRITE = "dram__bytes_write.sum"
L2_BYTES = "lts__t_bytes.sum"  # every L2 slice request, reads + writes + atomics, in bytes
L1_BYTES = "l1tex__t_bytes.sum"  # every L1/TEX request, in bytes
DURATION = "gpu__time_duration.sum"
# CUDA-core FLOPs per executed thread instruction, fp32 (f), fp16 (h) and fp64 (d): an FMA counts 2, as in
# Nsight Compute's own roofline sections. Transcendentals (exp, rsqrt on the SFU) are not counted by ncu.
SIMT_FLOP_WEIGHTS = {f"smsp__sass_thread_inst_executed_op_{p}{kind}_pred_on.sum": (2 if kind == "fma" else 1)
                     for p in "fhd" for kind in ("add", "mul", "fma")}
# Tensor-core operations by source/destination type, in FLOPs (a multiply-add = 2). On the H100 (ncu 2025.3)
# bf16_dst_fp32 counts wgmma exactly 2·M·N·K (tests/test_counters.py, real capture); the fp16 names do not exist
# there and are dropped and reported (ncu.profile), so fp16 tensor FLOPs go uncounted on that chip.
TENSOR_FLOP_METRICS = ("sm__ops_path_tensor_src_bf16_dst_fp32.sum", "sm__ops_path_tensor_src_fp16_dst_fp32.sum",
                       "sm__ops_path_tensor_src_fp16_dst_fp16.sum", "sm__ops_path_tensor_src_tf32_dst_fp32.sum")
# Warp-level tensor instructions: no FLOPs (the shape is not in the counter), but they tell whether a kernel
# used the tensor pipe at all (Hopper wgmma is 'gmma').
TENSOR_INST_METRICS = ("sm__inst_executed_pipe_tensor_op_gmma.sum", "sm__inst_executed_pipe_tensor_op_hmma.sum")
METRICS = (DRAM_READ, DRAM_WRITE, L2_BYTES, L1_BYTES, DURATION, *SIMT_FLOP_WEIGHTS, *TENSOR_FLOP_METRICS,
           *TENSOR_INST_METRICS)


# --- per-op sums and the Results rows ---------------------------------------------------------------------------

def _sum(kernels: list[Kernel], metrics: tuple[str, ...] | list[str], weights: dict[str, int] | None = None
         ) -> float | None:
    """Σ over kernels and metrics (× weight); None when no kernel reported any of them."""
    values = [(weights or {}).get(m, 1) * k.metrics[m] for k in kernels for m in metrics
              if k.metrics.get(m) is not None]
    return float(sum(values)) if values else None


def op_counters(kernels: list[Kernel]) -> dict[str, float | int | None]:
    """The measured_* fields of one op from its kernels: bytes per memory level, FLOPs (CUDA + tensor cores)."""
    read, write = _sum(kernels, [DRAM_READ]), _sum(kernels, [DRAM_WRITE])
    simt, tensor = _sum(kernels, list(SIMT_FLOP_WEIGHTS), SIMT_FLOP_WEIGHTS), _sum(kernels, TENSOR_FLOP_METRICS)
    flops = None if simt is None and tensor is None else (simt or 0.0) + (tensor or 0.0)
    return {"measured_dram_bytes": None if read is None or write is None else read + write,
            "measured_dram_read_bytes": read, "measured_dram_write_bytes": write,
            "measured_l2_bytes": _sum(kernels, [L2_BYTES]), "measured_l1_bytes": _sum(kernels, [L1_BYTES]),
            "measured_flops": flops, "measured_tensor_flops": tensor, "measured_kernels": len(kernels)}


_RANGE = re.compile(rf"{RANGE_PREFIX}:([A-Za-z0-9_]+):([A-Za-z0-9_]+)")


def group_by_op(kernels: list[Kernel]) -> dict[tuple[str, str], list[Kernel]]:
    """(op, variant) → its kernels, by the `roofline:<op>:<variant>` NVTX range each kernel ran in."""
    groups: dict[tuple[str, str], list[Kernel]] = {}
    for k in kernels:
        if found := _RANGE.search(k.nvtx):
            groups.setdefault((found.group(1), found.group(2)), []).append(k)
    return groups


def merge(rows: list[Row], kernels: list[Kernel]) -> int:
    """Fill measured_* of each ok row from its kernels; returns how many rows were counted."""
    groups, counted = group_by_op(kernels), 0
    for row in rows:
        mine = groups.get((row.op, row.variant))
        if row.status == "ok" and mine:
            for name, value in op_counters(mine).items():
                setattr(row, name, value)
            counted += 1
    return counted


# --- the pass, as `roofline profile --counters` runs it --------------------------------------------------------------

def write_plan(path: Path, config: BlockConfig, pairs: list[tuple[str, str]], device: str, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": dataclasses.asdict(config), "items": [list(p) for p in pairs],
                                "device": device, "seed": seed}, indent=1))


Progress = Callable[[str, int, int, int], None]  # (what runs now, variants done, variants in all, kernels profiled)


def profile_plan(ncu_path: str | None, plan_path: Path, total: int, progress: Progress,
                 say: Callable[[str], None]) -> NcuRun:
    """ncu.profile of the worker, reporting progress (variants done, kernels profiled) and its notes as it goes."""
    executable = ncu.find(ncu_path)
    app = [sys.executable, "-m", "roofline.measure.ncu_worker", str(plan_path)]
    state = {"done": 0, "label": "counters (ncu)", "kernels": 0}

    def on_line(line: str) -> None:
        words = line.split(maxsplit=3)
        if line.startswith(WORKER_TAG) and len(words) > 3 and words[1] == "start":
            state["done"], state["label"] = int(words[2].split("/")[0]) - 1, words[3]
        elif line.startswith((WORKER_TAG, "retry:")):
            say(line.removeprefix(WORKER_TAG).strip())
            state["kernels"] = 0 if line.startswith("retry:") else state["kernels"]
        elif line.startswith("==PROF== Profiling"):
            state["kernels"] += 1  # type: ignore[operator]
        elif line.startswith("==ERROR=="):
            say(line)
        progress(str(state["label"]), int(state["done"]), total, int(state["kernels"]))

    run = ncu.profile(executable, list(METRICS), app, plan_path.parent, NVTX_INCLUDE, on_line)
    progress("done", total, total, int(state["kernels"]))
    return run


def worker_notes(log: str) -> dict[tuple[str, str], str]:
    """(op, variant) → why the worker did not run it, from its 'failed'/'skipped' lines."""
    notes = {}
    for m in re.finditer(rf"^{WORKER_TAG} (?:failed|skipped) ([A-Za-z0-9_]+):([A-Za-z0-9_]+): (.*)$", log, re.M):
        notes[(m.group(1), m.group(2))] = m.group(3)
    return notes


def count(res: Results, pairs: list[tuple[str, str]], config: BlockConfig, out_dir: Path, ncu_path: str | None,
          progress: Progress, say: Callable[[str], None]) -> str | None:
    """Count every (op, variant) of `pairs` under ncu, merge the counters into res and save it; returns why nothing
    could be counted (None when some was).

    Never raises for ncu's problems: the timing results are already saved and stay so whatever happens here.
    """
    if res.run.device.kind != "cuda":
        return "this run is on the CPU; counters need an NVIDIA GPU and Nsight Compute"
    ok = {(r.op, r.variant) for r in res.ok_rows()}
    pairs = [p for p in pairs if p in ok]
    if not pairs:
        return "no op timed ok, so there is nothing to count"
    t0, work_dir = time.perf_counter(), out_dir / "counters"
    write_plan(work_dir / "plan.json", config, pairs, f"cuda:{res.run.device.index}", res.run.settings.seed)
    say(f"Counting DRAM/L2/L1 bytes and FLOPs of {len(pairs)} variants under ncu (it replays every kernel: slow)")
    try:
        run = profile_plan(ncu_path, work_dir / "plan.json", len(pairs), progress, say)
    except NcuProblem as exc:
        return str(exc)
    atomic_write(work_dir / "ncu_raw.csv", run.csv_text)
    kernels = ncu.parse_raw_csv(run.csv_text)
    groups, notes = group_by_op(kernels), worker_notes(run.log)
    counted = merge(res.rows, kernels)
    missing = [f"{op}·{variant}" + (f" ({notes[(op, variant)]})" if (op, variant) in notes else "")
               for op, variant in pairs if (op, variant) not in groups]
    res.run.counters = CountersPass(
        metrics=run.metrics, dropped_metrics=run.dropped_metrics, kernels=len(kernels),
        unmapped_kernels=len(kernels) - sum(map(len, groups.values())), counted_rows=counted, not_counted=missing,
        wall_s=time.perf_counter() - t0)
    save(res, out_dir)
    if run.dropped_metrics:
        say(f"warning: this ncu does not know {', '.join(run.dropped_metrics)}; counted without them")
    for item in missing:
        say(f"warning: no counters for {item}")
    say(f"Counted {counted} of {len(pairs)} variants ({len(kernels)} kernels) in {time.perf_counter() - t0:.1f} s; "
        f"raw counters in {work_dir / 'ncu_raw.csv'}")
    return None if counted else "ncu ran but no kernel could be tied to an op (see counters/ncu.log)"
