#!/usr/bin/env bash
# The user's whole job on an H100/H200, as users type it, with all four models of config_t5.yaml (after
# benchmarks/gpu_first_call.sh, which runs a two-model version of it first), in one call of at most 8 minutes with no
# network: real-shape random-weight checkpoints and a CAFA-like FASTA pair are built (benchmarks/gpu_job.py build),
# then
#   validate      validate_t5_embeddings.py on a config that mirrors config_t5.yaml (its memory and time projections)
#   main          generate_embeddings_t5.py, the main command: pt + HDF5 + Parquet, ESM C on `device: auto`, run report
#   readback      the three formats read back and compared
#   kill_resume   kill -9 of the main process after its first chunk, leftovers (processes, nvidia-smi), the rerun,
#                 its output against the uninterrupted run's
#   summary       one table (model, device, proteins/s, residues/s, MFU, peak and planned GiB, OOM retries, fp32
#                 redos, windows, resume equal, compiles, forward path) and one PASS/FAIL line per check
# Results in $OUT (few files, as the device tool returns them): summary.txt, summary.json, job.log, nvidia_smi.txt,
# run_report.html. Each step runs under its own time limit inside the whole budget (benchmarks/steps.sh); a failed
# step is recorded and the next one runs. A step that fails or runs past its limit, or a check that fails, makes the
# script exit 1, its last line naming the step.
#
#   device run:   bash benchmarks/gpu_job_check.sh                         (ESM2=3b for ESM2 3B instead of 650M)
#   CPU dry run:  DEVICE=cpu OUT=/tmp/gpu_job_out bash benchmarks/gpu_job_check.sh      (tiny shapes, what CI runs)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
WORK=${WORK:-/tmp/gpu_job}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}
ESM2=${ESM2:-650m}
if [ "$DEVICE" = cpu ]; then  # tiny shapes; the limits stretched for busy cores
  BUDGET=${BUDGET:-1800} LIMIT_SCALE=${LIMIT_SCALE:-4}
  SCALE=${SCALE:-tiny} PROTEINS=${PROTEINS:-48} MAX_LENGTH=${MAX_LENGTH:-200} LONG=${LONG:-600}
  VALIDATE_PROTEINS=${VALIDATE_PROTEINS:-4}
else
  BUDGET=${BUDGET:-450}  # seconds for everything: a device call of 480 s keeps some slack
  SCALE=${SCALE:-real} PROTEINS=${PROTEINS:-1500} MAX_LENGTH=${MAX_LENGTH:-35000} LONG=${LONG:-10000,35000}
  VALIDATE_PROTEINS=${VALIDATE_PROTEINS:-40}
fi
RESUME_MODELS=${RESUME_MODELS:-prot_t5_xl,esm2}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK/results"
LOG="$OUT/job.log"
SMI="$OUT/nvidia_smi.txt"
: >"$LOG"
: >"$SMI"
rm -f "$OUT/run_report.html"
STEPS_LOG=$WORK/results/steps.jsonl BANNER_LOG=$LOG RESERVE=25
. benchmarks/steps.sh

job() {  # job NAME LIMIT COMMAND...: one step, its output to job.log
  step "$@" >>"$LOG" 2>&1
}

check() {
  steps_start
  {
    echo "== $(date -u +%FT%TZ) DEVICE=$DEVICE SCALE=$SCALE ESM2=$ESM2 PROTEINS=$PROTEINS LONG=$LONG BUDGET=$BUDGET"
    "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'transformers', transformers.__version__, 'GPUs', torch.cuda.device_count())"
  } >>"$LOG" 2>&1
  [ "$DEVICE" = cpu ] || nvidia-smi >>"$SMI" 2>&1

  job build 150 "$PYTHON" benchmarks/gpu_job.py build --work "$WORK" --device "$DEVICE" --scale "$SCALE" \
    --esm2 "$ESM2" --proteins "$PROTEINS" --max-length "$MAX_LENGTH" --long "$LONG" --resume-models "$RESUME_MODELS"
  job validate 120 "$PYTHON" validate_t5_embeddings.py --config "$WORK/config_main.yaml" \
    --num-proteins "$VALIDATE_PROTEINS"
  local sampler=""
  if [ "$DEVICE" != cpu ]; then  # device memory and load over the main run, once a second
    echo "== main run: nvidia-smi every second" >>"$SMI"
    nvidia-smi --query-gpu=timestamp,index,memory.used,memory.total,utilization.gpu --format=csv -l 1 >>"$SMI" 2>&1 &
    sampler=$!
  fi
  job main 200 "$PYTHON" generate_embeddings_t5.py --config "$WORK/config_main.yaml"
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null
  cp "$WORK/main/embeddings/run_report.html" "$OUT/" 2>/dev/null
  job readback 40 "$PYTHON" benchmarks/gpu_job.py readback --work "$WORK"
  local left=$(($(steps_left) - 15))
  job kill_resume 180 "$PYTHON" benchmarks/gpu_job.py kill-resume --work "$WORK" --kill-deadline 90 \
    --rerun-timeout "$((left > 10 ? left : 10))"
  RESERVE=0  # the summary may use the reserve
  step summary 25 "$PYTHON" benchmarks/gpu_job.py summary --work "$WORK" --out "$OUT" 2>>"$LOG"
  steps_verdict
}

check
code=$?
echo "== results in $OUT" | tee -a "$LOG"
exit "$code"
