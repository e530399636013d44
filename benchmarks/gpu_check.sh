#!/usr/bin/env bash
# One prepared GPU check for a lent H100/H200, under 8 minutes: the per-step time limits below add up to 465 s, model
# building, compile warm-up and profiling included. The seed's loop against the main job's engine on ProtT5-XL (with
# batches of up to 128 as a second engine side), ESM2 3B (with a fair-esm-style loop as a second peer) and ESM C 600M,
# all random weights in the real shapes (no download), synthetic CAFA-like proteins with one 10,000- and one
# 35,000-residue one; a torch.profiler summary of a few engine batches of ProtT5-XL and ESM2 3B (top device kernels,
# device idle share); last, the host path on the machine's CPU.
#
# Five files land in $OUT (the device tool returns at most 8): summary.txt (all that is printed, the table last),
# results.json (every model's figures, the profiles included), profile.txt, host_overhead.json and stderr.log.
#
#   device run:  bash benchmarks/gpu_check.sh
#   elsewhere:   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   dry run of this script on CPU (tiny shapes, ~10 min on 2 busy cores; LIMIT_SCALE stretches the limits):
#     DEVICE=cpu LIMIT_SCALE=8 EXTRA="--layers 1 --proteins 12 --max-length 200 --long 1200 --attention segments" \
#       HOST="--families prot_t5 --small 50 --large 100" OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   the compiled FlexAttention path on CPU, ProtT5 only (STEPS picks the steps):
#     DEVICE=cpu LIMIT_SCALE=8 STEPS=prot_t5_xl EXTRA="--layers 1 --proteins 12 --max-length 200 --long 1200 \
#       --attention flex" OUT=/tmp/gpu-flex bash benchmarks/gpu_check.sh
#
# Each model runs in its own process under a time limit, so a failure or an overrun costs only that model, and
# throughput.py rewrites its JSON after every side, so a model cut off at its limit keeps the sides it finished.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}
EXTRA=${EXTRA:-}  # appended to every throughput.py call (later options win)
HOST=${HOST:---families prot_t5 --small 200 --large 2000}  # host_overhead.py's options
STEPS=${STEPS:-prot_t5_xl esm2_3b esmc_600m host}
LIMIT_SCALE=${LIMIT_SCALE:-1}
mkdir -p "$OUT"
WORK=$(mktemp -d)  # per-model JSON and profile text, combined into $OUT at the end
trap 'rm -rf "$WORK"' EXIT
: >"$OUT/stderr.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

selected() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

limited() {  # limited NAME SECONDS COMMAND...: the command under a time limit; its exit code to $WORK/codes
  local name=$1 limit=$(($2 * LIMIT_SCALE)) started=$SECONDS
  shift 2
  echo "== $name (limit ${limit} s, ${SECONDS} s into the check)"
  timeout --kill-after=10 "$limit" "$@" 2>>"$OUT/stderr.log"
  local code=$?
  echo "$name $code $((SECONDS - started))" >>"$WORK/codes"
  [ "$code" -eq 0 ] || echo "== $name FAILED (exit $code; 124 = time limit): see stderr.log"
}

step() {  # step NAME SECONDS ARGS...: one throughput.py process
  local name=$1 limit=$2
  shift 2
  selected "$name" || return 0
  # shellcheck disable=SC2086  # EXTRA is a list of options
  limited "$name" "$limit" "$PYTHON" benchmarks/throughput.py --device "$DEVICE" "$@" $EXTRA --json "$WORK/$name.json"
  combine quiet  # results.json stays current: a check cut off from outside keeps every finished model
}

combine() {  # combine quiet|table: $WORK's per-model files into $OUT/results.json and profile.txt (then the table)
  "$PYTHON" - "$WORK" "$OUT" "$1" <<'EOF'
import json, sys
from pathlib import Path

work, out, table = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "table"
codes = {}
for line in (work / "codes").read_text().splitlines():
    name, code, seconds = line.split()
    codes[name] = {"exit": int(code), "seconds": int(seconds)}
models = {}
for path in sorted(work.glob("*.json")):
    try:
        models[path.stem] = json.loads(path.read_text())
    except ValueError as exc:  # cut off while writing
        print(f"{path.name}: unreadable ({exc})", file=sys.stderr)
(out / "results.json").write_text(json.dumps({"steps": codes, "models": models}, indent=1, default=str) + "\n")
profiles = [path.read_text() for path in sorted(work.glob("*.profile"))]
(out / "profile.txt").write_text("\n".join(profiles) or "no profile was written (see stderr.log)\n")
if not table:
    raise SystemExit(0)
for text in profiles:
    print(text)

def cell(side, key, fmt, scale=None):
    value = side.get(key)
    return "-" if value is None else fmt.format(value / scale if scale else value)

rows = []
for model, r in models.items():
    for name in ("seed", "fair_esm", "engine", "engine_b128", "engine_sdpa"):
        if name not in r:
            continue
        s = r[name]
        vs_seed = r.get(f"speedup_{name}", {}).get("wall_with_warmup")
        vs_peer = r.get(f"speedup_{name}_vs_fair_esm", {}).get("wall_with_warmup")
        rows.append((
            model, name, cell(s, "residues_per_s", "{:.0f}"), cell(s, "steady_residues_per_s", "{:.0f}"),
            "-" if vs_seed is None else f"{vs_seed:.2f}x", "-" if vs_peer is None else f"{vs_peer:.2f}x",
            f"{cell(s, 'mfu', '{:.2f}')}/{cell(s, 'mfu_steady', '{:.2f}')}", cell(s, "padding_fraction", "{:.2f}"),
            cell(s, "peak_memory_bytes", "{:.1f}", 2**30), cell(s, "warmup_seconds", "{:.1f}"),
            cell(s, "compile_seconds", "{:.1f}"), cell(s, "fp32_redone", "{}"),
            f"{s['proteins_out']}/{r['proteins']['count']}", str(s.get("truncated_proteins", "-")),
            ", ".join(f"{k}: {v['windows']}x{v['window_residues']}" for k, v in s.get("windowed", {}).items()) or "-",
            s.get("path", "-"),
        ))
head = ("model", "side", "res/s", "res/s steady", "vs seed", "vs fair-esm", "MFU/steady", "padding", "peak GiB",
        "warm-up s", "compile s", "fp32 redone", "proteins", "truncated", "windowed", "path")
widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
print("res/s and speed-ups over the wall with warm-up (Encoder build, self-check, compiles); steady: batches "
      "without compiling; model load excluded")
for row in [head, *rows]:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
print("steps (exit code, seconds): " + ", ".join(f"{k} {v['exit']} {v['seconds']} s" for k, v in codes.items()))
EOF
}

check() {
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  limited environment 30 "$PYTHON" - "$DEVICE" "$WORK" <<'EOF'
import sys, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if sys.argv[1] != "cpu" and not torch.cuda.is_available():
    raise SystemExit("no GPU visible to torch")
if hasattr(transformers, "EsmcModel"):
    open(f"{sys.argv[2]}/esmc", "w").close()
EOF
  # Stop only when torch sees no GPU; a slow first import (cold disk) is no reason to give up the lent device
  [ "$(awk '$1 == "environment" {print $2}' "$WORK/codes")" != 1 ] || { echo "== stopped: see stderr.log"; return 1; }

  step prot_t5_xl 200 --arch prot_t5_xl --proteins 2000 --variants current,b128 --profile "$WORK/prot_t5_xl.profile"
  step esm2_3b 105 --arch esm2_3b --proteins 800 --profile "$WORK/esm2_3b.profile"
  if [ -e "$WORK/esmc" ]; then
    step esmc_600m 60 --arch esmc_600m --proteins 2000
  else
    echo "== esmc_600m skipped: this transformers has no EsmcModel (the project needs the version in requirements_t5.txt)"
  fi
  # The host path alone on this machine's CPU (zero-layer models: tokenization, batching, pooling, chunks, merge)
  # shellcheck disable=SC2086  # HOST is a list of options
  selected host && limited host 70 "$PYTHON" benchmarks/host_overhead.py $HOST --json "$OUT/host_overhead.json"

  combine table
  echo "== done in ${SECONDS} s"
}

check | tee "$OUT/summary.txt"
exit "${PIPESTATUS[0]}"
