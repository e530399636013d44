#!/usr/bin/env bash
# One embedding job over a SLURM array: N tasks each embed the unique sequences of their shard (a sequence's shard is
# fixed by its digest, so re-submitting a failed task redoes only its own work) into the chunk store under the shared
# output_dir; a merge job, started when every task has succeeded, writes the final files.
#
#   bash examples/slurm_array.sh config_t5.yaml 8       # submits 8 GPU tasks and the dependent merge
#
# Needs: paths.output_dir on a filesystem every node sees (the chunk store and the lock live there; the lock is an
# flock, which Lustre gives only when mounted with -o flock), the project's Python environment on every node, and
# the checkpoints downloaded once beforehand (HF_HUB_OFFLINE=1 below keeps tasks from racing to the hub).
# Adjust the #SBATCH-style options (partition, time, GPUs) to your site.
set -euo pipefail
CONFIG=$(realpath "${1:?usage: slurm_array.sh CONFIG N_SHARDS}")
SHARDS=${2:?usage: slurm_array.sh CONFIG N_SHARDS}
cd "$(dirname "$0")/.."
mkdir -p logs/slurm

array_id=$(sbatch --parsable --array="0-$((SHARDS - 1))" --gres=gpu:1 --cpus-per-task=8 --mem=64G --time=24:00:00 \
    --job-name=embed-shard --output="logs/slurm/shard-%A_%a.out" \
    --export=ALL,HF_HUB_OFFLINE=1 \
    --wrap="python generate_embeddings_t5.py --config '$CONFIG' --shard \$SLURM_ARRAY_TASK_ID/$SHARDS")

# afterok: the merge starts only if every array task exited 0; otherwise resubmit the failed task ids and the merge.
sbatch --parsable --dependency="afterok:${array_id}" --cpus-per-task=4 --mem=32G --time=4:00:00 \
    --job-name=embed-merge --output="logs/slurm/merge-%j.out" \
    --export=ALL,HF_HUB_OFFLINE=1 \
    --wrap="python generate_embeddings_t5.py --config '$CONFIG' --merge"
echo "submitted array ${array_id} (${SHARDS} shards) and its merge"
