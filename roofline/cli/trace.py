"""`roofline trace`: a user's model on the roofline — a Hugging Face layer or any module, kernel by kernel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from roofline.cli.console import command_line, detected, info, quiet_listener, stdout, warn
from roofline.cli.options import Batch, CsvOut, Device, JsonOut, Plots, writable_dir
from roofline.errors import CannotRun, RooflineError


def trace(
    hf: Annotated[str | None, typer.Option("--hf", help="A Hugging Face config.json (a path, a folder, a model of "
                                           "configs/models, or a model id in the local HF cache): its decoder "
                                           "layers with random weights.")] = None,
    module: Annotated[str | None, typer.Option("--module", help="pkg.module:factory, a function returning "
                                               "(module or callable, inputs); it may take device, dtype, seq_len, "
                                               "batch, mode.")] = None,
    layers: Annotated[int, typer.Option(help="Decoder layers to build (--hf).")] = 1,
    attn_impl: Annotated[str, typer.Option("--attn-impl", help="eager, sdpa or flash_attention_2 (--hf; where "
                                           "transformers has it for the model).")] = "sdpa",
    mode: Annotated[str, typer.Option(help="prefill, decode (one token against --kv-len cached ones) or train "
                                      "(forward + backward).")] = "prefill",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 2048,
    batch: Batch = 1,
    kv_len: Annotated[int | None, typer.Option("--kv-len", help="KV-cache length (decode).")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32|bf16|fp16 (default bf16 on GPU, fp32 on CPU).")] = None,
    device: Device = None,
    repeats: Annotated[int | None, typer.Option(help="Profiled steps (a call's time is their median; default 3 on "
                                                "a GPU, 2 on a CPU).")] = None,
    kernels: Annotated[bool, typer.Option("--kernels", help="Print every call and plot one point per call.")] = False,
    compare_profile: Annotated[Path | None, typer.Option("--compare-profile", help="A `roofline profile` "
                                                         "results.json of the same shapes: the textbook block "
                                                         "beside yours.")] = None,
    with_profile: Annotated[bool, typer.Option("--with-profile", help="Also profile the catalog's block of the same "
                                               "config (--hf) and set it beside.")] = False,
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/<device>-trace-<name>-...).")]
    = None,
    json_out: JsonOut = None,
    csv_out: CsvOut = None,
    plots: Plots = True,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Measure this device's roofs first.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random weights and inputs.")] = 0,
) -> None:
    """Trace your own model: every kernel of a real layer, its module, FLOPs and bytes, on the roofline."""
    from roofline import results
    from roofline.analysis.trace import textbook
    from roofline.cli.profile import render_files, write_data
    from roofline.measure.device import free_memory_bytes
    from roofline.measure.trace import trace as run_trace
    from roofline.render.trace import print_trace

    t_start = time.perf_counter()
    if (hf is None) == (module is None):
        raise RooflineError("give one target: --hf CONFIG (a Hugging Face model's layers) or --module pkg.mod:factory")
    profile_res = results.load(compare_profile) if compare_profile else None
    dev = detected(device)
    shape = {"seq_len": seq_len, "batch": batch, "dtype": dtype or ("bf16" if dev.kind == "cuda" else "fp32"),
             "mode": mode, "kv_cache_len": kv_len}
    target = _target(hf, module, layers, attn_impl, shape, dev, free_memory_bytes(dev), seed)
    out_dir = writable_dir(out or _default_out(dev.slug, target.config.name, attn_impl if hf else "", mode, seq_len))
    res = run_trace(target, dev, out_dir, list(command_line), repeats, calibrate, quiet_listener(), seed)
    if with_profile and hf is not None:
        profile_res = _profile_beside(target.config, dev, out_dir / "profile")
    elif with_profile:
        warn("--with-profile needs --hf (the catalog has no block for a user's module)")
    if profile_res is not None and res.run.trace is not None:
        res.run.trace.textbook = textbook(res, profile_res, str(compare_profile or out_dir / "profile"))
    res.run.wall_s = time.perf_counter() - t_start
    results.save(res, out_dir)
    if not write_data(res, json_out, csv_out):
        print_trace(res, stdout, kernels)
    if plots:
        render_files([res], out_dir, kernels=kernels)
    info(f"Wrote {out_dir}/results.json and results.csv in {res.run.wall_s:.1f} s")
    if not res.ok_rows():
        raise CannotRun(f"no kernel of {target.name} could be timed (see {out_dir}/results.json)")


def _target(hf: str | None, module: str | None, layers: int, attn_impl: str, shape: dict[str, object], dev,  # type: ignore
            free_bytes: int, seed: int):  # type: ignore[no-untyped-def]
    from roofline.config import BlockConfig, validate
    from roofline.measure import hf as hf_layers
    from roofline.measure.targets import from_factory

    if shape["dtype"] == "fp8":
        raise RooflineError("trace runs a model as it is written: --dtype fp32, tf32, bf16 or fp16")
    if shape["mode"] == "decode" and not shape["kv_cache_len"]:
        raise RooflineError("decode mode needs --kv-len, the KV-cache length (a positive integer)")
    shape = {**shape, "kv_cache_len": shape["kv_cache_len"] or 0}
    if hf is not None:
        return hf_layers.build(hf, layers, attn_impl, shape, dev.torch_device, free_bytes, seed)
    config = validate(BlockConfig(name=str(module).split(":")[-1], **shape))  # type: ignore[arg-type]
    return from_factory(str(module), dev.torch_device, config)


def _default_out(device_slug: str, name: str, attn_impl: str, mode: str, seq_len: int) -> Path:
    parts = ["trace", name.replace("/", "-"), *([attn_impl] if attn_impl else []), *([mode] if mode != "prefill"
                                                                                      else []), f"s{seq_len}"]
    return Path("reports") / f"{device_slug}-{'-'.join(parts)}"


def _profile_beside(config, dev, out_dir: Path):  # type: ignore[no-untyped-def]
    """`profile` of the catalog's block of the traced config, into out_dir (results saved as measured)."""
    from roofline.measure import session
    from roofline.ops import plan

    info(f"Profiling the catalog's {config.name} block beside it ({out_dir})")
    settings = session.settings_for(dev, None, 0)
    run = session.start(dev, config, writable_dir(out_dir), [*command_line, "(--with-profile)"], settings,
                        listener=quiet_listener())
    run.measure(plan(config), config)
    return run.finish()
