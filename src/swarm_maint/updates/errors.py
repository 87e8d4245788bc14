"""Errors of the update system, under ``SwarmMaintError``.

    UpdateError        exit 20   an update could not be planned or applied
    └── PackageError   exit 21   a package manager command failed
"""

from __future__ import annotations

from ..errors import SwarmMaintError

__all__ = ["PackageError", "UpdateError"]


class UpdateError(SwarmMaintError):
    exit_code = 20


class PackageError(UpdateError):
    """A package manager command failed; the message names the command and its error."""

    exit_code = 21
