"""The bearer token that guards mutating API endpoints.

Created on first start with mode 0600 (written to a temporary name, fsynced and renamed,
so a crash never leaves an empty or half-written token).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from ..errors import StateError

__all__ = ["ensure_token", "read_token", "token_matches"]


def read_token(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot read API token: {exc.strerror}") from None
    return token or None


def ensure_token(path: Path) -> str:
    """Return the token in ``path``, creating it (mode 0600) when it does not exist."""
    existing = read_token(path)
    if existing is not None:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # readable by others: tighten rather than leak
            path.chmod(0o600)
        return existing
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        # a fresh, unpredictable name: a file or link planted at a guessable name in a
        # shared directory must not receive (or expose) the token
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"{path}: cannot create API token: {exc.strerror}") from None
    return token


def token_matches(expected: str, authorization: str | None) -> bool:
    """True when an ``Authorization: Bearer <token>`` header carries ``expected``."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())
