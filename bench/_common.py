"""Small helpers every benchmark script uses: options, ports and versions."""

from __future__ import annotations

import argparse
import socket
import subprocess
from importlib import metadata

__all__ = ["free_port", "positive_int", "swarm_version", "version_line"]


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def version_line(argv: list[str]) -> str:
    """The first line a ``--version``-like command prints, or "unknown"."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def swarm_version() -> str:
    try:
        return metadata.version("swarm-maint")
    except metadata.PackageNotFoundError:
        return "unknown"
