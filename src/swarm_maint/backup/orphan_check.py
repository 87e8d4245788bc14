"""When a backup looks for packs that a crashed writer left without an index.

Adopting such packs (``Repository.recover_unindexed_packs``) lists every pack in the
repository: on a repository of many terabytes that is a million names, seconds on a local
disk and minutes of LIST requests on object storage, paid again by every backup. Unindexed
packs only exist after a writer stopped between a pack and its index, so a backup looks
for them only when one of these says that may have happened:

- its own lock removed a stale lock: a writer died while holding one;
- this node's last backup of the repository did not finish (killed, crashed, or failed);
  a restore or verify may have removed that one's stale lock since;
- the last look was a week ago or more, or this state directory has never looked: this
  catches the rest, such as another node's crash whose stale lock a restore removed.

A pack that is never adopted only costs space until prune deletes it (prune removes
unindexed packs older than its grace period); it never endangers a snapshot. The state
lives in one small JSON file beside the repository's files cache; a missing, unreadable
or damaged file means "look".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .repository import Repository

__all__ = ["CHECK_EVERY", "OrphanCheck", "backup_starts"]

CHECK_EVERY = 7 * 86400.0  # seconds between looks when nothing says one is needed
_FILE = "orphan-check.json"


class OrphanCheck:
    """``due`` says whether to look; ``begin`` and ``end`` bracket a backup."""

    def __init__(self, folder: str | os.PathLike[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(folder) / _FILE
        self._clock = clock
        self._checked = self._load()

    def _load(self) -> float | None:
        """When the last look was, or None when it is unknown or a backup was cut off."""
        try:
            doc = json.loads(self.path.read_bytes())
            unfinished, checked = doc["unfinished"], doc["checked"]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if unfinished is not False or not isinstance(checked, (int, float)):
            return None
        return float(checked)

    def due(self, stale_locks_removed: int) -> bool:
        """Whether this backup should look for unindexed packs."""
        if stale_locks_removed or self._checked is None:
            return True
        age = self._clock() - self._checked
        return not 0 <= age < CHECK_EVERY  # a clock set back also means "look"

    def begin(self, looked: bool) -> None:
        """Record that a backup started (after its look, if it looked)."""
        if looked:
            self._checked = self._clock()
        self._write(True)

    def end(self) -> None:
        """Record that the backup finished: its snapshot and index are stored."""
        self._write(False)

    def _write(self, unfinished: bool) -> None:
        # no fsync: after a power cut a lost or torn file reads as "look", the safe side
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps({"unfinished": unfinished, "checked": self._checked}))
        tmp.replace(self.path)


def backup_starts(repo: Repository, stale_locks_removed: int,
                  folder: str | os.PathLike[str]) -> OrphanCheck:
    """Before a backup that holds its lock: adopt unindexed packs when a look is due, and
    record that a backup started; call ``end()`` on the result once its snapshot is
    stored."""
    check = OrphanCheck(folder)
    look = check.due(stale_locks_removed)
    if look:
        repo.recover_unindexed_packs()
    check.begin(look)
    return check
