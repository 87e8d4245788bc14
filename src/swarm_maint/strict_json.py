"""JSON that every parser reads: NaN and infinities become null.

Python's ``json`` writes them as ``NaN``/``Infinity``, which jq, browsers and most parsers
reject; Starlette refuses them outright (a 500). Values such as an alert on ``x / 0``
or a gauge a driver reports as NaN are legitimate, so they are mapped, not refused."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite"]


def finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None (dicts, lists, tuples)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def dumps(data: Any, **kw: Any) -> str:
    return json.dumps(finite(data), allow_nan=False, **kw)
