"""Checks: everything that can fail, found before (or instead of) the real run.

In: a loaded Config and its models. resolve.py resolves each model (local path or hub id, content identity,
truncated weights, family) for the run and the Python API alike; preflight.py checks devices, output paths and disk,
and keys the chunk store by the settings that decide a chunk's numbers; dryrun.py prints the plan without loading a
model (--dry-run). validate_t5_embeddings.py is preflight_check.py, which embeds a sample through the job's own path
and judges it with validation.py (the checkpoint: load, token layout) and encoder_checks.py (embeddings, pooling,
batch invariance, fp32 reference, memory, time). Out: a list of problems (a UserError) or a report; nothing here
writes an output file.
"""
