"""Hardware counters beside the analytic numbers: DRAM, L2 and L1 bytes and executed FLOPs per op, from Nsight Compute.

The analytic `min_bytes` is what an op must move; the counters say what its kernels did move. The pass:

1. writes a plan (config + the (op, variant) pairs that timed ok) and runs `python -m roofline.counters worker`
   under `ncu`. The worker calls each closure once to warm up (compile, autotune, cuDNN plans: not profiled),
   then once inside the NVTX push/pop range `roofline:<op>:<variant>`; ncu profiles only kernels inside
   such ranges (`--nvtx-include "regex:roofline:.*/"`), each replayed once per group of counters.
2. reads ncu's raw CSV page (one row per kernel; ncu.py) and sums each op's kernels, found by the NVTX range
   in the row.
3. fills the rows' measured_* fields and saves results.json again; `explain_gap` turns big gaps into words.

Caches: ncu's default `--cache-control all` flushes them before each kernel, as the timing pass flushes L2.
Clocks are left alone (ncu.py says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from roofline import ncu
from roofline.ncu import Kernel, NcuProblem, NcuRun

RANGE_PREFIX = "roofline"
NVTX_INCLUDE = f"regex:{RANGE_PREFIX}:.*/"  # push/pop ranges end in '/' in ncu's NVTX filter syntax
WORKER_TAG = "roofline-worker:"

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

GAP_RATIO = 1.5  # measured / analytic beyond ×1.5 (or below ÷1.5) is a gap worth a sentence


# --- the worker: runs under ncu ------------------------------------------------------------------------------

def range_name(op: str, variant: str) -> str:
    return f"{RANGE_PREFIX}:{op}:{variant}"


def worker(plan_path: Path) -> int:
    """Run each planned closure: once to warm up outside any range, once inside its NVTX range."""
    import gc

    import torch

    from roofline.config import BlockConfig, validate
    from roofline.ops import get_op

    plan = json.loads(plan_path.read_text())
    c = validate(BlockConfig(**plan["config"]))
    device = torch.device(plan.get("device", "cuda"))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = c.dtype == "tf32"
    items = plan["items"]
    for i, (op_name, variant_name) in enumerate(items):
        print(f"{WORKER_TAG} start {i + 1}/{len(items)} {op_name}:{variant_name}", flush=True)
        inputs = fn = None
        try:
            op = get_op(op_name)
            variant = op.variant(variant_name)
            reason = variant.requires(c, device)
            if reason:
                print(f"{WORKER_TAG} skipped {op_name}:{variant_name}: {reason}", flush=True)
                continue
            gen = torch.Generator(device=device).manual_seed(int(plan.get("seed", 0)) * 1000 + i)
            inputs = op.make_inputs(c, device, gen)
            fn = variant.build(c, inputs)
            fn()
            torch.cuda.synchronize(device)
            torch.cuda.nvtx.range_push(range_name(op_name, variant_name))
            try:
                fn()
                torch.cuda.synchronize(device)
            finally:
                torch.cuda.nvtx.range_pop()
        except Exception as exc:  # one broken variant must not stop the others
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"{WORKER_TAG} failed {op_name}:{variant_name}: {type(exc).__name__}: {first_line}", flush=True)
        finally:
            del inputs, fn
            gc.collect()
            torch.cuda.empty_cache()
    return 0


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


def merge(rows: list, kernels: list[Kernel]) -> int:
    """Fill measured_* of each ok row from its kernels; returns how many rows were counted."""
    groups, counted = group_by_op(kernels), 0
    for row in rows:
        mine = groups.get((row.op, row.variant))
        if row.status == "ok" and mine:
            for name, value in op_counters(mine).items():
                setattr(row, name, value)
            counted += 1
    return counted


def pct_diff(analytic: float | None, measured: float | None) -> float | None:
    """(measured − analytic) / analytic in %, None when either is missing or analytic is 0."""
    if analytic is None or measured is None or not analytic:
        return None
    return 100.0 * (measured - analytic) / analytic


def explain_gap(row: object) -> str:
    """Why the counters differ from the formulas, in words the user can act on ('' when they agree).

    Rules, in order: DRAM bytes far above the minimum (several kernels → an intermediate goes through DRAM;
    one kernel → operands re-read); far below (L2 kept written lines, or inputs were still cached); executed
    FLOPs far above the useful ones (tensor ops: masked or repeated work; element-wise ops: more instructions
    per textbook operation); far below (SFU transcendentals, or tensor-core instructions the counters miss).
    """
    from roofline import fmt

    get = lambda name: getattr(row, name, None)  # noqa: E731
    sentences = []
    dram, min_bytes, kernels = get("measured_dram_bytes"), get("min_bytes"), get("measured_kernels") or 0
    if dram is not None and min_bytes:
        ratio = dram / min_bytes
        if ratio > GAP_RATIO and kernels > 1:
            sentences.append(f"DRAM traffic is {ratio:.1f}× the minimum over {kernels} kernels: intermediates "
                             "(e.g. an unfused chain's N×N scores) are written to DRAM and read back; a fused "
                             "variant keeps them on chip.")
        elif ratio > GAP_RATIO:
            sentences.append(f"DRAM traffic is {ratio:.1f}× the minimum in one kernel: operands are re-read "
                             "because tiles do not stay in L2 (poor reuse); larger tiles or a better-ordered grid "
                             "cut it.")
        elif ratio < 1 / GAP_RATIO:
            read, write = get("measured_dram_read_bytes"), get("measured_dram_write_bytes")
            if read is not None and write is not None and write < read / 4:
                why = (f"DRAM saw {fmt.nbytes(read)} read but only {fmt.nbytes(write)} written: the output still "
                       "sits dirty in L2 when the kernel ends and reaches DRAM later (L2 write-back)")
            else:
                why = "part of the data was served by L2 (inputs still cached, outputs not yet written back)"
            sentences.append(f"DRAM traffic is only {ratio:.2f}× the minimum: {why}; in a real block those bytes "
                             "move eventually, so the formula stays the op's cost.")
    flops, measured = get("flops"), get("measured_flops")
    if measured is not None and flops:
        ratio = measured / flops
        if ratio > GAP_RATIO and get("unit") == "tensor":
            sentences.append(f"The kernels execute {ratio:.1f}× the useful FLOPs: wasted work such as a causal "
                             "mask applied after computing the full N×N product, padding to tile sizes, or "
                             "recomputation.")
        elif ratio > GAP_RATIO:
            sentences.append(f"The kernels execute {ratio:.1f}× the formula's FLOPs: element-wise math takes more "
                             "instructions than its textbook count (exp, division and rsqrt expand into several); "
                             "it costs time only if the op is compute-bound.")
        elif ratio < 1 / GAP_RATIO:
            why = ("the tensor-core counters may not count this kernel's instructions (compare "
                   "sm__inst_executed_pipe_tensor_op_gmma in counters/ncu_raw.csv)" if get("unit") == "tensor"
                   else "exp, tanh and rsqrt run on the SFU, which ncu's FLOP counters leave out, and the formula "
                   "counts them")
            sentences.append(f"The counters see {ratio:.2f}× the formula's FLOPs: {why}.")
    return " ".join(sentences)


# --- the pass, as `roofline profile --counters` runs it --------------------------------------------------------------

def write_plan(path: Path, config: object, pairs: list[tuple[str, str]], device: str, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": dataclasses.asdict(config),  # type: ignore[call-overload]
                                "items": [list(p) for p in pairs], "device": device, "seed": seed}, indent=1))


def profile_plan(ncu_path: str | None, plan_path: Path, total: int, console: object) -> NcuRun:
    """ncu.profile of the worker with a progress bar: variants done, kernels profiled, elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    executable = ncu.find(ncu_path)
    app = [sys.executable, "-m", "roofline.counters", "worker", "--plan", str(plan_path)]
    progress = Progress(TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[kernels]} kernels"), TimeElapsedColumn(),
                        console=console, transient=False)  # type: ignore[arg-type]
    with progress:
        task = progress.add_task("counters (ncu)", total=total, kernels=0)
        kernels = [0]

        def on_line(line: str) -> None:
            words = line.split(maxsplit=3)
            if line.startswith(WORKER_TAG) and len(words) > 3 and words[1] == "start":
                progress.update(task, completed=int(words[2].split("/")[0]) - 1, description=words[3][:34])
            elif line.startswith((WORKER_TAG, "retry:")):
                progress.console.print(line.removeprefix(WORKER_TAG).strip(), highlight=False, markup=False)
                kernels[0] = 0 if line.startswith("retry:") else kernels[0]
            elif line.startswith("==PROF== Profiling"):
                kernels[0] += 1
                progress.update(task, kernels=kernels[0])
            elif line.startswith("==ERROR=="):
                progress.console.print(line, highlight=False, markup=False)

        run = ncu.profile(executable, list(METRICS), app, plan_path.parent, NVTX_INCLUDE, on_line)
        progress.update(task, completed=total, description="done")
    return run


def worker_notes(log: str) -> dict[tuple[str, str], str]:
    """(op, variant) → why the worker did not run it, from its 'failed'/'skipped' lines."""
    notes = {}
    for m in re.finditer(rf"^{WORKER_TAG} (?:failed|skipped) ([A-Za-z0-9_]+):([A-Za-z0-9_]+): (.*)$", log, re.M):
        notes[(m.group(1), m.group(2))] = m.group(3)
    return notes


def run_counters_pass(res: object, items: list, config: object, out_dir: Path, ncu_path: str | None,
                      console: object) -> Exception | None:
    """Count every (op, variant) that timed ok, merge into res and save it; returns CannotRun if nothing was counted.

    Never raises for ncu's problems: the timing results are already saved and stay so whatever happens here.
    """
    from roofline.errors import CannotRun

    say = lambda text: console.print(text, highlight=False, markup=False)  # type: ignore[attr-defined]  # noqa: E731
    ok = {(r.op, r.variant) for r in res.ok_rows()}  # type: ignore[attr-defined]
    pairs = [(op.name, v.name) for op, v in items if (op.name, v.name) in ok]
    device = res.run.get("device") or {}  # type: ignore[attr-defined]
    if device.get("kind") != "cuda":
        problem = "this run is on the CPU; counters need an NVIDIA GPU and Nsight Compute"
    elif not pairs:
        problem = "no op timed ok, so there is nothing to count"
    else:
        problem = _count(res, pairs, config, out_dir, ncu_path, console, say)
    if problem:
        return CannotRun(f"no hardware counters: {problem} (timing results are saved in {out_dir})")
    return None


def _count(res: object, pairs: list[tuple[str, str]], config: object, out_dir: Path, ncu_path: str | None,
           console: object, say: Callable[[str], None]) -> str | None:
    from roofline import results

    t0, work_dir = time.perf_counter(), out_dir / "counters"
    device, seed = res.run["device"], (res.run.get("settings") or {}).get("seed", 0)  # type: ignore[attr-defined]
    write_plan(work_dir / "plan.json", config, pairs, f"cuda:{device.get('index', 0)}", int(seed))
    say(f"Counting DRAM/L2/L1 bytes and FLOPs of {len(pairs)} variants under ncu (it replays every kernel: slow)")
    try:
        run = profile_plan(ncu_path, work_dir / "plan.json", len(pairs), console)
    except NcuProblem as exc:
        return str(exc)
    results.atomic_write(work_dir / "ncu_raw.csv", run.csv_text)
    kernels = ncu.parse_raw_csv(run.csv_text)
    groups, notes = group_by_op(kernels), worker_notes(run.log)
    counted = merge(res.rows, kernels)  # type: ignore[attr-defined]
    missing = [f"{op}·{variant}" + (f" ({notes[(op, variant)]})" if (op, variant) in notes else "")
               for op, variant in pairs if (op, variant) not in groups]
    res.run["counters"] = {  # type: ignore[index]
        "tool": "ncu", "metrics": run.metrics, "dropped_metrics": run.dropped_metrics, "clock_control": "none",
        "kernels": len(kernels), "unmapped_kernels": len(kernels) - sum(map(len, groups.values())),
        "counted_rows": counted, "not_counted": missing, "wall_s": time.perf_counter() - t0}
    results.save(res, out_dir)  # type: ignore[arg-type]
    if run.dropped_metrics:
        say(f"warning: this ncu does not know {', '.join(run.dropped_metrics)}; counted without them")
    for item in missing:
        say(f"warning: no counters for {item}")
    say(f"Counted {counted} of {len(pairs)} variants ({len(kernels)} kernels) in {time.perf_counter() - t0:.1f} s; "
        f"raw counters in {work_dir / 'ncu_raw.csv'}")
    if not counted:
        return "ncu ran but no kernel could be tied to an op (see counters/ncu.log)"
    console.print(comparison_table(res))  # type: ignore[attr-defined]
    _render_plot(res, out_dir, say)
    return None


def _render_plot(res: object, out_dir: Path, say: Callable[[str], None]) -> None:
    try:
        from roofline import counters_plot

        for path in counters_plot.render(res, out_dir):
            say(f"Wrote {path}")
    except Exception as exc:  # a plot must never lose the counted results
        say(f"warning: could not render the hierarchical roofline: {type(exc).__name__}: {exc}")


def comparison_table(res: object) -> object:
    """Analytic vs measured per counted row: DRAM bytes and FLOPs with the % difference, L2/L1 bytes, and why."""
    from rich.table import Table

    from roofline import fmt

    t = Table(title="Analytic vs measured (ncu)", header_style="bold", show_lines=False,
              caption="min bytes: the formula's compulsory DRAM traffic · L1 counts the L1/TEX pipe only: TMA "
                      "loads (cuBLAS GEMMs, flash attention on Hopper) go from L2 to shared memory past it")
    for col in ("op · variant", "kernels", "min bytes", "DRAM", "Δ", "L2", "L1", "FLOPs", "executed", "Δ", "why"):
        t.add_column(col, justify="left" if col in ("op · variant", "why") else "right", overflow="fold")
    signed = lambda v: "–" if v is None else f"{v:+.0f} %"  # noqa: E731
    for r in res.rows:  # type: ignore[attr-defined]
        if getattr(r, "measured_kernels", None):
            t.add_row(f"{r.op} · {r.variant}", str(r.measured_kernels), fmt.nbytes(r.min_bytes),
                      fmt.nbytes(r.measured_dram_bytes), signed(pct_diff(r.min_bytes, r.measured_dram_bytes)),
                      fmt.nbytes(r.measured_l2_bytes), fmt.nbytes(r.measured_l1_bytes), fmt.flops(r.flops),
                      fmt.flops(r.measured_flops), signed(pct_diff(r.flops, r.measured_flops)), explain_gap(r))
    return t


# --- command line of the module: the worker, and a stand-alone capture ------------------------------------------------

def capture(args: argparse.Namespace) -> int:
    """Profile a few ops under ncu without the timing pass and keep the raw CSV (scripts/capture_ncu_fixture.sh)."""
    from rich.console import Console

    from roofline.config import make_config
    from roofline.ops import plan

    config = make_config(args.model, seq_len=args.seq_len, dtype=args.dtype)
    pairs = [(op.name, v.name) for op, v in plan(config, args.ops.split(","), args.variants.split(","))]
    out = Path(args.out)
    write_plan(out / "plan.json", config, pairs, "cuda")
    try:
        run = profile_plan(args.ncu, out / "plan.json", len(pairs), Console(stderr=True))
    except NcuProblem as exc:
        print(f"counters: {exc}", file=sys.stderr)
        return 3
    (out / "ncu_raw.csv").write_text(run.csv_text)
    kernels = ncu.parse_raw_csv(run.csv_text)
    print(f"{len(kernels)} kernels in {run.wall_s:.1f} s; metrics dropped: {run.dropped_metrics or 'none'}")
    for (op, variant), mine in group_by_op(kernels).items():
        print(f"{op}:{variant}", json.dumps(op_counters(mine)))
    return 0 if kernels else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roofline.counters", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="(internal) run a plan under ncu").add_argument("--plan", type=Path, required=True)
    cap = sub.add_parser("capture", help="profile a few ops under ncu and keep the raw CSV")
    for name, default in (("--model", "gpt-7b"), ("--dtype", "bf16"), ("--ops", "layernorm,softmax,qkv_proj,attention"),
                          ("--variants", "torch,naive,sdpa_cudnn"), ("--out", "ncu-capture"), ("--ncu", None)):
        cap.add_argument(name, default=default)
    cap.add_argument("--seq-len", type=int, default=2048)
    sub.add_parser("metrics", help="print the metric names this module asks ncu for")
    args = parser.parse_args(argv)
    if args.command == "worker":
        return worker(args.plan)
    if args.command == "metrics":
        print(",".join(METRICS))
        return 0
    return capture(args)


if __name__ == "__main__":
    sys.exit(main())
