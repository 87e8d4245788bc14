"""The agent listens for XIDs on the kernel log and on NVML events at once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.agent_proc import start_agent
from tests.fake_nvml import FakeNvmlState

pytestmark = pytest.mark.slow


def test_nvml_xid_event_turns_gpu_xid_critical(tmp_path: Path,
                                                fake_nvml: tuple[Path, FakeNvmlState]) -> None:
    library, state = fake_nvml
    state.write([{"pci_bus_id": "00000000:2A:00.0", "name": "NVIDIA H100"}])
    klog = tmp_path / "kern.log"
    klog.write_text("")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[monitoring]\nnvml_library = "{library}"\n'
                   f'[health]\nkernel_log = "{klog}"\n')
    agent = start_agent(tmp_path, "--config", str(cfg), "--state-dir", str(tmp_path / "st"),
                        env_extra={"FAKE_NVML_STATE": str(state.path)})
    try:
        deadline = time.monotonic() + 30

        def xid_condition() -> dict[str, object] | None:
            body = httpx.get(f"{agent.url}/api/v1/health").json()
            return next((c for c in body["conditions"] if c["check"] == "gpu_xid"), None)

        while xid_condition() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        state.update_gpu(0, xid_events="48")  # the driver raises an XID event
        cond = xid_condition()
        while (cond is None or cond["status"] != "CRITICAL") and time.monotonic() < deadline:
            time.sleep(0.05)
            cond = xid_condition()
        assert cond is not None
        assert cond["status"] == "CRITICAL"
        assert "Xid 48" in str(cond["message"])
        assert "00000000:2A:00.0" in str(cond["message"])
    finally:
        agent.proc.terminate()
        agent.proc.communicate(timeout=10)
    assert agent.proc.returncode == 0
