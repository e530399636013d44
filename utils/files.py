"""Writing files safely, for every stage that writes: atomic writes (a temporary file, fsync, rename, fsync of the
directory) that each final file, chunk and report ends in, so a kill -9 at any moment leaves the old file or the whole
new one; and the output directory's lock (one run per output_dir; array shards share it).
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers (and crashes) see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """Put a finished temporary file in place: fsync it, rename it over `path`, fsync the directory. Every writer
    of a final file or chunk ends here, so a kill -9 leaves the old file or the whole new one."""
    descriptor = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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


_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$")  # atomic_write_bytes' and H5Writer's names: .{name}.tmp-{pid}


def remove_temporary_files(output_dir: Path) -> list[Path]:
    """Temporary files a killed run left behind (in the output directory and the chunk directories); only call this
    holding the exclusive lock, when no other writer can be using them. Returns what was removed."""
    removed = []
    for directory in [output_dir, *sorted((output_dir / ".chunks").glob("*"))]:
        if not directory.is_dir() or directory.is_symlink():
            continue
        for path in directory.iterdir():
            if _TEMPORARY.match(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
            who = f"another run (pid {other})" if other else "shard runs (--shard)"
            raise UserError(
                f"{self.path.parent}: {who} is writing to this output directory; "
                "wait for it to finish, or set paths.output_dir to another directory"
            ) from None
        self.handle.seek(0)
        self.previous = self.handle.read()
        self.handle.seek(0)
        self.handle.truncate()
        if not self.shared:  # shards leave the file empty: a blocked run then knows it waits for shards
            self.handle.write(str(os.getpid()))
        self.handle.flush()
        if not self.shared:  # alone in the directory: no temporary file here can belong to a live writer
            remove_temporary_files(self.path.parent)
        return self

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
