#!/usr/bin/env bash
# Tensor-parallel runs on one 4-GPU machine (issue #8), packed into $OUT/tp.tgz; about 3–5 minutes on 4×H100:
#   1. the interconnect roof: all-reduce / all-gather / reduce-scatter bus bandwidth over 2 and 4 GPUs (1 GiB, NCCL);
#   2. `roofline profile` of gpt-7b at seq 8192 with TP = 1, 2, 4 (TP > 1: one rank per GPU, NVLink multicast off);
#   3. `roofline tp-scaling` of TP=2 and TP=4 against TP=1;
#   4. train mode at TRAIN_SEQ (4096): data parallelism over 4 GPUs (`--dp 4`, whole replicas plus the gradients'
#      all-reduce) and tensor parallelism over 4 (`--tp 4`, forward and backward all-reduces).
# usage: scripts/tp_run.sh     env: SEQ (8192), MODEL (gpt-7b), BUDGET (0.3 s per variant),
#        VARIANTS (every variant but torch.compile's, whose first call is slow; "" = all), STEP_TIMEOUT (170 s)
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_COLOR=1 NCCL_NVLS_ENABLE=0
SEQ=${SEQ:-8192}; MODEL=${MODEL:-gpt-7b}; BUDGET=${BUDGET:-0.3}; STEP_TIMEOUT=${STEP_TIMEOUT:-170}
VARIANTS=${VARIANTS-torch,naive,sdpa_flash,sdpa_efficient,sdpa_cudnn,triton,eager,loop,grouped,padded_bmm}
# shellcheck source=scripts/gpu_steps.sh
source "$(dirname "$0")/gpu_steps.sh"
STEP_TAIL=40
gpu_setup "${OUT:-/tmp/out}/tp"
step interconnect python3 -c "
from roofline.measure import device, interconnect
interconnect.calibrate_interconnect(device.detect('cuda'), ranks=(2, 4), force=True, say=print)"
args=(--model "$MODEL" --seq-len "$SEQ" --budget "$BUDGET")
[ -n "$VARIANTS" ] && args+=(--variants "$VARIANTS")
for tp in 1 2 4; do
  step "profile-tp$tp" python3 -m roofline profile --tp "$tp" "${args[@]}" --out "$R/$MODEL-s$SEQ-tp$tp"
done
for tp in 2 4; do
  step "scaling-tp$tp" env COLUMNS=140 python3 -m roofline tp-scaling "$R/$MODEL-s$SEQ-tp1/results.json" \
    "$R/$MODEL-s$SEQ-tp$tp/results.json"
done
targs=(--model "$MODEL" --seq-len "${TRAIN_SEQ:-4096}" --budget "$BUDGET" --mode train)
[ -n "$VARIANTS" ] && targs+=(--variants "$VARIANTS")
for par in dp tp; do
  step "train-${par}4" python3 -m roofline profile --$par 4 "${targs[@]}" --out "$R/$MODEL-train-s${TRAIN_SEQ:-4096}-${par}4"
done
tar czf "${OUT:-/tmp/out}/tp.tgz" -C "${OUT:-/tmp/out}" tp && rm -rf "$R"
