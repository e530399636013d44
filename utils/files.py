"""Writing files safely, for every stage that writes: atomic writes (a temporary file, fsync, rename, fsync of the
directory) that each final file, chunk and report ends in, so a kill -9 at any moment leaves the old file or the whole
new one; and the output directory's lock (one run per output_dir; array shards share it).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

# Temporary files are named .{name}.tmp-{pid}-{host}: the host (a short hash of its name) lets a run tell its own
# machine's dead writers from live ones on other nodes of a shared filesystem (the chunk store). Earlier versions
# wrote .{name}.tmp-{pid}.
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(?:-(?P<host>[0-9a-f]{8}))?$")
STALE_TEMPORARY_S = 24 * 3600  # a temporary file this old belongs to no live writer on any node


def temporary_path(path: Path) -> Path:
    """Where a file is written before it is published at `path`: beside it, named for this process and host."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{HOST}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers (and crashes) see the old file or the whole new one, never a part."""
    _write_through_temporary(path, data, publish)


def write_new_bytes(path: Path, data: bytes) -> bool:
    """Write `data` to `path` only if nothing is there yet, whole or not at all (the chunk store's files never
    change once written). → False when another writer's file was there first (it stays as it is)."""
    return _write_through_temporary(path, data, publish_new)


def _write_through_temporary(path: Path, data: bytes, put: Callable[[Path, Path], Any]) -> Any:
    """`data` into a temporary file beside `path`, then put(tmp, path); the temporary file never outlives the call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        return put(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """Put a finished temporary file in place: fsync it, rename it over `path`, fsync the directory. Every writer
    of a final file or chunk ends here, so a kill -9 leaves the old file or the whole new one."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def publish_new(tmp: Path, path: Path) -> bool:
    """As publish, but only where `path` does not exist yet: a hard link publishes the whole file or fails, so of two
    writers of one name the first wins and readers never see the file change. → whether `tmp` was published."""
    _fsync(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: the same rule, with a window between the test and the rename
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
    _fsync(path.parent)
    return True


def _fsync(path: Path) -> None:
    """A file's data, or a directory's entries, on disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def reserve_space(path: Path, size: int) -> None:
    """Allocate the disk blocks for the first `size` bytes of `path` now (Linux fallocate): a full disk or a file-size
    limit (`ulimit -f`) raises OSError here, before a library that cannot survive a failed write (HDF5) writes
    there. Where the filesystem cannot reserve space (or not on Linux), nothing is reserved."""
    import ctypes

    fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if fallocate is None or size <= 0:
        return
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    descriptor = os.open(path, os.O_RDWR)
    try:
        if fallocate(descriptor, 0, 0, size) != 0:
            code = ctypes.get_errno()
            if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(descriptor)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def remove_temporary_files(output_dir: Path) -> list[Path]:
    """Temporary files a killed run left behind in the output directory; only call this holding the output
    directory's exclusive lock, when no other writer can be using them. Returns what was removed."""
    removed = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if _TEMPORARY.match(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def remove_dead_temporary_files(directory: Path, stale_s: float | None = STALE_TEMPORARY_S) -> list[Path]:
    """Temporary files in a directory that other runs may be writing to at this moment (the chunk store): those of a
    process of this host that is gone, and any older than `stale_s` (None: age alone removes nothing; an input's
    scratch file is written once and then read for as long as its run lasts). Returns what was removed."""
    removed = []
    now = time.time()
    for path in directory.iterdir() if directory.is_dir() else ():
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        mine = match.group("host") in (None, HOST)  # the older names carry no host: they were this machine's
        try:
            stale = stale_s is not None and now - path.stat().st_mtime > stale_s
        except FileNotFoundError:
            continue
        if stale or (mine and not process_alive(int(match.group("pid")))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """One run per output directory. flock is released by the kernel when the holder dies, even by kill -9.

    `shared`: array shards (--shard I/N) of one job write into one directory at once, each its own chunks; they
    share the lock with each other, and exclude a whole run or the --merge that writes the final files.
    """

    def __init__(self, output_dir: Path, shared: bool = False):
        self.path = output_dir / ".lock"
        self.shared = shared
        self.handle: Any = None

    def __enter__(self) -> OutputLock:
        # What the lock itself creates, so that a run refused for its input leaves nothing behind (see __exit__)
        self.created = [p for p in (self.path, *self.path.parents) if not p.exists()][::-1]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            other = self.handle.read().strip()
            self.handle.close()
            raise UserError(self.busy(other)) from None
        self.handle.seek(0)
        self.previous = self.handle.read()
        self.handle.seek(0)
        self.handle.truncate()
        if not self.shared:  # shards leave the file empty: a blocked run then knows it waits for shards
            self.handle.write(str(os.getpid()))
        self.handle.flush()
        if not self.shared:  # alone in the directory: no temporary file here can belong to a live writer
            remove_temporary_files(self.path.parent)
        else:  # beside other shards: only those of a killed shard of this machine (its input's scratch files)
            remove_dead_temporary_files(self.path.parent, stale_s=None)
        return self

    def busy(self, other: str) -> str:
        """The line for a run that finds the lock taken; `other`: the holder's pid, empty for shared holders."""
        who = f"another run (pid {other})" if other else "shard runs (--shard)"
        return (
            f"{self.path.parent}: {who} is writing to this output directory; "
            "wait for it to finish, or set paths.output_dir to another directory"
        )

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and issubclass(exc_type, UserError):
            # Refused before any work: bad input leaves the output side as it was, the lock's file and directories
            # included (removed while still held, so no other run can have taken them meanwhile)
            for path in reversed(self.created):
                try:
                    path.unlink() if path == self.path else path.rmdir()
                except OSError:
                    break  # something else is in it now: leave it
            if self.path not in self.created:  # the lock of an earlier run: its content back as it was
                self.handle.seek(0)
                self.handle.truncate()
                self.handle.write(self.previous)
                self.handle.flush()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


class StoreLock(OutputLock):
    """The chunk store's directory: every run that reads or writes chunks holds it shared, so that any number of runs
    use one store at once; only removing partitions (--prune-store) holds it alone."""

    def busy(self, other: str) -> str:
        if self.shared:
            return (
                f"{self.path.parent}: partitions of this chunk store are being removed (--prune-store, pid {other}); "
                "rerun when that has finished"
            )
        return f"{self.path.parent}: runs are using this chunk store; prune it when none is running"
