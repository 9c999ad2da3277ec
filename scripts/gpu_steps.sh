# Sourced by the multi-GPU scripts (tp_run.sh, pp_run.sh): one set-up and one way to run a step.
#   gpu_setup DIR: make DIR (the run's folder, packed by the caller), point the roofs cache into it (the roofs of the
#                  first step are read by the later ones, and packed), install the checkout, record the GPUs' topology
#   step NAME COMMAND...: run with a STEP_TIMEOUT limit, keep DIR/NAME.stdout and .stderr, print their tails
#                  (STEP_TAIL lines of stdout, default 30) and append the wall time to DIR/walltimes.txt
gpu_setup() {
  R=$1
  mkdir -p "$R"
  export ROOFLINE_CACHE_DIR="$R/cache"
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$R/pip.log" 2>&1 || { echo "pip install -e failed"; tail -5 "$R/pip.log"; }
  nvidia-smi topo -m >"$R/topo.txt" 2>&1; nvidia-smi >"$R/nvidia-smi.txt" 2>&1; head -n 14 "$R/nvidia-smi.txt"
}

step() {
  local name=$1; shift; echo "=== $name: $* ($(date +%T))"; local t0; t0=$(date +%s)
  timeout "$STEP_TIMEOUT" "$@" >"$R/$name.stdout" 2>"$R/$name.stderr"; local rc=$?
  echo "$name: exit $rc, wall $(( $(date +%s) - t0 )) s" | tee -a "$R/walltimes.txt"
  tail -n "${STEP_TAIL:-30}" "$R/$name.stdout"; grep -v "━" "$R/$name.stderr" | tail -n 12
}
