"""`roofline ops`: the op catalog — every op of a model's block, its FLOPs and bytes formulas, its variants."""

from __future__ import annotations

from typing import Annotated

import typer

from roofline.cli.console import stdout


def list_ops(
    model: Annotated[str, typer.Option(help="Model preset (decides e.g. GELU vs SwiGLU).")] = "gpt-7b",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Sequence length for the example numbers.")] = 2048,
    batch: Annotated[int, typer.Option(help="Sequences per batch.")] = 1,
    kv_len: Annotated[int | None, typer.Option("--kv-len", help="KV-cache length (--mode decode).")] = None,
    dtype: Annotated[str, typer.Option(help="Dtype for the example bytes.")] = "bf16",
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel ranks: list one rank's shard of the block, "
                                    "with its all-reduces.")] = 1,
    mode: Annotated[str, typer.Option(help="prefill, decode (one new token against --kv-len) or train: train adds "
                                      "each op's backward formulas, its numbers are forward + backward.")] = "prefill",
    dp: Annotated[int, typer.Option("--dp", help="Data-parallel ranks (--mode train): adds the gradients' "
                                    "all-reduce.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline stages: list one rank's stage, its layers' ops and "
                                    "the send/recv at its boundary.")] = 1,
    layers: Annotated[int | None, typer.Option("--layers", help="Blocks in the pipeline (--pp; default 2·N).")] = None,
) -> None:
    """The op catalog: every op, its FLOPs and bytes formulas, its variants, with numbers for one shape."""
    from roofline.config import make_config
    from roofline.ops import describe
    from roofline.render.catalog import catalog_table

    full = make_config(model, seq_len=seq_len, batch=batch, kv_cache_len=kv_len, dtype=dtype, mode=mode, dp=dp, pp=pp,
                       layers=layers)
    c = full.shard(tp)
    shard = (f" · TP={tp}, one rank's shard: {c.n_heads} of {full.n_heads} heads, FFN {c.ffn_dim} of {full.ffn_dim}"
             if tp > 1 else "")
    if dp > 1:
        shard += f" · DP={dp}"
    if pp > 1:
        shard += (f" · PP={pp}, one rank's stage: {c.stage_layers} of {c.layers} layers, per microbatch of batch "
                  f"{c.batch}")
    caption = (f"n = {tp} ranks. Shapes are one rank's; a collective's bytes are NCCL bus bytes, what each rank "
               "sends over its links (its roof: the interconnect's bus bandwidth)." if tp > 1 else
               "Collectives (the all-reduces after out_proj and ffn_down) appear with --tp N.")
    if pp > 1:
        caption += (f" ×k: the op runs k times per microbatch on this stage ({c.stage_layers} layers × its times "
                    "per block); p2p_activation crosses the stage's boundary once per microbatch (bytes per "
                    "direction, its roof: the point-to-point bandwidth between neighbouring stages).")
    shape = f"kv {c.kv_len}" if c.mode == "decode" else f"seq {c.seq_len}"
    stdout.print(catalog_table(describe(c), f"Op catalog · {c.name} · {c.mode} · batch {c.batch} · {shape} · "
                               f"{c.dtype}{shard}", caption, stdout.width))
