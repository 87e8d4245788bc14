"""The ``Storage`` protocol: a flat namespace of write-once objects.

Names are relative paths of lowercase hex/ASCII segments (``packs/ab/ab12…``,
``snapshots/…``). Objects are never modified in place: they are written whole, read,
listed and deleted, which object stores (S3) offer as well as local disks.
"""

from __future__ import annotations

import re
from typing import Protocol

__all__ = ["Storage", "check_name", "valid_name"]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*")


def valid_name(name: str) -> bool:
    """Whether ``name`` is a plain relative object name: no '..', no absolute path, no
    oddities (a file someone else left in the repository may have any name)."""
    return bool(_NAME.fullmatch(name)) and ".." not in name.split("/")


def check_name(name: str) -> str:
    """``name``, or ValueError when it is not a valid object name."""
    if not valid_name(name):
        raise ValueError(f"invalid object name {name!r}")
    return name


class Storage(Protocol):
    """Where a repository lives. Every method is safe to call from several threads."""

    def location(self) -> str:
        """A human-readable location (path or URL) for messages."""
        ...

    def write(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``name`` atomically and durably (all or nothing)."""
        ...

    def read(self, name: str) -> bytes:
        """The whole object; FileNotFoundError when absent."""
        ...

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; fewer only at the end of the object."""
        ...

    def size(self, name: str) -> int:
        ...

    def exists(self, name: str) -> bool:
        ...

    def is_empty(self) -> bool:
        """Nothing is stored there yet (a new or empty directory, bucket or prefix):
        the only place a repository may be created."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Names of the objects whose name starts with ``prefix`` (e.g. ``"index/"``)."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; absent objects are not an error."""
        ...
