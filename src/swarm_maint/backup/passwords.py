"""Repository passwords kept in files: given ones, and those generated for the local
repositories the agent creates itself (scheduled backups, configuration snapshots)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..errors import StateError, SwarmMaintError, UsageError

__all__ = ["generated_password", "read_password_file"]


def read_password_file(path: Path, what: str,
                       error: type[SwarmMaintError] = UsageError) -> str:
    """The first line of ``path``; ``error`` naming ``what`` (the option or key that gave
    it) when the file cannot be read or has no password."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise error(f"{what} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path}: not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise error(f"{what} {path}: the file is empty (the password is its first line)")
    return lines[0]


def generated_password(path: Path, *, repository_exists: bool) -> str:
    """The password of a repository the agent created: generated (mode 0600, in a 0700
    directory) together with the repository. When the repository exists and the file
    is gone, a new password could not open it: that is an error naming the file."""
    if not path.exists():
        if repository_exists:
            raise StateError(
                f"{path}: the generated password of the existing repository beside it is "
                "missing; put the file back (from a backup) to open it")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return read_password_file(path, "generated password file", StateError)
