"""Which snapshots a keep policy keeps (restic's semantics), and ``forget`` itself.

Snapshots are grouped (by hostname and paths unless told otherwise) and each group is
walked newest first. ``keep_last`` keeps the N newest; ``keep_hourly``/``daily``/
``weekly``/``monthly``/``yearly`` keep the newest snapshot of each of the last N distinct
hours/days/ISO weeks/months/years (UTC) that have snapshots; ``keep_tags`` keeps every
snapshot carrying one of the tags; ``keep_within`` keeps those younger than that many
seconds. A count of -1 means unlimited. A snapshot may be kept for several reasons.

``select_forget`` is pure; ``forget`` loads the snapshots and deletes the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import UsageError
from .errors import DamagedObjectError
from .repository import Repository

__all__ = ["ForgetResult", "KeepPolicy", "forget", "forget_snapshots", "select_forget",
           "snapshot_time"]

Snapshot = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class KeepPolicy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_tags: tuple[str, ...] = ()
    keep_within: float | None = None  # seconds before ``now``

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                     "keep_monthly", "keep_yearly"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < -1:
                raise UsageError(f"{name.replace('_', '-')} must be >= 0 (or -1: unlimited)")
        if self.keep_within is not None and self.keep_within < 0:
            raise UsageError("keep-within must be >= 0 seconds")

    @property
    def empty(self) -> bool:
        return (not any((self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly,
                         self.keep_monthly, self.keep_yearly))
                and not self.keep_tags and self.keep_within is None)


def _bucket_hourly(t: datetime) -> object:
    return (t.year, t.month, t.day, t.hour)


def _bucket_daily(t: datetime) -> object:
    return (t.year, t.month, t.day)


def _bucket_weekly(t: datetime) -> object:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _bucket_monthly(t: datetime) -> object:
    return (t.year, t.month)


def _bucket_yearly(t: datetime) -> object:
    return t.year


_BUCKETS: tuple[tuple[str, str, Callable[[datetime], object]], ...] = (
    ("hourly", "keep_hourly", _bucket_hourly),
    ("daily", "keep_daily", _bucket_daily),
    ("weekly", "keep_weekly", _bucket_weekly),
    ("monthly", "keep_monthly", _bucket_monthly),
    ("yearly", "keep_yearly", _bucket_yearly),
)


def snapshot_time(obj: dict[str, Any]) -> float:
    """The snapshot's time as a Unix float (0.0 when absent or invalid)."""
    try:
        t = float(obj.get("time", 0.0))
    except (TypeError, ValueError):
        return 0.0
    return t if 0.0 <= t < 2.5e11 else 0.0  # NaN and absurd values sort oldest


def _group_value(obj: dict[str, Any], key: str) -> object:
    v = obj.get(key)
    if isinstance(v, list):
        return tuple(sorted(str(x) for x in v))
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


def select_forget(
    snapshots: Sequence[Snapshot],
    *,
    keep_last: int = 0,
    keep_hourly: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    keep_yearly: int = 0,
    keep_tags: Iterable[str] = (),
    keep_within: float | None = None,
    group_by: Sequence[str] = ("hostname", "paths"),
    now: float | None = None,
    forget_all: bool = False,
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(kept: [(id, reasons)], removed: [id]), both newest first.

    Raises UsageError when no keep rule is given, unless ``forget_all`` says that
    removing every snapshot is what is wanted.
    """
    policy = KeepPolicy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
                        keep_yearly, tuple(keep_tags), keep_within)
    if policy.empty and not forget_all:
        raise UsageError("no keep policy given; refusing to forget everything")
    now_t = time.time() if now is None else now
    tags = set(policy.keep_tags)

    ordered = sorted(snapshots, key=lambda s: (snapshot_time(s[1]), s[0]), reverse=True)
    groups: dict[tuple[object, ...], list[Snapshot]] = {}
    for snap in ordered:
        key = tuple(_group_value(snap[1], g) for g in group_by)
        groups.setdefault(key, []).append(snap)

    reasons: dict[str, list[str]] = {}
    for members in groups.values():
        last_left = policy.keep_last
        left = {name: getattr(policy, attr) for name, attr, _ in _BUCKETS}
        last_bucket: dict[str, object] = {}
        for sid, obj in members:
            why: list[str] = []
            if last_left != 0:
                why.append("last")
                last_left -= 1
            t = snapshot_time(obj)
            dt = datetime.fromtimestamp(t, UTC)
            for name, _attr, fn in _BUCKETS:
                if left[name] == 0:
                    continue
                b = fn(dt)
                if name in last_bucket and last_bucket[name] == b:
                    continue
                why.append(name)
                last_bucket[name] = b
                left[name] -= 1
            snap_tags = obj.get("tags")
            if tags and isinstance(snap_tags, list):
                why.extend(f"tag:{tag}" for tag in sorted(tags.intersection(
                    str(x) for x in snap_tags)))
            if policy.keep_within is not None and t >= now_t - policy.keep_within:
                why.append("within")
            if why:
                reasons[sid] = why

    kept = [(sid, reasons[sid]) for sid, _ in ordered if sid in reasons]
    removed = [sid for sid, _ in ordered if sid not in reasons]
    return kept, removed


@dataclass
class ForgetResult:
    kept: list[tuple[str, list[str]]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # left alone: time unknown
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kept": [{"id": s, "reasons": r} for s, r in self.kept],
                "removed": list(self.removed), "unreadable": list(self.unreadable),
                "dry_run": self.dry_run}


def forget(
    repo: Repository,
    *,
    keep_last: int = 0,
    keep_hourly: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    keep_yearly: int = 0,
    keep_tags: Iterable[str] = (),
    keep_within: float | None = None,
    group_by: Sequence[str] = ("hostname", "paths"),
    now: float | None = None,
    forget_all: bool = False,
    dry_run: bool = False,
    only_tags: Iterable[str] = (),
    all_readable: bool = False,
) -> ForgetResult:
    """Delete the snapshot objects the policy does not keep (only the objects: their data
    stays until ``prune``). Snapshots that cannot be read are never deleted here.
    With ``only_tags``, only snapshots carrying all of them are considered (a scheduled
    backup job's own snapshots, in a repository several jobs share). With
    ``all_readable`` (a prune follows, which could not tell what an unreadable snapshot
    uses), an unreadable snapshot stops it before anything is deleted."""
    keep_tags = tuple(keep_tags)
    # refuse before reading anything
    if KeepPolicy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly,
                  keep_tags, keep_within).empty and not forget_all:
        raise UsageError("no keep policy given; refusing to forget everything")
    result = ForgetResult(dry_run=dry_run)
    snaps: list[Snapshot] = []
    required = set(only_tags)
    for sid in repo.list_objects("snapshots"):
        try:
            obj = repo.load_object("snapshots", sid)
        except (DamagedObjectError, OSError, ValueError):
            result.unreadable.append(sid)
            continue
        if required <= set(obj.get("tags", [])):
            snaps.append((sid, obj))
    if all_readable and result.unreadable and not dry_run:
        bad = result.unreadable[0]
        raise DamagedObjectError(
            f"snapshot {bad[:16]} cannot be read, so prune cannot tell which data is still "
            "used; nothing was forgotten or deleted (run `swarm-maint backup verify`, or "
            "forget without --prune)", f"snapshots/{bad}")
    result.kept, result.removed = select_forget(
        snaps, keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
        keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly,
        keep_tags=keep_tags, keep_within=keep_within, group_by=group_by, now=now,
        forget_all=forget_all)
    if result.removed and not result.kept and not forget_all:
        # a policy that keeps nothing is almost always a mistake, most often a misspelled
        # --keep-tag: every snapshot, and with prune all the data, would go
        present = {t for _, o in snaps for t in o.get("tags", [])}
        unmatched = [t for t in keep_tags if t not in present]
        hint = (f"; --keep-tag {', '.join(unmatched)} matches no snapshot" if unmatched
                else "")
        raise UsageError(f"the keep policy keeps none of the {len(result.removed)} "
                         f"snapshot(s){hint}; refusing to forget them all")
    if not dry_run:
        for sid in result.removed:
            repo.storage.delete(f"snapshots/{sid}")
    return result


def forget_snapshots(repo: Repository, ids: Iterable[str], *,
                     dry_run: bool = False) -> ForgetResult:
    """Delete the snapshot objects named by full id, readable or not: the way out for a
    damaged snapshot, which a keep policy never removes (its time is unknown)."""
    result = ForgetResult(dry_run=dry_run)
    result.removed = list(dict.fromkeys(ids))
    if not dry_run:
        for sid in result.removed:
            repo.storage.delete(f"snapshots/{sid}")
    return result
