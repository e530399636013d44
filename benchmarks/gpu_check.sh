#!/usr/bin/env bash
# One prepared GPU check for a lent H100/H200, about 5 minutes: the host path on the machine's CPU, then the seed's
# loop against the main job's engine on ProtT5-XL (also with batches of up to 128), ESM2 3B and ESM C 600M, all random
# weights in the real shapes (no download), synthetic CAFA-like proteins with one 10,000- and one 35,000-residue one.
#
#   device run:  bash benchmarks/gpu_check.sh          (JSON, text and a log land in $OUT)
#   elsewhere:   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   dry run of this script on CPU (tiny shapes, minutes):
#     DEVICE=cpu EXTRA="--layers 1 --proteins 12 --max-length 200 --long 1200" HOST="--small 50 --large 100" \
#       OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Each model runs in its own process under a time limit, so a failure or an overrun costs only that model.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}
EXTRA=${EXTRA:-}  # appended to every throughput.py call (later options win)
HOST=${HOST:---small 2000 --large 20000}  # host_overhead.py's protein counts
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" - "$DEVICE" <<'EOF' || exit 1
import sys, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if sys.argv[1] != "cpu" and not torch.cuda.is_available():
    raise SystemExit("no GPU visible to torch")
EOF

run() {  # run NAME SECONDS ARGS...: one throughput.py process, its table to stdout and $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  # shellcheck disable=SC2086  # EXTRA is a list of options
  timeout --kill-after=15 "$limit" "$PYTHON" benchmarks/throughput.py --device "$DEVICE" "$@" $EXTRA \
    --json "$OUT/$name.json" 2>>"$OUT/stderr.log" | tee "$OUT/$name.txt"
  local code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || echo "== $name FAILED (exit $code; 124 = time limit); see stderr.log"
}

# The host path alone on this machine's CPU (zero-layer models: tokenization, batching, pooling, chunks, merge)
echo "== host path (limit 120 s)"
# shellcheck disable=SC2086  # HOST is a list of options
timeout --kill-after=15 120 "$PYTHON" benchmarks/host_overhead.py --families prot_t5,esm2 $HOST \
  --json "$OUT/host_overhead.json" 2>>"$OUT/stderr.log" | tee "$OUT/host_overhead.txt"

run prot_t5_xl 200 --arch prot_t5_xl --proteins 2000
# Batches of up to 128 proteins instead of the config's default 32 (the token and memory budgets still apply)
run prot_t5_xl_b128 90 --arch prot_t5_xl --proteins 2000 --skip-seed --max-items 128
run esm2_3b 180 --arch esm2_3b --proteins 800
if "$PYTHON" -c "import transformers; transformers.EsmcModel" 2>/dev/null; then
  run esmc_600m 100 --arch esmc_600m --proteins 2000
else
  echo "== esmc_600m skipped: this transformers has no EsmcModel (the project needs the version in requirements_t5.txt)"
fi

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

rows = []
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    for side in ("engine", "engine_sdpa"):
        if side not in r:
            continue
        e, s = r[side], r.get("seed", {})
        rows.append((
            f"{path.stem} {side}", f"{s.get('residues_per_s', 0):.0f}", f"{e['residues_per_s']:.0f}",
            f"{r.get('speedup_' + side, {}).get('encode', 0):.2f}x", f"{s.get('mfu', 0):.2f}/{e['mfu']:.2f}",
            f"{s.get('padding_fraction', 0):.2f}/{e['padding_fraction']:.2f}",
            f"{s.get('peak_memory_bytes', 0) / 2**30:.1f}/{e['peak_memory_bytes'] / 2**30:.1f}",
            f"{e['proteins_out']}/{r['proteins']['count']}", ", ".join(
                f"{k}: {v['windows']}x{v['window_residues']}" for k, v in e["windowed"].items()) or "-",
        ))
head = ("model, side", "seed res/s", "engine res/s", "speed-up", "MFU s/e", "padding s/e", "peak GiB s/e",
        "proteins", "windowed")
widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
for row in [head, *rows]:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
EOF
