import stat
from pathlib import Path

from swarm_maint.api.auth import ensure_token, token_matches


def test_token_created_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "api-token"
    token = ensure_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == token
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("abc\n")
    path.chmod(0o644)
    assert ensure_token(path) == "abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_token_matches() -> None:
    assert token_matches("abc", "Bearer abc")
    assert token_matches("abc", "bearer abc")
    assert not token_matches("abc", "Bearer abd")
    assert not token_matches("abc", "Basic abc")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "")
