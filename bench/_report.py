"""Writing one benchmark's section of BENCHMARKS.md, leaving the other sections alone."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["PREAMBLE", "TITLE", "cpu_model", "write_section"]

TITLE = "# Benchmarks"
PREAMBLE = (
    "Every figure in this file comes from a command in this file, run side by side with "
    "the real peer in the same run."
)


def write_section(path: Path, begin: str, end: str, text: str) -> None:
    """Replace the text between the ``begin`` and ``end`` markers (``text`` includes them),
    or append it; the file keeps its title and preamble."""
    if path.exists():
        old = path.read_text()
        b, e = old.find(begin), old.find(end)
        if b != -1 and e > b:
            stop = e + len(end)
            if old[stop:stop + 1] == "\n":
                stop += 1
            new = old[:b] + text + old[stop:]
        else:
            new = old.rstrip("\n") + "\n\n" + text
    else:
        new = f"{TITLE}\n\n{PREAMBLE}\n\n{text}"
    if not new.lstrip().startswith(TITLE):
        new = f"{TITLE}\n\n{PREAMBLE}\n\n{new.lstrip()}"
    path.write_text(new)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
