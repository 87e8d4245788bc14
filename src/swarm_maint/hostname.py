"""The node's host name, the one source of it for the whole project: what
``socket.gethostname()`` gives on Linux (both read the kernel's node name), without
importing ``socket``, whose ``_socket`` extension a cold ``backup run`` would otherwise
load for nothing else."""

from __future__ import annotations

import os

__all__ = ["local_hostname"]


def local_hostname() -> str:
    return os.uname().nodename
