"""Imported by the worker server alone (utils.running.local.WORKER_PRELOAD), the process workers are forked from.

A forked worker reads its work order from the main process through a pipe before any of our code runs in it; an error
there goes to sys.excepthook. A truncated order (UnpicklingError, or EOFError when nothing came) has one cause: the
main process died while it sent it (kill -9 during start-up). Nobody waits for that worker any more, and its
traceback would land on the terminal the user just got back: it is dropped. Every other error prints as before.
"""

from __future__ import annotations

import pickle
import sys
from types import TracebackType


def _quiet_when_orphaned(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, (pickle.UnpicklingError, EOFError)):
        return
    sys.__excepthook__(kind, value, traceback)


sys.excepthook = _quiet_when_orphaned
