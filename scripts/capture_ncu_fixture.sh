#!/usr/bin/env bash
# Capture a real Nsight Compute raw CSV for tests/fixtures/ncu_h100_raw.csv (run on the GPU machine, < 60 s).
# It profiles layernorm, softmax, qkv_proj and attention (naive + sdpa_cudnn) at seq 2048 in bf16 through the
# same driver as `roofline profile --counters` (scripts/capture_ncu.py), and keeps:
#   $OUT/ncu_fixture.csv      the raw page (`ncu --import … --csv --page raw --print-units base`)
#   $OUT/ncu_fixture.log      ncu's and the worker's output (progress, rejected metrics, errors)
#   $OUT/ncu_metrics.txt      which of our metric names this ncu/GPU knows (`--query-metrics`)
#   $OUT/ncu_fallback.csv     only if the driver failed: a plain ncu run on a few metrics, every kernel, for diagnosis
#   usage: OUT=/tmp/out scripts/capture_ncu_fixture.sh      (NCU=/path/to/ncu to pick one)
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_COLOR=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || echo "pip install -e failed (see pip.log); running from the checkout"
{ "$NCU" --version; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } >"$OUT/ncu_version.txt" 2>&1
cat "$OUT/ncu_version.txt"
METRICS=$(python3 scripts/capture_ncu.py --metrics)
BASES=$(echo "$METRICS" | tr ',' '\n' | sed 's/\.sum$//' | paste -sd, -)
timeout 15 "$NCU" --query-metrics --query-metrics-mode suffix --metrics "$BASES" >"$OUT/ncu_metrics.txt" 2>&1
echo "query-metrics: exit $? ($(wc -l <"$OUT/ncu_metrics.txt") lines)"
CAP="$OUT/capture"
t0=$(date +%s)
timeout 40 python3 scripts/capture_ncu.py --ncu "$NCU" --seq-len 2048 --dtype bf16 \
  --ops layernorm,softmax,qkv_proj,attention --variants torch,naive,sdpa_cudnn --out "$CAP" 2>"$OUT/capture.stderr"
echo "capture: exit $?, $(( $(date +%s) - t0 )) s"
tail -n 5 "$OUT/capture.stderr"
[ -f "$CAP/ncu.log" ] && cp "$CAP/ncu.log" "$OUT/ncu_fixture.log"
if [ -s "$CAP/ncu_raw.csv" ]; then
  cp "$CAP/ncu_raw.csv" "$OUT/ncu_fixture.csv"
  echo "wrote $OUT/ncu_fixture.csv ($(wc -l <"$OUT/ncu_fixture.csv") lines)"
else
  echo "no CSV from the driver: plain ncu on every kernel, a few metrics, for diagnosis"
  timeout 15 "$NCU" --clock-control none --nvtx --csv --page raw --print-units base \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum \
    python3 -m roofline.measure.ncu_worker "$CAP/plan.json" >"$OUT/ncu_fallback.csv" 2>&1
  echo "fallback: exit $?"; head -c 1500 "$OUT/ncu_fallback.csv"
fi
