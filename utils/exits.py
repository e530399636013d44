"""Exit codes, one set for the scripts, the job and its worker processes.

A worker process ends with the same code its job would: the job reads INTERRUPTED from a worker as "stopped on
request, chunks kept" and any other non-zero code as a failure of that model.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # a model (or, for the pre-flight check, a check) failed
BAD_INPUT = 2  # the user's config, FASTA or paths; nothing was loaded or written
INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, as shells report it); finished chunks are kept
