"""Small files are read with the size the scan saw, not the 8 MiB a chunk may have."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from swarm_maint.backup.backup import _read_upto

LIMIT = (8 << 20) + 1


class Recording(io.FileIO):
    """A real file that records how much each read asks for."""

    asked: list[int]

    def read(self, size: int = -1, /) -> bytes:
        self.asked.append(size)
        return super().read(size)


def _open(path: Path) -> Recording:
    f = Recording(path, "rb")
    f.asked = []
    return f


@pytest.mark.parametrize("size", [0, 1, 4096, 20_000, 1 << 20])
def test_a_file_of_the_expected_size(tmp_path: Path, size: int) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    with _open(p) as f:
        data, complete = _read_upto(f, LIMIT, size)
    assert data == p.read_bytes() and complete
    assert max(f.asked) == size + 1  # never the whole limit
    assert len(f.asked) <= 2  # the data, then one byte that finds the end


def test_a_file_that_grew_since_the_scan(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"a" * 3_000_000)
    with _open(p) as f:
        data, complete = _read_upto(f, LIMIT, 1000)
    assert data == p.read_bytes() and complete


def test_a_file_that_shrank_since_the_scan(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    with _open(p) as f:
        assert _read_upto(f, LIMIT, 5000) == (b"abc", True)


def test_a_file_larger_than_the_limit_is_not_complete(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"z" * 10_000)
    with _open(p) as f:
        data, complete = _read_upto(f, 4097, 100)
    assert data == b"z" * 4097 and not complete
