#!/usr/bin/env bash
# One GPU session: install, calibrate, profile, and pack everything under $OUT/<tag>.tgz.
# Used to produce the committed reference results in reports/reference/<device>/ (see README).
#   usage: scripts/device_run.sh TAG STEP [STEP...]   steps: env calibrate profile8192 profile2048 aa kernels-test
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_COLOR=1
TAG=$1; shift
R=${OUT:-/tmp/out}/$TAG
mkdir -p "$R"
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e failed" >&2
log() { echo "=== $* ($(date +%T))"; }
timed() { local name=$1; shift; log "$name: $*"; /usr/bin/time -f "$name wall %e s" "$@" > "$R/$name.stdout" 2> >(tee "$R/$name.stderr" >&2); tail -n 60 "$R/$name.stdout"; }
for step in "$@"; do
  case $step in
    env) log env; nvidia-smi; python3 -c 'import torch,triton;print(torch.__version__,triton.__version__)'; roofline devices ;;
    calibrate) timed calibrate roofline calibrate --force --out "$R"; timed calibrate-cached roofline calibrate --out "$R/cached" ;;
    profile8192) timed profile8192 roofline profile --seq-len 8192 --out "$R/gpt-7b-s8192" ;;
    profile2048) timed profile2048 roofline profile --seq-len 2048 --out "$R/gpt-7b-s2048" ;;
    aa) timed aa roofline profile --seq-len 8192 --out "$R/gpt-7b-s8192-aa" --no-plots ;;
    kernels-test) timed kernels-test python3 -m pytest -q tests/test_kernels.py -m "gpu or not gpu" ;;
    *) log "unknown step $step" ;;
  esac
done
tar czf "${OUT:-/tmp/out}/$TAG.tgz" -C "${OUT:-/tmp/out}" "$TAG" && rm -rf "$R"
