"""Keep policies: examples with known answers, hypothesis properties, and forget()."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_maint.backup.retention import forget, select_forget
from swarm_maint.errors import UsageError
from tests.backup.test_verify import add_snapshot, new_repo

Snap = tuple[str, dict[str, Any]]


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def snap(sid: str, when: float, host: str = "h1", paths: tuple[str, ...] = ("/data",),
         tags: tuple[str, ...] = ()) -> Snap:
    return sid, {"time": when, "hostname": host, "paths": list(paths), "tags": list(tags),
                 "tree": "00" * 32}


def kept_ids(keep: list[tuple[str, list[str]]]) -> list[str]:
    return [s for s, _ in keep]


# -- examples ---------------------------------------------------------------------------


def test_refuses_without_policy() -> None:
    snaps = [snap("a", 1.0)]
    with pytest.raises(UsageError, match="refusing to forget everything"):
        select_forget(snaps)
    keep, remove = select_forget(snaps, forget_all=True)
    assert keep == []
    assert remove == ["a"]


def test_keep_last_newest_first() -> None:
    snaps = [snap(f"s{i}", float(i * 100)) for i in range(5)]
    keep, remove = select_forget(snaps, keep_last=2)
    assert keep == [("s4", ["last"]), ("s3", ["last"])]
    assert remove == ["s2", "s1", "s0"]


def test_keep_daily_takes_newest_of_each_day() -> None:
    snaps = [
        snap("d1-morning", ts(2024, 3, 1, 8)),
        snap("d1-evening", ts(2024, 3, 1, 20)),
        snap("d2-noon", ts(2024, 3, 2, 12)),
        snap("d4-a", ts(2024, 3, 4, 1)),
        snap("d4-b", ts(2024, 3, 4, 23, 59)),
    ]
    keep, remove = select_forget(snaps, keep_daily=3)
    assert kept_ids(keep) == ["d4-b", "d2-noon", "d1-evening"]
    assert sorted(remove) == ["d1-morning", "d4-a"]
    keep, _ = select_forget(snaps, keep_daily=2)
    assert kept_ids(keep) == ["d4-b", "d2-noon"]  # last 2 days *that have snapshots*


def test_hourly_weekly_monthly_yearly_buckets() -> None:
    snaps = [
        snap("y22", ts(2022, 6, 1)),
        snap("y23-jan", ts(2023, 1, 10)),
        snap("y23-dec", ts(2023, 12, 31, 23)),
        snap("w1-mon", ts(2024, 1, 1, 9)),  # ISO week 1 of 2024
        snap("w1-sun", ts(2024, 1, 7, 9)),
        snap("w2-mon-9", ts(2024, 1, 8, 9, 5)),
        snap("w2-mon-9b", ts(2024, 1, 8, 9, 55)),
    ]
    assert kept_ids(select_forget(snaps, keep_weekly=2)[0]) == ["w2-mon-9b", "w1-sun"]
    assert kept_ids(select_forget(snaps, keep_monthly=3)[0]) == [
        "w2-mon-9b", "y23-dec", "y23-jan"]
    assert kept_ids(select_forget(snaps, keep_yearly=5)[0]) == ["w2-mon-9b", "y23-dec", "y22"]
    assert kept_ids(select_forget(snaps, keep_hourly=2)[0]) == ["w2-mon-9b", "w1-sun"]
    assert kept_ids(select_forget(snaps, keep_yearly=-1)[0]) == ["w2-mon-9b", "y23-dec", "y22"]


def test_several_reasons_and_tags() -> None:
    snaps = [snap("old", ts(2020, 1, 1), tags=("release",)),
             snap("a", ts(2024, 5, 1)), snap("b", ts(2024, 5, 2))]
    keep, remove = select_forget(snaps, keep_last=1, keep_daily=2, keep_tags=["release"])
    assert keep == [("b", ["last", "daily"]), ("a", ["daily"]), ("old", ["tag:release"])]
    assert remove == []


def test_keep_within_is_relative_to_now() -> None:
    now = ts(2024, 5, 10)
    snaps = [snap("recent", now - 3600), snap("old", now - 10 * 86400)]
    keep, remove = select_forget(snaps, keep_within=86400, now=now)
    assert keep == [("recent", ["within"])]
    assert remove == ["old"]


def test_groups_by_host_and_paths() -> None:
    snaps = [snap("h1-a", 1.0, "h1"), snap("h1-b", 2.0, "h1"), snap("h2-a", 1.5, "h2"),
             snap("h1-other", 0.5, "h1", paths=("/b", "/a")),
             snap("h1-other2", 0.7, "h1", paths=("/a", "/b"))]
    keep, _ = select_forget(snaps, keep_last=1)
    assert sorted(kept_ids(keep)) == ["h1-b", "h1-other2", "h2-a"]
    keep, _ = select_forget(snaps, keep_last=1, group_by=())
    assert kept_ids(keep) == ["h1-b"]
    keep, _ = select_forget(snaps, keep_last=1, group_by=("hostname",))
    assert sorted(kept_ids(keep)) == ["h1-b", "h2-a"]


def test_negative_counts_other_than_unlimited_refused() -> None:
    with pytest.raises(UsageError):
        select_forget([snap("a", 1.0)], keep_daily=-2)


# -- properties ----------------------------------------------------------------------------

HOSTS = st.sampled_from(["h1", "h2"])
TIMES = st.floats(min_value=ts(2020, 1, 1), max_value=ts(2026, 1, 1), allow_nan=False)
COUNT = st.integers(min_value=0, max_value=6)


@st.composite
def snapshot_lists(draw: st.DrawFn) -> list[Snap]:
    n = draw(st.integers(min_value=0, max_value=40))
    # times clustered so that buckets hold several snapshots
    base = draw(TIMES)
    out = []
    for i in range(n):
        offset = draw(st.one_of(st.floats(0, 3 * 86400), st.floats(0, 800 * 86400)))
        tags = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True))
        out.append(snap(f"s{i:03d}", base + offset, draw(HOSTS), tags=tuple(tags)))
    return out


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {k: draw(COUNT) for k in (
        "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
        "keep_yearly")}
    p["keep_tags"] = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=1))
    p["forget_all"] = True  # an empty policy is allowed in the properties
    return p


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), policies())
def test_partition_and_idempotence(snaps: list[Snap], policy: dict[str, Any]) -> None:
    keep, remove = select_forget(snaps, **policy)
    ids = [s for s, _ in snaps]
    assert sorted(kept_ids(keep) + remove) == sorted(ids)
    assert not set(kept_ids(keep)) & set(remove)
    assert all(reasons for _, reasons in keep)
    # applying the policy to what it kept removes nothing more, for the same reasons
    kept_snaps = [s for s in snaps if s[0] in set(kept_ids(keep))]
    keep2, remove2 = select_forget(kept_snaps, **policy)
    assert remove2 == []
    assert keep2 == keep


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), policies())
def test_never_removes_what_a_single_rule_keeps(snaps: list[Snap],
                                                policy: dict[str, Any]) -> None:
    _, remove = select_forget(snaps, **policy)
    removed = set(remove)
    for rule in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                 "keep_yearly"):
        if policy[rule]:
            single, _ = select_forget(snaps, **{rule: policy[rule]})
            assert not removed & set(kept_ids(single)), rule
    for s, obj in snaps:
        if set(obj["tags"]) & set(policy["keep_tags"]):
            assert s not in removed


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), st.integers(min_value=0, max_value=50))
def test_keep_last_keeps_exactly_n_per_group(snaps: list[Snap], n: int) -> None:
    keep, _ = select_forget(snaps, keep_last=n, forget_all=True)
    kept = set(kept_ids(keep))
    for host in ("h1", "h2"):
        group = sorted((s for s in snaps if s[1]["hostname"] == host),
                       key=lambda s: (s[1]["time"], s[0]), reverse=True)
        assert {s for s, _ in group[:n]} == {s for s, _ in group if s in kept}
        assert len([s for s, _ in group if s in kept]) == min(n, len(group))


@settings(max_examples=200, deadline=None)
@given(snapshot_lists(), st.integers(min_value=1, max_value=8))
def test_keep_daily_one_per_distinct_day(snaps: list[Snap], n: int) -> None:
    keep, _ = select_forget(snaps, keep_daily=n, group_by=())
    days = [datetime.fromtimestamp(next(o["time"] for s, o in snaps if s == k), UTC).date()
            for k in kept_ids(keep)]
    assert len(days) == len(set(days))
    all_days = sorted({datetime.fromtimestamp(o["time"], UTC).date() for _, o in snaps},
                      reverse=True)
    assert days == all_days[:n]


# -- forget on a repository ---------------------------------------------------------------


def test_forget_deletes_snapshot_objects(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    old = add_snapshot(repo, {"a": b"1"}, when=ts(2024, 1, 1))
    new = add_snapshot(repo, {"a": b"2"}, when=ts(2024, 1, 2))
    tagged = add_snapshot(repo, {"a": b"3"}, when=ts(2023, 1, 1), tags=("keep",))

    dry = forget(repo, keep_last=1, keep_tags=["keep"], dry_run=True)
    assert dry.removed == [old]
    assert sorted(repo.list_objects("snapshots")) == sorted([old, new, tagged])

    res = forget(repo, keep_last=1, keep_tags=["keep"])
    assert res.removed == [old]
    assert kept_ids(res.kept) == [new, tagged]
    assert sorted(repo.list_objects("snapshots")) == sorted([new, tagged])
    assert res.to_dict()["removed"] == [old]

    with pytest.raises(UsageError):
        forget(repo)
    assert len(repo.list_objects("snapshots")) == 2


def test_forget_leaves_unreadable_snapshots_alone(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    good = add_snapshot(repo, {"a": b"1"})
    repo.storage.write("snapshots/" + "ab" * 32, b"garbage")
    res = forget(repo, keep_last=1)
    assert res.unreadable == ["ab" * 32]
    assert kept_ids(res.kept) == [good]
    assert res.removed == []
    assert repo.storage.exists("snapshots/" + "ab" * 32)
