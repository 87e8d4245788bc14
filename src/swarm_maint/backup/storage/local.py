"""A repository in a local directory: temp name, fsync, rename, fsync the directory.

Large page-aligned objects (packs) are written with direct I/O, see ``direct_io``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from ..direct_io import ALIGN, AlignedBuffer, align_up, pwrite_all, read_direct_into, set_direct
from ..errors import RepositoryNotFoundError, StorageFullError
from .base import check_name, valid_name

__all__ = ["LocalStorage"]


class LocalStorage:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise RepositoryNotFoundError(f"{self.root}: not a directory, so not a repository")

    def location(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def write(self, name: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                # page-aligned buffers (packs) go to the disk directly, not via the cache
                with memoryview(data) as view:
                    pwrite_all(fd, view)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError(
                    f"{self.root}: no space left writing {name}; nothing was overwritten"
                ) from None
            raise
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)

    def _open(self, name: str) -> int:
        """A descriptor on the object, which must be a regular file: a FIFO or device
        put in its place would block a read forever or never end."""
        path = self._path(name)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return fd

    def read(self, name: str) -> bytes:
        fd = self._open(name)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        path = self._path(name)
        fd = self._open(name)
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:  # pread's error names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        finally:
            os.close(fd)

    def read_range_direct(self, name: str, offset: int, length: int,
                          buf: AlignedBuffer) -> memoryview:
        """``read_range`` with direct I/O into ``buf`` (grown as needed): one device read
        of the aligned span around the range, no page cache. The view is valid until
        ``buf`` is used again."""
        lo = offset & ~(ALIGN - 1)
        span = align_up(offset + length) - lo
        buf.n = 0
        buf.reserve(span)
        fd = self._open(name)
        try:
            with buf.view[:span] as dest:
                set_direct(fd, True)  # where refused, the same read uses the page cache
                got = read_direct_into(fd, dest, lo)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self._path(name))) from None
        finally:
            os.close(fd)
        end = min(got, offset - lo + length)
        return buf.view[offset - lo:max(end, offset - lo)]

    def size(self, name: str) -> int:
        path = self._path(name)
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return st.st_size

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def is_empty(self) -> bool:
        try:
            with os.scandir(self.root) as it:
                return next(it, None) is None
        except FileNotFoundError:
            return True

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for f in files:
                if f.startswith(".tmp-"):
                    continue  # a write cut off by a crash: never a valid object
                name = f if rel == "." else f"{rel}/{f}"
                if valid_name(name):  # else no object: someone else's file, left alone
                    out.append(name)
        return sorted(out)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()
