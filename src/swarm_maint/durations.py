"""Durations written as ``500ms``, ``30s``, ``5m``, ``1h``, ``7d`` (or combined: ``1h30m``)."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text``; raise ValueError with a readable reason."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration; write e.g. '1s', '500ms', '5m'")
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        raise ValueError(
            f"invalid duration {text!r}; write a number and a unit (ms, s, m, h, d, w), e.g. '30s'"
        )
    return check_duration(total, text)


MAX_SECONDS = 100 * 366 * 86400.0  # a century: past it, times overflow the calendar


def check_duration(seconds: float, text: object) -> float:
    """``seconds`` if it is a finite duration of at most a century; ValueError naming
    ``text`` otherwise (a 400-digit number is infinity, and no date is that far)."""
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite duration")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the units parse_duration accepts."""
    if seconds < 0:
        raise ValueError("durations cannot be negative")
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts: list[str] = []
    for unit, size_ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, ms = divmod(ms, size_ms)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)
