"""CLI helpers that need no command-line framework: the hot commands (``backup run`` and
``backup restore``, see fast_path) use them without importing Typer."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from ..store import Store

__all__ = ["check_config", "config_path", "effective_config", "node_state", "print_json",
           "state_store"]


def config_path(path: Path | None) -> Path | None:
    """The config file in effect: --config, else $SWARM_MAINT_CONFIG, else None (the
    embedded defaults)."""
    if path is None:
        env = os.environ.get("SWARM_MAINT_CONFIG")
        if env:
            return Path(env)
    return path


def effective_config(path: Path | None) -> Config:
    from ..config import load_config

    return load_config(config_path(path))


def check_config(path: Path | None) -> None:
    """Validate the config file in effect, if any (the embedded defaults are valid by
    construction, and skipping them spares the config models' import)."""
    if config_path(path) is not None:
        effective_config(path)


def node_state(path: Path | None) -> tuple[Path, float]:
    """(state directory, maintenance lease ttl) of the config in effect; with no config
    file, straight from the embedded defaults without loading the config models."""
    if config_path(path) is None:
        from ..defaults import LEASE_TTL, default_state_dir

        return default_state_dir(), LEASE_TTL
    cfg = effective_config(path)
    return cfg.agent.resolved_state_dir(), cfg.schedule.lease_ttl


@contextmanager
def state_store(cfg: Config | Path) -> Iterator[Store]:
    """The node's state database (the one the agent uses), closed after the block;
    ``cfg`` is the config or the state directory."""
    from ..store import Store

    state_dir = cfg if isinstance(cfg, Path) else cfg.agent.resolved_state_dir()
    store = Store(state_dir / "state.db")
    try:
        yield store
    finally:
        store.close()


def print_json(data: Any) -> None:
    from ..strict_json import dumps

    sys.stdout.write(dumps(data, indent=2, sort_keys=False) + "\n")


def shown_path(path: str) -> str:
    """``path`` for a terminal line: control characters (a newline would split one entry
    into two, an escape sequence would reach the terminal) and the bytes of a name that
    is not UTF-8 (kept as surrogates) written as escapes, like ``ls -b``."""
    out = []
    for ch in path:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\" or not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def shown_text(text: str) -> str:
    """Free text from outside (a custom check's output) for a terminal: control
    characters other than newline and tab written as escapes, so the text cannot move
    the cursor or recolour the operator's terminal."""
    return "".join(ch if ch in "\n\t" or ch.isprintable() else
                   ch.encode("unicode_escape").decode("ascii") for ch in text)
