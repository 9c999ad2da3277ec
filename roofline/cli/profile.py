"""`roofline profile`: measure every op of one block on this device, print the table, write results and reports."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import (
    command_line,
    counting,
    detected,
    info,
    progress,
    quiet_listener,
    stderr,
    stdout,
    warn,
)
from roofline.cli.options import (
    Batch,
    Budget,
    CsvOut,
    Device,
    JsonOut,
    Model,
    Plots,
    csv_list,
    default_out_dir,
    writable_dir,
)
from roofline.config import BlockConfig
from roofline.errors import CannotRun, RooflineError
from roofline.results import DeviceInfo, Results


def profile(
    model: Model = "gpt-7b",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (prefill).")] = 2048,
    batch: Batch = 1,
    dtype: Annotated[str | None, typer.Option(help="fp32|tf32|bf16|fp16|fp8 (default bf16 on GPU, fp32 on "
                                                   "CPU).")] = None,
    device: Device = None,
    mode: Annotated[str, typer.Option(help="prefill, decode, or train (forward + backward per op).")] = "prefill",
    kv_len: Annotated[int | None, typer.Option("--kv-len", help="KV-cache length (decode).")] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--no-causal", help="Causal attention mask.")] = None,
    ops: Annotated[str | None, typer.Option(help="Only these ops, comma-separated (see `roofline ops`).")] = None,
    variants: Annotated[str | None, typer.Option(help="Only these variants, comma-separated.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/<device>-<model>-s<N>).")] = None,
    json_out: JsonOut = None,
    csv_out: CsvOut = None,
    budget: Budget = None,
    rounds: Annotated[int, typer.Option(help="Time each op in this many rounds, interleaved across ops: the CI "
                                        "mode, whose run-to-run spread `compare` reads (5 for a gate).")] = 1,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Measure this device's roofs first.")] = False,
    plots: Plots = True,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    counters: Annotated[bool, typer.Option("--counters", help="Then count each op's DRAM/L2/L1 bytes and FLOPs "
                                           "with Nsight Compute (a second, slower pass).")] = False,
    ncu: Annotated[str | None, typer.Option("--ncu", help="Nsight Compute's ncu for --counters (implies it; "
                                            "default: ncu on PATH).")] = None,
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel ranks (2, 4, 8): one per GPU (or CPU process), "
                                    "each profiling its Megatron shard; results merged.")] = 1,
    dp: Annotated[int, typer.Option("--dp", help="Data-parallel ranks (--mode train): whole replicas plus the "
                                    "gradients' all-reduce; results merged.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline stages: --layers blocks split into N stages, one per "
                                    "rank; the send/recv between stages and a 1F1B step measured.")] = 1,
    layers: Annotated[int | None, typer.Option("--layers", help="Blocks in the pipeline (--pp; default 2·N).")] = None,
    microbatches: Annotated[int | None, typer.Option("--microbatches", help="Microbatches per pipeline step, each "
                                                     "of --batch sequences (--pp; default 4·N).")] = None,
) -> None:
    """Profile every op of one Transformer block on this device and place it on the roofline."""
    from roofline.config import make_config
    from roofline.measure import session
    from roofline.ops import plan

    t_start = time.perf_counter()
    dev = detected(device)
    config = make_config(model, seq_len=seq_len, batch=batch, dtype=dtype or ("bf16" if dev.kind == "cuda" else "fp32"),
                         mode=mode, kv_cache_len=kv_len, causal=causal, dp=dp, pp=pp, layers=layers,
                         microbatches=microbatches)
    if tp != 1 or dp != 1 or pp != 1 or _launched_world() > 1:
        return _profile_ranks(config.shard(tp), dev, csv_list(ops), csv_list(variants), out, json_out, csv_out,
                              budget, calibrate, plots, seed, counters or bool(ncu), device, rounds)
    items = plan(config, csv_list(ops), csv_list(variants))
    if not items:
        raise RooflineError("nothing to measure: --ops/--variants selected no (op, variant) of this model")
    _something_fits(items, config, dev)
    settings = session.settings_for(dev, budget, seed, rounds)
    out_dir = writable_dir(out or default_out_dir(dev.slug, config))
    roofs = session.load_roofs(dev, calibrate, quiet_listener(), config)
    with progress(len(items) * rounds) as listener:
        run = session.start(dev, config, out_dir, command_line, settings, listener=listener, roofs=roofs,
                            started=t_start)
        run.measure(items, config)
    res = run.finish()
    problem = _count(res, [(op.name, v.name) for op, v in items], config, out_dir, ncu) if counters or ncu else None
    show(res, out_dir, json_out, csv_out, plots)
    info(f"Wrote {out_dir}/results.json and results.csv in {res.run.wall_s:.1f} s")
    if not res.ok_rows():
        raise CannotRun(f"no op could be measured on {dev.name} (see the notes in {out_dir}/results.json)")
    if problem:
        raise CannotRun(f"no hardware counters: {problem} (timing results are saved in {out_dir})")


def _something_fits(items: list, config: BlockConfig, dev: DeviceInfo) -> None:
    """Refuse, before any folder is made, a run of which no op could fit in the device's free memory."""
    from roofline import fmt
    from roofline.measure.device import free_memory_bytes
    from roofline.measure.variant import predicted_bytes

    free = free_memory_bytes(dev)
    needs = [predicted_bytes(op, variant, config) for op, variant in items]
    if min(needs) > free:
        raise CannotRun(f"nothing fits on {dev.name}: its smallest op needs {fmt.nbytes(min(needs))}, "
                        f"{fmt.nbytes(free)} are free (a smaller --seq-len or --batch?)")


def _count(res: Results, pairs: list[tuple[str, str]], config: BlockConfig, out_dir: Path,
           ncu: str | None) -> str | None:
    """The counters pass (`--counters`): its table on stderr; returns why nothing was counted (None if some was)."""
    from roofline.measure.counters import count
    from roofline.render.table import counters_table

    with counting(len(pairs)) as update:
        problem = count(res, pairs, config, out_dir, ncu, update, lambda m: stderr.print(m, highlight=False,
                                                                                          markup=False))
    if not problem:
        stderr.print(counters_table(res))
    return problem


def show(res: Results, out_dir: Path, json_out: str | None, csv_out: str | None, plots: bool) -> None:
    """--json/--csv (to a file, or '-': stdout instead of the table), the table, then the figures and report."""
    from roofline.render.table import print_results

    if not write_data(res, json_out, csv_out):
        print_results(res, stdout)
    if plots:
        render_files([res], out_dir)


def write_data(res: Results, json_out: str | None, csv_out: str | None) -> bool:
    """--json/--csv to their files, or to stdout for '-'; returns whether stdout got them (then no table)."""
    from roofline import results

    wrote_stdout = False
    for target, text in ((json_out, results.to_json_text), (csv_out, results.to_csv_text)):
        if target == "-":
            sys.stdout.write(text(res) + "\n")
            wrote_stdout = True
        elif target:
            results.atomic_write(Path(target), text(res))
    return wrote_stdout


def render_files(results_list: list[Results], out_dir: Path, kernels: bool = False) -> None:
    """Figures and the HTML report beside results.json; a rendering error is a warning (the results are saved)."""
    from roofline.render.html import render_all

    try:
        for path in render_all(results_list, out_dir, kernels=kernels):
            info(f"Wrote {path}")
    except Exception as exc:
        warn(f"could not render plots/report: {exc}")


def _launched_world() -> int:
    """The world size an external launcher (torchrun, SLURM) started this process in; 0 when none did."""
    from roofline.measure.ranks import external_world

    world = external_world()
    return world[1] if world else 0


def _profile_ranks(shard: BlockConfig, dev: DeviceInfo, ops: list[str] | None, variants: list[str] | None,
                   out: Path | None, json_out: str | None, csv_out: str | None, budget: float | None, calibrate: bool,
                   plots: bool, seed: int, counters: bool, device: str | None, rounds: int = 1) -> None:
    """`profile --tp/--dp/--pp`: one rank per GPU (or CPU process), started here or by an external launcher (then
    only rank 0 prints and writes); the table shows each op's slowest rank."""
    from roofline.analysis.scaling import split_line
    from roofline.measure import session
    from roofline.measure.parallel import join_world, profile_ranks
    from roofline.ops import plan

    if counters:
        raise RooflineError("--counters does not combine with --tp/--dp/--pp (count one GPU's kernels without them)")
    if device not in (None, "cpu", "cuda"):
        raise RooflineError(f"parallel runs use one rank per GPU cuda:0..N-1: use --device cuda or cpu, not {device}")
    if not plan(shard, ops, variants):
        raise RooflineError("nothing to measure: --ops/--variants selected no (op, variant) of this model")
    flag = "-".join(f"{name}{getattr(shard, name)}" for name in ("tp", "dp", "pp") if getattr(shard, name) > 1)
    out_dir = writable_dir(out or default_out_dir(dev.slug, shard, f"-{flag or 'ranks'}"))
    settings = session.settings_for(dev, budget, seed, rounds)
    if _launched_world():
        found = join_world(shard, dev, ops, variants, out_dir, list(command_line), settings, calibrate)
        if found is None:  # not rank 0: rank 0 writes and prints
            return
        res = found
    else:
        res = profile_ranks(shard, dev, ops, variants, out_dir, list(command_line), settings, calibrate,
                            quiet_listener())
    slowest = Results(run=res.run, rows=[r for r in res.rows if r.rank is None])
    show(slowest, out_dir, json_out, csv_out, plots)  # --json/--csv: the max rows; results.json: all
    if "-" not in (json_out, csv_out):
        stdout.print(split_line(slowest))
    info(f"Wrote {out_dir}/results.json (max over ranks, then every rank's rows) in {res.run.wall_s:.1f} s")
