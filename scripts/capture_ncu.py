"""Profile a few ops under ncu without the timing pass and keep the raw CSV (scripts/capture_ncu_fixture.sh runs it).

    python3 scripts/capture_ncu.py --ncu /usr/local/cuda/bin/ncu --seq-len 2048 --out capture
    python3 scripts/capture_ncu.py --metrics          # the metric names `profile --counters` asks ncu for
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from roofline.config import make_config
from roofline.measure import counters, ncu
from roofline.ops import plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("--model", "gpt-7b"), ("--dtype", "bf16"), ("--ops", "layernorm,softmax,qkv_proj,attention"),
                          ("--variants", "torch,naive,sdpa_cudnn"), ("--out", "ncu-capture"), ("--ncu", None)):
        parser.add_argument(name, default=default)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--metrics", action="store_true", help="print the metric names and exit")
    args = parser.parse_args()
    if args.metrics:
        print(",".join(counters.METRICS))
        return 0
    config = make_config(args.model, seq_len=args.seq_len, dtype=args.dtype)
    pairs = [(op.name, v.name) for op, v in plan(config, args.ops.split(","), args.variants.split(","))]
    out = Path(args.out)
    counters.write_plan(out / "plan.json", config, pairs, "cuda")
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        run = counters.profile_plan(args.ncu, out / "plan.json", len(pairs), lambda *a: None, say)
    except ncu.NcuProblem as exc:
        print(f"counters: {exc}", file=sys.stderr)
        return 3
    (out / "ncu_raw.csv").write_text(run.csv_text)
    kernels = ncu.parse_raw_csv(run.csv_text)
    print(f"{len(kernels)} kernels in {run.wall_s:.1f} s; metrics dropped: {run.dropped_metrics or 'none'}")
    for (op, variant), mine in counters.group_by_op(kernels).items():
        print(f"{op}:{variant}", json.dumps(counters.op_counters(mine)))
    return 0 if kernels else 3


if __name__ == "__main__":
    sys.exit(main())
