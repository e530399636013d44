"""Running a job: work orders → workers → the chunk store → the final files.

In: a checked Config, its splits and resolved models (utils.inputs, utils.checks). plan.py turns them into one Job
per model and one WorkOrder per device; local.py runs each order as a worker process (worker.py) in a lane per
device, or ray_engine.py as Ray actors; workers write chunks (chunks.py: one file's format and checks) into the
partition of the chunk store their settings name (store.py: a cache shared by every run; prune.py for --prune-store;
shards.py for --shard I/N array tasks and --merge). Out: merge.py turns a finished model's chunks into one file per
split through utils.outputs, and returns the exit code (utils.exits).
"""
