#!/usr/bin/env bash
# The longer throughput check for an H100/H200 (after benchmarks/gpu_first_call.sh, which runs first), under
# 8 minutes: the per-step limits add up to 465 s, model building, compile warm-up and profiling included. The seed's
# loop against the main job's engine on ProtT5-XL (with batches of up to 128 as a second engine side), ESM2 3B (with a
# fair-esm-style loop as a second peer) and ESM C 600M, all random weights in the real shapes (no download),
# synthetic CAFA-like proteins with one 10,000- and one 35,000-residue one; a torch.profiler summary of a few engine
# batches of ProtT5-XL and ESM2 3B (top device kernels, device idle share); last, the host path on the machine's CPU.
#
# Each model runs in its own process under a time limit (benchmarks/steps.sh), so a failure or an overrun costs only
# that model; results.json is rewritten after every step. A step that fails or runs past its limit makes the script
# exit 1, its last line naming the step. Four files land in $OUT (the device tool returns at most 8): summary.txt (all
# that is printed, the tables last), results.json (every step's exit code and seconds, every model's figures and the
# host path's, the profiles included), profile.txt and stderr.log.
#
#   device run:  bash benchmarks/gpu_check.sh
#   CPU dry run (tiny shapes, what CI runs):  DEVICE=cpu OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   the compiled FlexAttention path on CPU, ProtT5 only (STEPS picks the steps):
#     DEVICE=cpu STEPS="environment prot_t5_xl" EXTRA="--attention flex" OUT=/tmp/gpu-flex bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}
EXTRA=${EXTRA:-}  # appended to every throughput.py call (later options win)
if [ "$DEVICE" = cpu ]; then
  BUDGET=${BUDGET:-1800} LIMIT_SCALE=${LIMIT_SCALE:-4} SIZES="--tiny --proteins 10 --max-length 120 --long 300"
  HOST=${HOST:---families prot_t5 --small 10 --large 20}
else
  BUDGET=${BUDGET:-480} SIZES=""
  HOST=${HOST:---families prot_t5 --small 200 --large 2000}  # host_overhead.py's options
fi
RESERVE=10
WORK=$(mktemp -d)  # per-model JSON and profile text, gathered into $OUT after every step
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
: >"$OUT/stderr.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
STEPS_LOG=$WORK/steps.jsonl
. benchmarks/steps.sh

collect() { "$PYTHON" benchmarks/gpu_results.py collect --work "$WORK" --out "$OUT" "$@" 2>>"$OUT/stderr.log"; }

model() {  # model NAME LIMIT ARGS...: one throughput.py process
  local name=$1 limit=$2
  shift 2
  # shellcheck disable=SC2086  # SIZES and EXTRA are lists of options
  step "$name" "$limit" "$PYTHON" benchmarks/throughput.py --device "$DEVICE" "$@" $SIZES $EXTRA \
    --json "$WORK/$name.json" 2>>"$OUT/stderr.log"
  collect  # results.json stays current: a check cut off from outside keeps every finished model
}

check() {
  steps_start
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  step environment 30 "$PYTHON" benchmarks/gpu_results.py environment --device "$DEVICE" \
    --json "$WORK/environment.json" 2>>"$OUT/stderr.log"
  if ! grep -q '"step": "environment", "exit": 0' "$STEPS_LOG" && selected environment; then
    banner "stopped: no environment to measure in (see stderr.log)"
    steps_verdict
    return 1
  fi
  model prot_t5_xl 200 --arch prot_t5_xl --proteins 2000 --variants current,b128 --profile "$WORK/prot_t5_xl.profile"
  model esm2_3b 105 --arch esm2_3b --proteins 800 --profile "$WORK/esm2_3b.profile"
  if grep -q '"esmc_in_transformers": true' "$WORK/environment.json" 2>/dev/null; then
    model esmc_600m 60 --arch esmc_600m --proteins 2000
  else
    banner "esmc_600m skipped: this transformers has no EsmcModel (the project needs the version in requirements_t5.txt)"
  fi
  # The host path alone on this machine's CPU (zero-layer models: tokenization, batching, pooling, chunks, merge)
  # shellcheck disable=SC2086  # HOST is a list of options
  step host 70 "$PYTHON" benchmarks/host_overhead.py $HOST --json "$WORK/host_overhead.json" 2>>"$OUT/stderr.log"
  collect --table
  steps_verdict
}

check | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
