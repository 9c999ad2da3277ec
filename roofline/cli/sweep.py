"""`roofline sweep`: time and peak memory of the attention variants and the whole block against N (and dtypes)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import command_line, detected, info, progress, quiet_listener, stdout
from roofline.cli.options import (
    Batch,
    Budget,
    CsvOut,
    Device,
    JsonOut,
    Model,
    csv_list,
    fresh,
    parse_seq_lens,
    writable_dir,
)
from roofline.errors import CannotRun

DEFAULT_SEQ_LENS = "1024,2048,4096,8192,16384,32768"


def sweep(
    model: Model = "gpt-7b",
    seq_len: Annotated[str, typer.Option("--seq-len", help="Sequence lengths N, comma-separated.")]
    = DEFAULT_SEQ_LENS,
    dtype: Annotated[str | None, typer.Option(help="Dtypes, comma-separated: fp32|tf32|bf16|fp16|fp8 "
                                                   "(default bf16 on GPU, fp32 on CPU).")] = None,
    batch: Batch = 1,
    device: Device = None,
    variants: Annotated[str | None, typer.Option(help="Attention variants to sweep, comma-separated "
                                                      "(default all).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/<device>-<model>-sweep).")]
    = None,
    budget: Budget = None,
    block: Annotated[bool, typer.Option("--block/--no-block", help="Also every other op of the block, per N.")]
    = True,
    json_out: JsonOut = None,
    csv_out: CsvOut = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write sweep.png/.svg.")] = True,
) -> None:
    """Time and peak memory of every attention variant and of the whole block against N (log-log slopes)."""
    from roofline import fmt, results
    from roofline.measure import session
    from roofline.measure.device import free_memory_bytes
    from roofline.measure.sweep import plan_sweep, predicted_skips, run_sweep
    from roofline.render.html import write_sweep_figures
    from roofline.render.table import sweep_table
    from roofline.results import SweepGrid

    t_start = time.perf_counter()
    dev = detected(device)
    dtypes = list(dict.fromkeys(csv_list(dtype) or ["bf16" if dev.kind == "cuda" else "fp32"]))
    points = plan_sweep(model, parse_seq_lens(seq_len), dtypes, batch, csv_list(variants), block)
    first = points[0].config
    out_dir = writable_dir(out or fresh(Path("reports") / f"{dev.slug}-{first.name}-sweep"))
    roofs = session.load_roofs(dev, False, quiet_listener(), first)
    with progress(sum(len(p.items) for p in points)) as listener:
        run = session.start(dev, first, out_dir, command_line, session.settings_for(dev, budget), listener=listener,
                            roofs=roofs, started=t_start)
        run.results.run.sweep = SweepGrid(sorted({p.config.seq_len for p in points}), dtypes, block,
                                          csv_list(variants))
        if moe_line := fmt.moe_line(run.results.run):
            info(moe_line)
        free = free_memory_bytes(dev)
        for s in predicted_skips(points, free):
            info(f"{s.op} · {s.variant} at N={s.seq_len} ({s.dtype}) would need {s.need_bytes / 1e9:.1f} GB, "
                 f"{free / 1e9:.1f} GB free: skipped before allocating")
        run_sweep(run, points, lambda c: listener.info(f"N = {c.seq_len} · {c.dtype}"))
    res = run.finish()
    for target, text in ((json_out, results.to_json_text), (csv_out, results.to_csv_text)):
        if target == "-":
            sys.stdout.write(text(res) + "\n")
        elif target:
            results.atomic_write(Path(target), text(res))
    if "-" not in (json_out, csv_out):
        stdout.print(sweep_table(res))
    if plots and res.ok_rows():
        for path in write_sweep_figures(res, out_dir):
            info(f"Wrote {path}")
    info(f"Wrote {out_dir}/results.json and results.csv in {res.run.wall_s:.1f} s")
    if not res.ok_rows():
        raise CannotRun(f"nothing could be measured on {dev.name} (see the notes in {out_dir}/results.json)")
