"""Probe (GPU): a Hugging Face Llama layer under torch.profiler — kernels, their aten ops and module paths.

    python3 scripts/probe_trace.py --seq-len 8192 --attn sdpa
"""

from __future__ import annotations

import argparse
import collections
import time

import torch


def build(attn: str, layers: int, device: str):
    from transformers import AutoModel, LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      num_hidden_layers=layers, vocab_size=128, max_position_embeddings=131072,
                      rope_theta=500000.0, attn_implementation=attn)
    with torch.device(device):
        model = AutoModel.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    dev = a.device
    t0 = time.perf_counter()
    model = build(a.attn, a.layers, dev)
    print(f"built in {time.perf_counter() - t0:.1f} s")
    x = torch.randn(1, a.seq_len, 4096, device=dev, dtype=torch.bfloat16)
    stack: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def pre(m, args, kwargs=None, name=name):  # noqa: ANN001
            rf = torch.autograd.profiler.record_function(f"module::{name}")
            rf.__enter__()
            stack.append(rf)

        def post(m, args, out, name=name):  # noqa: ANN001
            stack.pop().__exit__(None, None, None)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    with torch.no_grad():
        for _ in range(2):
            model(inputs_embeds=x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(5):
            start.record()
            model(inputs_embeds=x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        print(f"event-timed forward: median {sorted(times)[2]:.3f} ms  {times}")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            model(inputs_embeds=x)
            torch.cuda.synchronize()
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in kernels) / 1e3
    print(f"{len(kernels)} device events, summed {total:.3f} ms")
    by_parent: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for k in kernels:
        cpu = k.cpu_parent
        aten, module = "?", "?"
        node = cpu
        while node is not None:
            if aten == "?" and node.name.startswith("aten::"):
                aten = node.name
            if node.name.startswith("module::"):
                module = node.name[8:]
                break
            node = node.cpu_parent
        # walk up the full chain for the outermost aten op
        node, outer = cpu, None
        while node is not None:
            if node.name.startswith("aten::"):
                outer = node.name
            node = node.cpu_parent
        by_parent[(module, f"{outer or aten} > {k.name[:60]}")].append(k.device_time / 1e3)
    rows = sorted(by_parent.items(), key=lambda kv: -sum(kv[1]))
    for (module, what), ts in rows[:45]:
        print(f"{sum(ts):9.3f} ms  x{len(ts):<3} {module:32s} {what}")
    first = kernels[0]
    print("kernel attrs:", [a for a in dir(first) if not a.startswith("_")][:60])
    print("shapes example:", next((e.input_shapes for e in events if e.name == "aten::mm"), None))
    print(torch.cuda.max_memory_allocated() / 1e9, "GB peak")


if __name__ == "__main__":
    main()
