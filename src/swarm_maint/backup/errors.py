"""Errors of the backup engine (all SwarmMaintError subclasses with their exit codes)."""

from __future__ import annotations

from ..errors import SwarmMaintError

__all__ = [
    "DamagedObjectError",
    "LockedError",
    "RepositoryError",
    "RepositoryExistsError",
    "RepositoryNotFoundError",
    "SnapshotSelectorError",
    "StorageFullError",
    "WrongPasswordError",
]


class RepositoryError(SwarmMaintError):
    """A repository cannot be used as asked."""

    exit_code = 10


class RepositoryNotFoundError(RepositoryError):
    exit_code = 10


class RepositoryExistsError(RepositoryError):
    exit_code = 10


class SnapshotSelectorError(RepositoryError):
    """A snapshot reference that names no snapshot, or several: a bad argument."""

    exit_code = 2


class WrongPasswordError(RepositoryError):
    """No key of the repository opens with this password."""

    exit_code = 12


class DamagedObjectError(RepositoryError):
    """An object failed authentication, or its content does not match its id."""

    exit_code = 13

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class LockedError(RepositoryError):
    """Another process holds a conflicting lock."""

    exit_code = 11


class StorageFullError(RepositoryError):
    """The storage has no space left; nothing stored before was changed."""

    exit_code = 14
