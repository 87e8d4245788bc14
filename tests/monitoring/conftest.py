"""Fixtures shared by the collector tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/monitoring is not a package, so pytest puts this folder (not the repository root)
# on sys.path; make `tests.*` importable for this conftest and the test modules beside it.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fake_nvml import FakeNvmlState, build_fake_nvml  # noqa: E402


@pytest.fixture
def fake_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeNvmlState]:
    """(path of the fake libnvidia-ml.so.1, writer of its state file).

    FAKE_NVML_STATE points at a fresh state file with no GPU; the test writes the GPUs it
    wants with ``state.write([...])`` and may rewrite them between two collect() calls.
    """
    library = build_fake_nvml()
    state = FakeNvmlState(tmp_path / "fake-nvml.state")
    state.write([])
    monkeypatch.setenv("FAKE_NVML_STATE", str(state.path))
    return library, state
