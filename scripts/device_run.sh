#!/usr/bin/env bash
# One GPU session: install, calibrate, profile, and pack everything under $OUT/<tag>.tgz.
# Used to produce the committed reference results in reports/reference/<device>/ (see README).
#   usage: scripts/device_run.sh TAG STEP [STEP...]   steps: see the case list below
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_COLOR=1
TAG=$1; shift
R=${OUT:-/tmp/out}/$TAG
mkdir -p "$R"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$R/pip.log" 2>&1 || { echo "pip install -e failed"; tail -5 "$R/pip.log"; }
roofline() { python3 -m roofline "$@"; }
export ROOFLINE_CACHE_DIR=${ROOFLINE_CACHE_DIR:-$R/cache}
CI=${CI_ARGS:---rounds 5 --budget 0.05}  # the CI mode that the README's workflow runs
log() { echo "=== $* ($(date +%T))"; }
timed() {
  local name=$1; shift; log "$name: $*"; local t0; t0=$(date +%s.%N)
  "$@" > "$R/$name.stdout" 2> "$R/$name.stderr"; local rc=$?
  echo "$name: exit $rc, wall $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" | tee -a "$R/walltimes.txt"
  tail -n 45 "$R/$name.stdout"; grep -v "━" "$R/$name.stderr" | tail -n 8
}
for step in "$@"; do
  case $step in
    env) log env; nvidia-smi; python3 -c 'import torch,triton,typer,rich,pandas,matplotlib,pynvml,jinja2;print(torch.__version__,triton.__version__,typer.__version__)'
         timed startup python3 -c 'import torch; torch.zeros(1, device="cuda"); import roofline.cli' ;;
    calibrate) timed calibrate roofline calibrate --force --out "$R"; timed calibrate-cached roofline calibrate ;;
    profile8192) timed profile8192 roofline profile --seq-len 8192 --out "$R/gpt-7b-s8192" ;;
    profile2048) timed profile2048 roofline profile --seq-len 2048 --out "$R/gpt-7b-s2048" ;;
    aa-single) timed aa roofline profile --seq-len 8192 --out "$R/gpt-7b-s8192-aa" ;;
    debug) timed debug env ROOFLINE_DEBUG=1 TORCH_LOGS=recompiles python3 -m roofline profile --seq-len 8192 --ops residual_dropout_norm --out "$R/debug" --no-plots ;;
    calibrate-new) timed calibrate roofline calibrate --force --out "$R" ;;
    warps) for w in 2 4 16; do timed "softmax-w$w" env ROOFLINE_SOFTMAX_WARPS=$w roofline profile --seq-len 8192 --ops softmax --variants triton --no-plots --out "$R/softmax-w$w"; done
           timed softmax-default roofline profile --seq-len 8192 --ops softmax --variants triton --no-plots --out "$R/softmax-default" ;;
    pair[1-9]) i=${step#pair}  # one A/A pair of CI-mode profiles, compared; then the deliberately slowed softmax against its A
          timed "ci-a$i" env ROOFLINE_DEBUG=1 roofline profile --seq-len 8192 $CI --no-plots --out "$R/aa/pair$i-a"
          timed "ci-b$i" roofline profile --seq-len 8192 $CI --no-plots --out "$R/aa/pair$i-b"
          timed "compare-aa$i" roofline compare "$R/aa/pair$i-a" "$R/aa/pair$i-b" --fail-on slower --json "$R/aa/pair$i.compare.json" --markdown -
          for w in ${SLOW_WARPS:-2 4}; do
            timed "slow$i-w$w" env ROOFLINE_SOFTMAX_WARPS=$w roofline profile --seq-len 8192 $CI --ops softmax --variants triton --no-plots --out "$R/aa/pair$i-slow-softmax-w$w"
            timed "compare-slow$i-w$w" roofline compare "$R/aa/pair$i-a" "$R/aa/pair$i-slow-softmax-w$w" --fail-on slower --json "$R/aa/pair$i-slow-w$w.compare.json" --markdown -
          done ;;
    ci8192) timed ci8192 env ROOFLINE_DEBUG=1 roofline profile --seq-len 8192 $CI --out "$R/gpt-7b-s8192-ci" ;;
    cold8192) timed cold8192 env ROOFLINE_DEBUG=1 roofline profile --seq-len 8192 --out "$R/gpt-7b-s8192-cold" ;;
    warm8192) timed warm8192 env ROOFLINE_DEBUG=1 roofline profile --seq-len 8192 --out "$R/gpt-7b-s8192-warm" ;;
    nocausal8192) timed nocausal8192 roofline profile --seq-len 8192 --no-causal --out "$R/gpt-7b-s8192-nocausal" ;;
    compare-ref) for run in gpt-7b-s8192-nocausal gpt-7b-train-s4096 counters; do
                   ref=reports/reference/h100/$run; [ -d "$ref" ] || ref=reports/reference/h100/gpt-7b-s8192
                   timed "compare-$run" roofline compare "$ref/results.json" "$R/$run/results.json" --markdown - ; done ;;
    probe) timed probe-sdpa python3 scripts/probe_trace.py --seq-len 8192 --attn sdpa
           timed probe-eager python3 scripts/probe_trace.py --seq-len 8192 --attn eager ;;
    counters) timed counters roofline profile --seq-len 8192 --no-causal --counters --out "$R/counters" ;;
    tune) timed tune python3 scripts/tune_flash.py ;;
    tune-norm) timed tune-norm python3 scripts/tune_norm.py ;;
    gputests) timed gputests python3 -m pytest -q -m gpu tests ;;
    sweep) timed sweep roofline sweep --seq-len 1024,2048,4096,8192,16384,32768 --budget 0.3 --out "$R/gpt-7b-sweep" ;;
    decode) timed decode-b1 roofline profile --mode decode --kv-len 8192 --batch 1 --out "$R/gpt-7b-decode-b1-kv8192"
            timed decode-b64 roofline profile --mode decode --kv-len 8192 --batch 64 --out "$R/gpt-7b-decode-b64-kv8192" ;;
    decode-llama) timed decode-llama-b1 roofline profile --model llama3-8b --mode decode --kv-len 8192 --batch 1 --out "$R/llama3-8b-decode-b1-kv8192"
            timed decode-llama-b64 roofline profile --model llama3-8b --mode decode --kv-len 8192 --batch 64 --out "$R/llama3-8b-decode-b64-kv8192" ;;
    fp8) timed fp8 roofline sweep --seq-len 8192 --dtype bf16,fp8 --out "$R/gpt-7b-s8192-bf16-fp8" ;;
    train) timed train roofline profile --mode train --seq-len 4096 --no-causal --out "$R/gpt-7b-train-s4096" ;;
    train-llama) timed train-llama roofline profile --mode train --model llama3-8b --seq-len 4096 --out "$R/llama3-8b-train-s4096" ;;
    models) timed llama roofline profile --model llama3-8b --seq-len 8192 --out "$R/llama3-8b-s8192"
            timed mixtral roofline profile --model mixtral-8x7b --seq-len 8192 --out "$R/mixtral-8x7b-s8192" ;;
    ncu) timed ncu env OUT="$R/ncu" bash scripts/capture_ncu_fixture.sh ;;
    kernels-test) timed kernels-test python3 -m pytest -q tests/test_kernels.py -m "gpu or not gpu" ;;
    trace-profile)  # the textbook block of the traced Llama-3-8B layer (its Hugging Face config), prefill and train
            timed profile-hf-llama roofline profile --model meta-llama-3-8b --seq-len 8192 --out "$R/meta-llama-3-8b-s8192"
            timed profile-hf-llama-train roofline profile --model meta-llama-3-8b --mode train --seq-len 8192 --out "$R/meta-llama-3-8b-train-s8192" ;;
    trace)  # Hugging Face's LlamaDecoderLayer at seq 8192: eager and sdpa, prefill and train, beside trace-profile's block
            for impl in eager sdpa; do
              timed "trace-$impl" roofline trace --hf meta-llama-3-8b --seq-len 8192 --attn-impl "$impl" --compare-profile "$R/meta-llama-3-8b-s8192/results.json" --out "$R/trace-llama3-8b-$impl-s8192"
              timed "trace-$impl-train" roofline trace --hf meta-llama-3-8b --seq-len 8192 --attn-impl "$impl" --mode train --compare-profile "$R/meta-llama-3-8b-train-s8192/results.json" --out "$R/trace-llama3-8b-$impl-train-s8192"
            done ;;
    trace-more)  # a second family (Qwen3: QK-norm; Mixtral: experts) and a plain nn.Module via --module
            timed trace-qwen3 roofline trace --hf qwen3-8b --seq-len 8192 --attn-impl sdpa --with-profile --out "$R/trace-qwen3-8b-sdpa-s8192"
            timed trace-mixtral roofline trace --hf mixtral-8x7b-v0.1 --seq-len 8192 --attn-impl sdpa --out "$R/trace-mixtral-8x7b-sdpa-s8192"
            timed trace-module roofline trace --module tests.trace_factories:gpt_block --seq-len 8192 --kernels --out "$R/trace-module-gpt-block-s8192" ;;
    trace-test) timed trace-test python3 -m pytest -q tests/test_trace.py -m gpu ;;
    trace-quick) for impl in sdpa eager; do
              timed "trace-$impl" roofline trace --hf meta-llama-3-8b --seq-len 8192 --attn-impl "$impl" --out "$R/trace-llama3-8b-$impl-s8192"; done ;;
    *) log "unknown step $step" ;;
  esac
  # packed after every step, so a run cut short by its time limit still brings back what it measured
  tar czf "${OUT:-/tmp/out}/$TAG.tgz.part" -C "${OUT:-/tmp/out}" "$TAG" && mv "${OUT:-/tmp/out}/$TAG.tgz.part" "${OUT:-/tmp/out}/$TAG.tgz"
done
rm -rf "$R"
