"""The node's host name, as ``socket.gethostname()`` gives it on Linux (both read the
kernel's node name), without importing ``socket``: a cold start of ``backup run`` would
load the ``_socket`` extension for nothing else."""

from __future__ import annotations

import os

__all__ = ["local_hostname"]


def local_hostname() -> str:
    return os.uname().nodename
