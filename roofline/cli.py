"""The `roofline` command: thin typer layer — parse options, call one function, render, map errors to exit codes.

Data goes to stdout (the table, or --json/--csv with '-'); progress and warnings to stderr. Exit codes:
0 ok, 1 regression (compare), 2 bad input (one line, no traceback), 3 could not run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from roofline import __version__
from roofline.errors import EXIT_BAD_INPUT, CannotRun, RooflineError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Where a Transformer block spends its time on a GPU, and why.")
stdout = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 220)
command_line: list[str] = []  # the command line, recorded in results.json
stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


def info(message: str) -> None:
    stderr.print(message, highlight=False, style="dim")


def _version(value: bool) -> None:
    if value:
        stdout.print(f"roofline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Where a Transformer block spends its time on a GPU, and why."""


def csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".roofline-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RooflineError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


def default_out_dir(device_slug: str, config: object) -> Path:
    c = config
    name = f"{device_slug}-{c.name}-s{c.seq_len}"  # type: ignore[attr-defined]
    if c.mode == "decode":  # type: ignore[attr-defined]
        name = f"{device_slug}-{c.name}-decode-b{c.batch}-kv{c.kv_cache_len}"  # type: ignore[attr-defined]
    return Path("reports") / name


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="Model preset in configs/models, or a .toml path.")] = "gpt-7b",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (prefill).")] = 2048,
    batch: Annotated[int, typer.Option(help="Sequences per batch.")] = 1,
    dtype: Annotated[str | None, typer.Option(help="fp32|tf32|bf16|fp16 (default bf16 on GPU, fp32 on CPU).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: the GPU if any).")] = None,
    mode: Annotated[str, typer.Option(help="prefill, decode, or train (forward + backward per op).")] = "prefill",
    kv_len: Annotated[int | None, typer.Option("--kv-len", help="KV-cache length (decode).")] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--no-causal", help="Causal attention mask.")] = None,
    ops: Annotated[str | None, typer.Option(help="Only these ops, comma-separated (see `roofline ops`).")] = None,
    variants: Annotated[str | None, typer.Option(help="Only these variants, comma-separated.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/<device>-<model>-s<N>).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write results JSON here ('-' = stdout).")] = None,
    csv_out: Annotated[str | None, typer.Option("--csv", help="Also write results CSV here ('-' = stdout).")] = None,
    budget: Annotated[float | None, typer.Option(help="Timing budget per variant, seconds.")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Measure this device's roofs first.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write roofline.png/.svg and report.html.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    counters: Annotated[bool, typer.Option("--counters", help="Then count each op's DRAM/L2/L1 bytes and FLOPs "
                                           "with Nsight Compute (a second, slower pass).")] = False,
    ncu: Annotated[str | None, typer.Option("--ncu", help="Nsight Compute's ncu for --counters (implies it; "
                                            "default: ncu on PATH).")] = None,
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel ranks (2, 4, 8): one per GPU (or CPU process), "
                                    "each profiling its Megatron shard; results merged.")] = 1,
    dp: Annotated[int, typer.Option("--dp", help="Data-parallel ranks (--mode train): whole replicas plus the "
                                    "gradients' all-reduce; results merged.")] = 1,
) -> None:
    """Profile every op of one Transformer block on this device and place it on the roofline."""
    if tp != 1 or dp != 1:
        from roofline.parallel import run_tp

        return run_tp(tp, model, dict(seq_len=seq_len, batch=batch, dtype=dtype, mode=mode, kv_cache_len=kv_len,
                                      causal=causal, dp=dp), device, csv_list(ops), csv_list(variants), out, json_out,
                      csv_out, budget, calibrate, plots, seed, counters or bool(ncu), list(command_line))
    from roofline import counters as counters_pass
    from roofline import device as devices
    from roofline import measure, results
    from roofline.config import make_config
    from roofline.ops import plan

    t_start = time.perf_counter()
    dev = devices.detect(device)
    for w in dev.warnings:
        warn(w)
    config = make_config(model, seq_len=seq_len, batch=batch, dtype=dtype or ("bf16" if dev.kind == "cuda" else "fp32"),
                         mode=mode, kv_cache_len=kv_len, causal=causal)
    items = plan(config, csv_list(ops), csv_list(variants))
    if not items:
        raise RooflineError("nothing to measure: --ops/--variants selected no (op, variant) of this model")
    settings = measure.Settings.for_device(dev, budget)
    out_dir = writable_dir(out or default_out_dir(dev.slug, config))

    roofs, measured = measure.load_roofs(dev, calibrate, warn, info, config)
    run = measure.run_metadata(config, dev, roofs, settings, command_line, measured)
    res = results.Results(run=run)
    others = run["clocks_at_start"].get("other_processes")  # type: ignore[union-attr]
    if others:
        warn(f"{others} other process(es) are using {dev.name}: timings may be disturbed")
        run["warnings"].append(f"{others} other process(es) used the GPU at start")  # type: ignore[union-attr]

    def on_row(row: results.Row) -> None:
        res.rows.append(row)
        results.save(res, out_dir)

    run_with_progress(items, config, dev, roofs, settings, on_row, measure.run_plan)
    res.run["wall_s"] = time.perf_counter() - t_start
    results.save(res, out_dir)
    not_counted = counters_pass.run_counters_pass(res, items, config, out_dir, ncu, stderr) if counters or ncu else None
    _report_run(res, out_dir, json_out, csv_out, plots)
    info(f"Wrote {out_dir}/results.json and results.csv in {res.run['wall_s']:.1f} s")
    if not res.ok_rows():
        raise CannotRun(f"no op could be measured on {dev.name} (see the notes in {out_dir}/results.json)")
    if not_counted:
        raise not_counted


def run_with_progress(items, config, dev, roofs, settings, on_row, run_plan) -> None:  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=stderr, transient=False)
    with progress:
        task = progress.add_task("profiling", total=len(items))

        def on_start(op, variant) -> None:  # type: ignore[no-untyped-def]
            progress.update(task, description=f"{op.name} · {variant.name}")

        def on_row_progress(row) -> None:  # type: ignore[no-untyped-def]
            on_row(row)
            progress.advance(task)
            if row.status == "failed":
                progress.console.print(f"[red]failed[/] {row.op} · {row.variant}: {row.note}", highlight=False)
            if row.throttle:
                progress.console.print(f"[yellow]throttled[/] during {row.op} · {row.variant}: {row.throttle}")

        run_plan(items, config, dev, roofs, settings, on_start=on_start, on_row=on_row_progress)
        progress.update(task, description="done")


def _report_run(res, out_dir: Path, json_out: str | None, csv_out: str | None, plots: bool) -> None:  # type: ignore[no-untyped-def]
    from roofline import results
    from roofline.table import print_results

    wrote_stdout = False
    for target, text in ((json_out, results.to_json_text), (csv_out, results.to_csv_text)):
        if target == "-":
            sys.stdout.write(text(res) + "\n")
            wrote_stdout = True
        elif target:
            results.atomic_write(Path(target), text(res))
    if not wrote_stdout:
        print_results(res, stdout)
    if plots:
        _render_files(res, out_dir)


def _render_files(res, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Plots and the HTML report beside results.json; a rendering error is a warning (the results are saved)."""
    from roofline import report

    try:
        for path in report.render_all([res], out_dir):
            info(f"Wrote {path}")
    except Exception as exc:
        warn(f"could not render plots/report: {type(exc).__name__}: {exc}")


@app.command("ops")
def list_ops(
    model: Annotated[str, typer.Option(help="Model preset (decides e.g. GELU vs SwiGLU).")] = "gpt-7b",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Sequence length for the example numbers.")] = 2048,
    dtype: Annotated[str, typer.Option(help="Dtype for the example bytes.")] = "bf16",
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel ranks: list one rank's shard of the block, "
                                    "with its all-reduces.")] = 1,
    mode: Annotated[str, typer.Option(help="prefill or train: train adds each op's backward formulas, and its "
                                      "numbers are forward + backward.")] = "prefill",
) -> None:
    """The op catalog: every op, its FLOPs and bytes formulas, its variants, with numbers for one shape."""
    from rich.markup import escape
    from rich.table import Table

    from roofline import fmt
    from roofline.config import make_config
    from roofline.ops import ops_for

    full = make_config(model, seq_len=seq_len, dtype=dtype, mode=mode)
    c = full.shard(tp)
    shard = (f" · TP={tp}, one rank's shard: {c.n_heads} of {full.n_heads} heads, FFN {c.ffn_dim} of {full.ffn_dim}"
             if tp > 1 else "")
    t = Table(title=f"Op catalog · {c.name} · {c.mode} · seq {c.seq_len} · {c.dtype}{shard}", header_style="bold",
              show_lines=True)
    for col in ("op", "unit", "FLOPs", "min bytes", "AI", "variants", "formulas"):
        t.add_column(col, overflow="fold")
    for op in ops_for(c):
        variants = ", ".join(v.name + (" ⚡" if v.fused else "") for v in op.variants)
        formulas = f"{op.doc}\nFLOPs = {op.flops_formula}\nbytes = {op.bytes_formula}"
        if c.mode == "train" and op.backward_flops_formula:
            formulas += f"\nbackward FLOPs = {op.backward_flops_formula}\nbackward bytes = {op.backward_bytes_formula}"
        if op.replaces:
            formulas += f"\nreplaces: {' → '.join(n for n in op.replaces)}"
        flops, nbytes = op.step_flops(c), op.step_bytes(c)
        t.add_row(op.name + (f" ×{op.per_block}" if op.per_block > 1 else ""), op.unit, fmt.flops(flops),
                  fmt.nbytes(nbytes) + (" bus" if op.unit == "comm" else ""), fmt.intensity(flops / nbytes),
                  variants, escape(formulas))  # formulas hold [b, h, q, kv]: text, not rich markup
    t.caption = (f"n = {tp} ranks. Shapes are one rank's; a collective's bytes are NCCL bus bytes, what each rank "
                 "sends over its links (its roof: the interconnect's bus bandwidth)." if tp > 1 else
                 "Collectives (the all-reduces after out_proj and ffn_down) appear with --tp N.")
    stdout.print(t)


@app.command()
def devices(device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None) -> None:
    """What was detected: name, SMs, memory, clocks, datasheet peaks and measured roofs side by side."""
    from rich.table import Table

    from roofline import ceilings, fmt
    from roofline import device as devices_mod

    dev = devices_mod.detect(device)
    facts = Table(title=dev.name, show_header=False, title_style="bold")
    facts.add_column("field", style="bold")
    facts.add_column("value")
    for key, value in dev.to_dict().items():
        if key not in ("peak_flops", "warnings") and value not in ("", 0, 0.0, None):
            facts.add_row(key, fmt.bandwidth(value) if "bandwidth" in key else str(value))
    stdout.print(facts)
    measured = ceilings.load_cached(dev, warn)
    roofs = Table(title="Roofs", header_style="bold")
    for col in ("roof", "datasheet", "measured", "measured / datasheet"):
        roofs.add_column(col, justify="left" if col == "roof" else "right")
    keys = sorted(set(dev.peak_flops) | set(measured.peak_flops if measured else {}))
    for key in keys:
        ds, me = dev.peak_flops.get(key), (measured.peak_flops.get(key) if measured else None)
        roofs.add_row(key, fmt.flops_rate(ds), fmt.flops_rate(me), fmt.pct(100 * me / ds) if ds and me else "–")
    me_bw = measured.memory_bandwidth if measured else None
    roofs.add_row("memory (copy)", fmt.bandwidth(dev.memory_bandwidth or None), fmt.bandwidth(me_bw),
                  fmt.pct(100 * me_bw / dev.memory_bandwidth) if me_bw and dev.memory_bandwidth else "–")
    stdout.print(roofs)
    if not measured:
        info("No measured roofs cached for this device: run `roofline calibrate`.")
    for w in dev.warnings:
        warn(w)


@app.command("calibrate")
def calibrate_cmd(
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Measure again even when cached.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write ceilings.json into this folder.")] = None,
) -> None:
    """Measure this device's roofs (bandwidths, GEMM FLOP/s per dtype) once; cached per device."""
    from roofline import ceilings
    from roofline import device as devices_mod

    dev = devices_mod.detect(device)
    t0 = time.perf_counter()
    measured, cached = ceilings.get_ceilings(dev, force=force, warn=warn, say=lambda m: info(f"  calibrating: {m}"))
    info(f"{'Cached' if cached else 'Measured'} roofs of {dev.name} in {time.perf_counter() - t0:.1f} s "
         f"({ceilings.cache_path(dev)})")
    if out:
        ceilings.save(measured, writable_dir(out) / "ceilings.json")
    import torch

    if dev.kind == "cuda" and torch.cuda.device_count() > 1:  # the interconnect roof for `profile --tp N`
        from roofline import parallel

        parallel.calibrate_interconnect(dev, force=force, say=info)
    devices(device)


# Commands that live in their own modules register here (keep heavy imports inside the command functions).
# --- command registry (one block per module) ---
from roofline.compare import compare_command  # noqa: E402

app.command("compare")(compare_command)
from roofline.report import report_command  # noqa: E402

app.command("report")(report_command)
from roofline.sweep import sweep_command  # noqa: E402

app.command("sweep")(sweep_command)
from roofline.tp_scaling import tp_scaling_command  # noqa: E402

app.command("tp-scaling")(tp_scaling_command)
# --- end of command registry ---


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every user-facing error into one line and an exit code.

    Typer raises click's exception classes, which newer typer releases vendor (typer._click) instead of
    importing click: they are recognised by shape (exit_code, format_message), not by import.
    """
    args = sys.argv[1:] if argv is None else argv
    command_line[:] = args
    try:
        result = app(args=args, prog_name="roofline", standalone_mode=False)
    except RooflineError as exc:
        stderr.print(f"roofline: error: {exc}", highlight=False, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.print("roofline: interrupted (results measured so far are saved)")
        return 130
    except Exception as exc:
        name = type(exc).__name__
        if name == "Exit":
            return int(getattr(exc, "exit_code", 0) or 0)
        if name == "Abort":
            stderr.print("roofline: aborted")
            return 130
        if name == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
            if name == "NoArgsIsHelpError":
                stderr.print(exc.format_message(), highlight=False, markup=False)  # type: ignore[attr-defined]
                return EXIT_BAD_INPUT
            raise
        message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
        stderr.print(f"roofline: error: {message}", highlight=False, markup=False)
        return EXIT_BAD_INPUT
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
