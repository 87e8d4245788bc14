import sqlite3
from pathlib import Path

import pytest

from swarm_maint.errors import StateError
from swarm_maint.store import MIGRATIONS, Store


def test_wal_and_migrations_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    store.close()
    # reopening applies nothing twice
    again = Store(tmp_path / "state.db")
    assert again.applied_migrations() == [name for name, _ in MIGRATIONS]
    again.close()


def test_new_migration_applied_once(tmp_path: Path) -> None:
    extra = [*MIGRATIONS, ("0099_test", "CREATE TABLE t (x INTEGER)")]
    Store(tmp_path / "s.db").close()
    s = Store(tmp_path / "s.db", extra)
    assert "0099_test" in s.applied_migrations()
    s.close()
    Store(tmp_path / "s.db", extra).close()  # would fail on "table t already exists"


def test_failed_migration_leaves_nothing_half_done(tmp_path: Path) -> None:
    bad = [*MIGRATIONS, ("0099_bad", "CREATE TABLE ok (x INTEGER); CREATE TABLE broken (")]
    with pytest.raises(StateError, match="cannot migrate"):
        Store(tmp_path / "s.db", bad)
    conn = sqlite3.connect(tmp_path / "s.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    names = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
    conn.close()
    assert "ok" not in tables
    assert "0099_bad" not in names
    assert names == {name for name, _ in MIGRATIONS}


def test_transaction_rolls_back(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db")
    def insert_then_fail() -> None:
        with s.transaction() as db:
            db.execute("INSERT INTO metric_series(name, labels) VALUES ('a', '{}')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        insert_then_fail()
    assert s.query("SELECT count(*) FROM metric_series")[0][0] == 0
    s.close()


def test_unusable_path_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="cannot open"):
        Store(tmp_path / "file" / "state.db")
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StateError):
        Store(tmp_path / "garbage.db")
