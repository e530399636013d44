#!/usr/bin/env bash
# The user's whole job on a lent H100/H200, as users type it, in one call of at most 8 minutes with no network:
# real-shape random-weight checkpoints and a CAFA-like FASTA pair are built (benchmarks/gpu_job.py build), then
#   validate_t5_embeddings.py   on a config that mirrors config_t5.yaml (its memory and time projections kept)
#   generate_embeddings_t5.py   the main command: pt + HDF5 + Parquet, ESM C on `device: auto`, run report
#   readback                    the three formats read back and compared
#   kill-resume                 kill -9 of the main process after its first chunk, leftovers (processes,
#                               nvidia-smi), the rerun, its output against the uninterrupted run's
#   summary                     one table (model, device, proteins/s, residues/s, MFU, peak and planned GiB,
#                               OOM retries, fp32 redos, windows, resume equal) and one line per check
# Results in $OUT (few files, as the device tool returns them): summary.txt, summary.json, job.log, nvidia_smi.txt,
# run_report.html. Each step runs under its own time limit inside the whole budget; a failed step is recorded and the
# next one runs; the summary is always written.
#
#   device run:   bash benchmarks/gpu_job_check.sh                         (ESM2=3b for ESM2 3B instead of 650M)
#   CPU dry run:  DEVICE=cpu OUT=/tmp/gpu_job_out bash benchmarks/gpu_job_check.sh      (tiny shapes, ~2 min)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
WORK=${WORK:-/tmp/gpu_job}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}
ESM2=${ESM2:-650m}
BUDGET=${BUDGET:-450}  # seconds for everything: a device call of 480 s keeps some slack
if [ "$DEVICE" = cpu ]; then
  SCALE=${SCALE:-tiny} PROTEINS=${PROTEINS:-48} MAX_LENGTH=${MAX_LENGTH:-400} LONG=${LONG:-1500,3000}
else
  SCALE=${SCALE:-real} PROTEINS=${PROTEINS:-1500} MAX_LENGTH=${MAX_LENGTH:-35000} LONG=${LONG:-10000,35000}
fi
VALIDATE_PROTEINS=${VALIDATE_PROTEINS:-40}
RESUME_MODELS=${RESUME_MODELS:-prot_t5_xl,esm2}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK/results"
LOG="$OUT/job.log"
SMI="$OUT/nvidia_smi.txt"
: >"$LOG"
: >"$SMI"
STARTED=$(date +%s)
RESERVE=25  # seconds kept for the summary

finish() {
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
  "$PYTHON" benchmarks/gpu_job.py summary --work "$WORK" --out "$OUT" 2>>"$LOG" | tee -a "$LOG"
  cp "$WORK/main/embeddings/run_report.html" "$OUT/" 2>/dev/null
  echo "== results in $OUT ($(($(date +%s) - STARTED)) s in all)"
}
trap finish EXIT

step() {  # step NAME LIMIT COMMAND...: under min(LIMIT, what the budget has left); output to job.log
  local name=$1 limit=$2 left
  shift 2
  left=$((STARTED + BUDGET - RESERVE - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "== $name skipped: the budget is spent" | tee -a "$LOG"
    echo "{\"step\": \"$name\", \"exit\": \"skipped\", \"seconds\": 0, \"limit\": $limit}" >>"$WORK/results/steps.jsonl"
    return
  fi
  echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
  local t0 t1 code
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  code=$?
  t1=$(date +%s.%N)
  local seconds
  seconds=$(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")
  echo "{\"step\": \"$name\", \"exit\": $code, \"seconds\": $seconds, \"limit\": $limit}" >>"$WORK/results/steps.jsonl"
  echo "== $name: exit $code in $seconds s$([ "$code" -eq 124 ] && echo ' (time limit)')" | tee -a "$LOG"
}

{
  echo "== $(date -u +%FT%TZ) DEVICE=$DEVICE SCALE=$SCALE ESM2=$ESM2 PROTEINS=$PROTEINS LONG=$LONG BUDGET=$BUDGET"
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'transformers', transformers.__version__, 'GPUs', torch.cuda.device_count())"
} >>"$LOG" 2>&1
if [ "$DEVICE" != cpu ]; then
  nvidia-smi >>"$SMI" 2>&1
fi

step build 150 "$PYTHON" benchmarks/gpu_job.py build --work "$WORK" --device "$DEVICE" --scale "$SCALE" \
  --esm2 "$ESM2" --proteins "$PROTEINS" --max-length "$MAX_LENGTH" --long "$LONG" --resume-models "$RESUME_MODELS"
step validate 120 "$PYTHON" validate_t5_embeddings.py --config "$WORK/config_main.yaml" \
  --num-proteins "$VALIDATE_PROTEINS"
if [ "$DEVICE" != cpu ]; then  # device memory and load over the main run, once a second
  echo "== main run: nvidia-smi every second" >>"$SMI"
  nvidia-smi --query-gpu=timestamp,index,memory.used,memory.total,utilization.gpu --format=csv -l 1 >>"$SMI" 2>&1 &
  SAMPLER=$!
fi
step main 200 "$PYTHON" generate_embeddings_t5.py --config "$WORK/config_main.yaml"
[ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null && SAMPLER=
step readback 40 "$PYTHON" benchmarks/gpu_job.py readback --work "$WORK"
left=$((STARTED + BUDGET - RESERVE - $(date +%s) - 15))
step kill_resume 180 "$PYTHON" benchmarks/gpu_job.py kill-resume --work "$WORK" --kill-deadline 90 \
  --rerun-timeout "$((left > 10 ? left : 10))"
