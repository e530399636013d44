"""Checks: everything that can fail, found before (or instead of) the real run.

In: a loaded Config and its models. preflight.py checks devices, output paths and disk before anything loads;
resolve.py resolves each model (local path or hub id, content identity, truncated weights, family) for the run and
the Python API alike; dryrun.py prints the plan without loading a model (--dry-run); preflight_check.py with
validation.py and validation_checks.py is validate_t5_embeddings.py: load, token layout, embeddings, pooling, batch
invariance, reference agreement, memory and time on a sample. Out: a list of problems (a UserError) or a report;
nothing here writes an output file.
"""
