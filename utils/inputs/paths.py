"""What is wrong with a path the user named as an input file, in words: a missing file, a directory, a pipe, a device
and a symlink loop each need a different fix, and 'file not found' helps with only one of them."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def input_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a regular file; None when it can, or when it simply does not exist (callers say
    'not found' in their own words)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself; fix the link"
        if exc.errno == errno.ENOENT:
            if path.is_symlink():
                return f"is a broken symbolic link (to {os.readlink(path)}); fix the link"
            return None
        if exc.errno == errno.ENOTDIR:
            return "cannot exist: a directory in its path is a file"
        return f"cannot be reached ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a pipe (a FIFO, or <(...) process substitution), not a file; save the contents to a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    return None
