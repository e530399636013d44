#!/usr/bin/env bash
# The first command to run on a GPU machine: one call of at most 480 s (BUDGET 450 s of steps, the rest for the
# tables) that answers, in this order, what matters most, and keeps what it finished if the call is cut off:
#   environment      torch, CUDA, transformers, the GPU, FlexAttention / varlen / ESM C, where kernels are cached
#   prot_t5_xl       ProtT5-XL (random weights, real shape): the seed's loop against the main job's engine: res/s,
#                    MFU, padding, peak memory, compiles (and those built anew) with their seconds, the attention path
#                    taken, fp32 redos (benchmarks/throughput.py)
#   job_*            the main command end to end on a small two-model config (ProtT5-XL on flex, ESM2 650M on
#                    varlen): build, pre-flight (validate), run, read back pt/HDF5/Parquet, kill -9 and resume (equal
#                    output, no process left on the device), summary (benchmarks/gpu_job.py)
#   esm2_3b          ESM2-3B (varlen) against the seed's loop
#   long_35000       one 35,000-residue protein through ProtT5-XL's 24 layers in one pass: peak memory against the
#                    memory model (benchmarks/long_protein.py)
#   profile          a few ProtT5-XL engine batches under torch.profiler (top kernels, device idle share); its
#                    compiles come from the cache the earlier steps filled
#   esmc_600m, host  ESM C 600M against the seed's loop, and the host path on the machine's CPU, if time is left
# Every step runs under its own limit inside the budget (benchmarks/steps.sh); after each one, results.json is
# rewritten. A step that fails or runs past its limit does not stop the next, but the script then exits 1 and its
# last line names the step.
#
# $OUT (default benchmarks/results/gpu) gets at most 7 files, no folder: summary.txt (all it printed, the tables
# last), results.json (every step's exit code and seconds, every stage's figures), profile.txt, job.log (the whole
# job's output), run_report.html (the job's own report), nvidia_smi.txt, stderr.log.
#
#   on the GPU machine:  bash benchmarks/gpu_first_call.sh
#   CPU dry run (tiny shapes, what CI runs; 3-4 min on two busy cores):
#                        DEVICE=cpu OUT=/tmp/first bash benchmarks/gpu_first_call.sh
# Other settings: STEPS (names of the steps to run, all by default), BUDGET, LIMIT_SCALE, EXTRA (appended to every
# throughput.py call), PYTHON, WORK (kept when given; a temporary directory otherwise).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}
EXTRA=${EXTRA:-}
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
if [ "$DEVICE" = cpu ]; then  # the same steps at tiny shapes: every code path, seconds each (slack for busy cores)
  BUDGET=${BUDGET:-1800} LIMIT_SCALE=${LIMIT_SCALE:-4}
  T5="--tiny --proteins 10 --max-length 120 --long 300" ESM="$T5" PROFILE="--tiny --proteins 6 --max-length 100 --long none"
  JOB="--scale tiny --proteins 48 --max-length 150 --long 400" VALIDATE_PROTEINS=4 LONG="--lengths 1200 --layers 1"
  HOST="--families prot_t5 --small 10 --large 20"
else
  BUDGET=${BUDGET:-450} LIMIT_SCALE=${LIMIT_SCALE:-1}
  T5="--proteins 1000 --long 10000" ESM="--proteins 400 --long 10000" PROFILE="--proteins 300 --long none"
  JOB="--scale real --proteins 120 --max-length 1000 --long 3000" VALIDATE_PROTEINS=20
  LONG="--lengths 35000 --layers 24" HOST="--families prot_t5 --small 200 --large 2000"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
mkdir -p "$OUT" "$WORK"
rm -f "$OUT/run_report.html"
: >"$OUT/stderr.log"
: >"$OUT/job.log"
STEPS_LOG=$WORK/steps.jsonl BANNER_LOG=$OUT/job.log
. benchmarks/steps.sh

collect() { "$PYTHON" benchmarks/gpu_results.py collect --work "$WORK" --out "$OUT" "$@" 2>>"$OUT/stderr.log"; }

stage() {  # a step whose output is the console's (its stderr to stderr.log), then results.json rewritten
  step "$@" 2>>"$OUT/stderr.log"
  collect
}

job_step() {  # a step of the whole job: its output to job.log
  step "$@" >>"$OUT/job.log" 2>&1
  collect
}

throughput() {  # throughput NAME LIMIT OPTIONS...: one benchmarks/throughput.py process
  local name=$1 limit=$2
  shift 2
  # shellcheck disable=SC2086  # EXTRA is a list of options
  stage "$name" "$limit" "$PYTHON" benchmarks/throughput.py --device "$DEVICE" "$@" $EXTRA --json "$WORK/$name.json"
}

first_call() {
  steps_start
  if [ "$DEVICE" != cpu ]; then
    nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1
  fi
  stage environment 30 "$PYTHON" benchmarks/gpu_results.py environment --device "$DEVICE" --json "$WORK/environment.json"
  if ! grep -q '"step": "environment", "exit": 0' "$STEPS_LOG" && selected environment; then
    banner "stopped: no environment to measure in (see stderr.log)"
    steps_verdict
    return 1
  fi
  # shellcheck disable=SC2086  # the sizes are lists of options
  throughput prot_t5_xl 150 --arch prot_t5_xl $T5

  local job="$WORK/job" left cap
  # shellcheck disable=SC2086
  job_step job_build 60 "$PYTHON" benchmarks/gpu_job.py build --work "$job" --device "$DEVICE" $JOB \
    --models prot_t5_xl,esm2 --resume-models prot_t5_xl,esm2
  job_step job_validate 60 "$PYTHON" validate_t5_embeddings.py --config "$job/config_main.yaml" \
    --num-proteins "$VALIDATE_PROTEINS"
  job_step job_main 60 "$PYTHON" generate_embeddings_t5.py --config "$job/config_main.yaml"
  cp "$job/main/embeddings/run_report.html" "$OUT/" 2>/dev/null
  job_step job_readback 20 "$PYTHON" benchmarks/gpu_job.py readback --work "$job"
  left=$(($(steps_left) - 10)) cap=$((70 * LIMIT_SCALE))  # the rerun ends inside the step's own limit
  job_step job_kill_resume 90 "$PYTHON" benchmarks/gpu_job.py kill-resume --work "$job" \
    --kill-deadline $((40 * LIMIT_SCALE)) --rerun-timeout "$((left > 10 ? (left < cap ? left : cap) : 10))"
  job_step job_summary 30 "$PYTHON" benchmarks/gpu_job.py summary --work "$job" --out "$job" \
    --steps "$STEPS_LOG"

  # shellcheck disable=SC2086
  throughput esm2_3b 90 --arch esm2_3b --skip-fair-esm $ESM
  # shellcheck disable=SC2086
  stage long_35000 60 "$PYTHON" benchmarks/long_protein.py --device "$DEVICE" $LONG --json "$WORK/long_35000.json"
  # shellcheck disable=SC2086
  throughput profile 45 --arch prot_t5_xl --skip-seed $PROFILE --profile "$WORK/prot_t5_xl.profile"
  if grep -q '"esmc_in_transformers": true' "$WORK/environment.json" 2>/dev/null; then
    # shellcheck disable=SC2086
    throughput esmc_600m 50 --arch esmc_600m $ESM
  else
    banner "esmc_600m skipped: this transformers has no EsmcModel"
  fi
  # shellcheck disable=SC2086  # HOST is a list of options
  stage host 40 "$PYTHON" benchmarks/host_overhead.py $HOST --json "$WORK/host_overhead.json"

  if [ "$DEVICE" != cpu ]; then
    { echo "== after the steps"; nvidia-smi; } >>"$OUT/nvidia_smi.txt" 2>&1
  fi
  collect --table
  steps_verdict
}

first_call | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
