"""Running the node commands of a runbook (drain, reboot, driver reload, restarts)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from .errors import UpdateError

__all__ = ["run_command"]


def run_command(argv: Sequence[str], what: str, timeout: float = 600.0) -> str:
    """Run ``argv``; its output on success, one-line ``UpdateError`` naming ``what`` else."""
    if not argv:
        raise UpdateError(f"{what}: no command configured")
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UpdateError(f"{what}: {argv[0]}: command not found") from None
    except PermissionError:
        raise UpdateError(f"{what}: {argv[0]}: not executable") from None
    except subprocess.TimeoutExpired:
        raise UpdateError(f"{what}: {argv[0]} timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise UpdateError(f"{what}: {argv[0]} exited {proc.returncode}"
                          + (f": {lines[-1]}" if lines else ""))
    return proc.stdout.strip()
