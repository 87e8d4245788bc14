"""Snapshot tags as users give them (``--tag``, job config): checked before any work."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError

__all__ = ["check_tags"]


def check_tags(tags: Sequence[str]) -> list[str]:
    """``tags`` without duplicates; UsageError for an empty one, or one with a comma (lists
    print them comma-separated: "a,b" would read as two tags) or a control character."""
    out: list[str] = []
    for t in tags:
        if not t.strip():
            raise UsageError("--tag: empty tag")
        if "," in t or any(ord(c) < 32 or ord(c) == 127 for c in t):
            raise UsageError(f"--tag {t!r}: a tag may not hold a comma or a control "
                             "character")
        if t not in out:
            out.append(t)
    return out
