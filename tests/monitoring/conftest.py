"""Fixtures shared by the collector tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_nvml import FakeNvmlState, build_fake_nvml


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
