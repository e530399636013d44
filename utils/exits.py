"""Exit codes, one set for the scripts, the job and its worker processes, and run_script, through which a script's
errors and Ctrl-C become them.

A worker process ends with the same code its job would: the job reads INTERRUPTED from a worker as "stopped on
request, chunks kept" and any other non-zero code as a failure of that model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.errors import UserError
from utils.requirements import requirements_checked

OK = 0
FAILED = 1  # a model (or, for the pre-flight check, a check) failed
BAD_INPUT = 2  # the user's config, FASTA or paths; nothing was loaded or written
INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, as shells report it); finished chunks are kept


def run_script(main: Callable[[], int], interrupted: str) -> int:
    """A script's `main` as the command line runs it: a user's error (a missing requirement included) is its lines
    and BAD_INPUT; Ctrl-C that `main` has not handled itself is `interrupted` in one line and INTERRUPTED. Never a
    traceback for either."""
    try:
        with requirements_checked():
            return main()
    except UserError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return INTERRUPTED
