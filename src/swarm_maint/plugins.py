"""Entry-point registry shared by every kind of plugin.

Built-ins are declared in pyproject.toml exactly like third-party plugins, so there is
one loading path. ``load_factory`` turns a missing plugin or a broken import into a
PluginError that names the group and the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import PluginError

__all__ = ["available", "load_factory"]


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available(group: str) -> list[str]:
    """Names registered in ``group``, sorted."""
    return sorted(_entry_points(group))


def load_factory(group: str, name: str) -> Callable[..., Any]:
    eps = _entry_points(group)
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"no plugin {name!r} in {group} (registered: {known})")
    try:
        factory = eps[name].load()
    except ImportError as exc:
        raise PluginError(
            f"plugin {name!r} in {group} is not available: {exc} "
            "(install its optional dependency)"
        ) from None
    if not callable(factory):
        raise PluginError(f"plugin {name!r} in {group} is not callable")
    return factory  # type: ignore[no-any-return]
