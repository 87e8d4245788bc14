"""End to end: Debian's real prometheus scrapes the agent; promtool lints /metrics.

The agent runs as a process with the fake libnvidia-ml.so.1, so GPU series flow through
the real pynvml, the real HTTP server and a real Prometheus.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_proc import RunningAgent, start_agent
from tests.fake_nvml import FakeNvmlState
from tests.live_server import free_port

pytestmark = pytest.mark.slow

GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-11111111-2222-3333-4444-555555555555",
     "pci_bus_id": "00000000:17:00.0", "util_gpu": 55, "temp": 61},
    {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-66666666-7777-8888-9999-000000000000",
     "pci_bus_id": "00000000:2A:00.0", "util_gpu": 10, "temp": 40},
]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # never skip: `make test` installs it (scripts/system-deps.sh)
        pytest.fail(f"{name} not found; run `make test` (it installs Debian's prometheus)")
    return path


@pytest.fixture
def gpu_agent(tmp_path: Path, fake_nvml: tuple[Path, FakeNvmlState]) -> Iterator[RunningAgent]:
    library, state = fake_nvml
    state.write(GPUS, driver_version="550.54.15")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[monitoring]\ninterval = "1s"\nnvml_library = "{library}"\n')
    agent = start_agent(tmp_path, "--config", str(cfg), "--state-dir", str(tmp_path / "state"),
                        env_extra={"FAKE_NVML_STATE": str(state.path)})
    yield agent
    agent.proc.terminate()
    agent.proc.communicate(timeout=10)


def test_promtool_finds_nothing(gpu_agent: RunningAgent, tmp_path: Path) -> None:
    time.sleep(1.2)  # a second collection, so rate gauges are present too
    body = httpx.get(f"{gpu_agent.url}/metrics").text
    assert 'swarm_gpu_utilization_ratio{gpu="0"' in body
    assert "swarm_network_receive_bytes_per_second" in body
    r = subprocess.run([tool("promtool"), "check", "metrics"], input=body,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == ""
    assert r.stderr.strip() == ""


def query(prom: str, expr: str) -> list[dict[str, object]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    result: list[dict[str, object]] = r.json()["data"]["result"]
    return result


def test_prometheus_scrapes_cpu_memory_network_gpu(gpu_agent: RunningAgent,
                                                   tmp_path: Path) -> None:
    port = free_port()
    target = gpu_agent.url.removeprefix("http://")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: swarm\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = (tmp_path / "prom.log").open("w")
    prom = subprocess.Popen(
        [tool("prometheus"), f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    want = {
        "cpu": 'swarm_cpu_seconds_total{mode="idle"}',
        "memory": "swarm_memory_total_bytes",
        "network": 'swarm_network_receive_bytes_total{device="lo"}',
        "gpu": 'swarm_gpu_utilization_ratio{uuid="GPU-11111111-2222-3333-4444-555555555555"}',
        "gpu_temp": 'swarm_gpu_temperature_celsius{gpu="1"}',
    }
    got: dict[str, list[dict[str, object]]] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(got) < len(want):
            time.sleep(0.5)
            if prom.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp_path / 'prom.log').read_text()}")
            try:
                for key, expr in want.items():
                    if key not in got and (res := query(url, expr)):
                        got[key] = res
            except httpx.HTTPError:
                continue
        assert set(got) == set(want), f"missing series: {set(want) - set(got)}"
        up = query(url, 'up{job="swarm"}')
        assert up[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()
    assert len(got["cpu"]) == os.cpu_count()
    gpu = got["gpu"][0]
    assert gpu["metric"]["name"] == "NVIDIA H100 80GB HBM3"  # type: ignore[index]
    assert gpu["metric"]["pci_bus_id"] == "00000000:17:00.0"  # type: ignore[index]
    assert float(gpu["value"][1]) == pytest.approx(0.55)  # type: ignore[index]
    assert float(got["gpu_temp"][0]["value"][1]) == 40  # type: ignore[index]
    assert float(got["memory"][0]["value"][1]) > 0  # type: ignore[index]
