"""The process Nsight Compute profiles for `profile --counters`: `python -m roofline.measure.ncu_worker PLAN.json`.

It calls each planned closure once to warm up (compile, autotune, cuDNN plans: not profiled), then once inside the
NVTX push/pop range `roofline:<op>:<variant>`; ncu profiles only kernels inside such ranges. It prints one tagged
line per variant (start, skipped, failed), which the counters pass reads for its progress and its notes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RANGE_PREFIX = "roofline"
WORKER_TAG = "roofline-worker:"


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


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
