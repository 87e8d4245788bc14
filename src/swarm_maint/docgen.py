"""Keeps the generated table of docs/configuration.md in step with the config models.

``python -m swarm_maint.docgen docs/configuration.md`` rewrites the part between the
markers; a test fails when the file and the models disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import iter_keys

__all__ = ["BEGIN", "END", "config_table", "update_file"]

BEGIN = "<!-- BEGIN GENERATED KEYS: python -m swarm_maint.docgen docs/configuration.md -->"
END = "<!-- END GENERATED KEYS -->"


def config_table() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, help_text in iter_keys():
        shown = default.replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines)


def render(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise ValueError(f"marker {BEGIN!r} not found")
    _, sep2, tail = rest.partition(END)
    if not sep2:
        raise ValueError(f"marker {END!r} not found")
    return f"{head}{BEGIN}\n{config_table()}\n{END}{tail}"


def update_file(path: Path) -> bool:
    """Rewrite the generated part of ``path``; True when it changed."""
    old = path.read_text()
    new = render(old)
    if new != old:
        path.write_text(new)
    return new != old


if __name__ == "__main__":
    changed = update_file(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: {'updated' if changed else 'up to date'}")
