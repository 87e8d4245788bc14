"""Shared pieces of the config models: the section base class, durations, small parsers."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from ..defaults import default_state_dir
from ..durations import check_duration, format_duration, parse_duration

__all__ = ["Duration", "default_state_dir", "parse_listen"]


def _to_seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration string such as '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        raise ValueError("expected a duration string such as '30s'")
    # TOML has nan and inf: every comparison with NaN is false, so it would pass the
    # minimums, and JSON has no spelling for either
    check_duration(seconds, value)
    if seconds < 0:
        raise ValueError("durations cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(format_duration, return_type=str),
]
"""Seconds in Python, a string like ``"5m"`` in TOML."""


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9310 or [::1]:9310)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    return host, port


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


def is_http_url(url: str) -> bool:
    """An http(s) URL with a host, and a port that is a number in range if given: what
    httpx can send to (it accepts ``http://[bad`` and ``:99999`` and fails later)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (out of range or not a number: ValueError)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and \
        not any(c.isspace() for c in url)


class _Section(BaseModel):
    # NaN passes every minimum (each comparison with it is false) and inf every maximum
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True,
                              allow_inf_nan=False)

