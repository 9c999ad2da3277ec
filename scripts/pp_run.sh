#!/usr/bin/env bash
# Pipeline-parallel runs on one machine of 2 or 4 GPUs (issue #17), packed into $OUT/pp.tgz; NOT RUN YET (no
# machine of several GPUs was lent while it was written):
#   1. the interconnect roofs: all-reduce / all-gather / reduce-scatter bus bandwidth and the p2p (send/recv)
#      bandwidth over 2 (and 4) GPUs, 1 GiB buffers, NCCL;
#   2. the default block (gpt-7b, seq 2048) on one GPU: the op profile the pipeline model predicts from;
#   3. `--pp 2` (and on 4 GPUs `--pp 4` and `--tp 2 --pp 2`) of 4 layers, in MODES (train: 1F1B; prefill), with
#      the default microbatches (4·N);
#   4. `roofline report` of each pipeline run beside the one-GPU run (the model from the single-GPU profile).
# usage: scripts/pp_run.sh     env: GPUS (all visible), MODEL (gpt-7b), SEQ (2048), LAYERS (4), MODES ("train
#        prefill"), BUDGET (0.3 s per variant), VARIANTS (torch,naive,sdpa_flash,eager: the unfused block and a
#        fused attention), STEP_TIMEOUT (300 s)
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_COLOR=1 NCCL_NVLS_ENABLE=0
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}; MODEL=${MODEL:-gpt-7b}; SEQ=${SEQ:-2048}; LAYERS=${LAYERS:-4}
MODES=${MODES:-train prefill}; BUDGET=${BUDGET:-0.3}; STEP_TIMEOUT=${STEP_TIMEOUT:-300}
VARIANTS=${VARIANTS-torch,naive,sdpa_flash,eager}
# shellcheck source=scripts/gpu_steps.sh
source "$(dirname "$0")/gpu_steps.sh"
gpu_setup "${OUT:-/tmp/out}/pp"
ranks=2; [ "$GPUS" -ge 4 ] && ranks="2, 4"
step interconnect python3 -c "
from roofline.measure import device, interconnect
interconnect.calibrate_interconnect(device.detect('cuda'), ranks=($ranks,), force=True, say=print)"
args=(--model "$MODEL" --seq-len "$SEQ" --budget "$BUDGET")
[ -n "$VARIANTS" ] && args+=(--variants "$VARIANTS")
runs=("pp2:--pp 2"); [ "$GPUS" -ge 4 ] && runs+=("pp4:--pp 4" "tp2-pp2:--tp 2 --pp 2")
for mode in $MODES; do
  step "$mode-single" python3 -m roofline profile --mode "$mode" "${args[@]}" --out "$R/$MODEL-$mode-single"
  for run in "${runs[@]}"; do
    name=${run%%:*}; read -r -a flags <<<"${run#*:}"
    step "$mode-$name" python3 -m roofline profile --mode "$mode" "${flags[@]}" --layers "$LAYERS" "${args[@]}" \
      --out "$R/$MODEL-$mode-$name"
    step "report-$mode-$name" python3 -m roofline report "$R/$MODEL-$mode-single/results.json" \
      "$R/$MODEL-$mode-$name/results.json" --out "$R/$MODEL-$mode-$name/with-single"
  done
done
tar czf "${OUT:-/tmp/out}/pp.tgz" -C "${OUT:-/tmp/out}" pp && rm -rf "$R"
