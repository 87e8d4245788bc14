"""The agent as a real process: defaults, token, signals, bad input, the status command."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_proc import CLI, RunningAgent, start_agent
from tests.live_server import free_port

pytestmark = pytest.mark.slow

@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    a = start_agent(tmp_path)
    yield a
    if a.proc.poll() is None:
        a.proc.kill()
        a.proc.communicate()


def test_runs_on_defaults_with_state_under_xdg(agent: RunningAgent) -> None:
    token = agent.state / "api-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert (agent.state / "state.db").exists()
    body = httpx.get(f"{agent.url}/metrics").text
    for family in ("swarm_cpu_seconds_total", "swarm_memory_total_bytes",
                   "swarm_network_receive_bytes_total", "swarm_gpu_nvml_available"):
        assert f"# TYPE {family}" in body, family
    # no NVIDIA driver on this machine: reported, not fatal
    assert "swarm_gpu_nvml_available 0.0" in body
    status = httpx.get(f"{agent.url}/api/v1/status").json()
    assert status["gpu"]["state"] == "unavailable"
    assert status["gpu"]["message"]
    assert httpx.post(f"{agent.url}/api/v1/collect").status_code == 401
    r = httpx.post(f"{agent.url}/api/v1/collect",
                   headers={"Authorization": f"Bearer {token.read_text().strip()}"})
    assert r.status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_within_a_second(agent: RunningAgent, sig: signal.Signals) -> None:
    time.sleep(1.5)  # let it collect and write
    t0 = time.monotonic()
    agent.proc.send_signal(sig)
    rc = agent.proc.wait(timeout=5)
    elapsed = time.monotonic() - t0
    _, err = agent.proc.communicate()
    assert rc == 0, err
    assert elapsed < 1.0, f"took {elapsed:.2f}s to stop"
    assert "Traceback" not in err
    # state is consistent: the database opens, passes an integrity check, has history rows
    import sqlite3

    db = sqlite3.connect(agent.state / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM metric_history").fetchone()[0] > 0
    db.close()
    # the port is free again
    port = int(agent.url.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_status_command_uses_the_agent(agent: RunningAgent, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nlisten = "{agent.url.removeprefix("http://")}"\n')
    r = subprocess.run([*CLI, "status", "--json", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, env=agent.env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["source"] == f"agent at {agent.url}"
    assert data["memory"]["total_bytes"] > 0
    r = subprocess.run([*CLI, "status", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60, env={**agent.env, "COLUMNS": "150"})
    assert r.returncode == 0, r.stderr
    assert "collectors" in r.stdout and "memory" in r.stdout


def test_status_without_agent_reads_the_node(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nlisten = "127.0.0.1:{free_port()}"\n')
    r = subprocess.run([*CLI, "status", "--json", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["source"].startswith("read locally")
    assert data["cpu"]["count"] == os.cpu_count()
    assert 0 <= data["cpu"]["utilization"] <= 1  # two readings were taken
    assert data["health"] is None and data["jobs"] == []  # the documented keys, always


def test_something_else_at_the_agent_url_is_not_taken_for_an_agent(tmp_path: Path) -> None:
    """A web server that is not the agent (a page, a list) is read past, not trusted."""
    import sys

    www = tmp_path / "www" / "api" / "v1"
    www.mkdir(parents=True)
    (www / "status").write_text("not json")
    (www / "jobs").write_text("[1, 2]")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path / "www")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
        r = subprocess.run([*CLI, "status", "--json", "--url", url], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["source"] == f"read locally (no swarm-maint agent answered at {url})"
        r = subprocess.run([*CLI, "jobs", "list", "--json", "--url", url],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert {j["name"] for j in json.loads(r.stdout)} >= {"health", "backup:data"}
    finally:
        server.terminate()
        server.wait(10)
    for bad in ("http://[bad", "localhost:9"):
        r = subprocess.run([*CLI, "status", "--url", bad], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "--url" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([*CLI, "agent", "--listen", f"127.0.0.1:{port}",
                            "--state-dir", str(tmp_path / "st")],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"swarm-maint: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_bad_listen_and_bad_config(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "agent", "--listen", "nowhere", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--listen" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[monitoring]\ncollectors = ['cpu', 'warp-drive']\n")
    r = subprocess.run([*CLI, "agent", "--config", str(bad), "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 6
    assert "warp-drive" in r.stderr and "Traceback" not in r.stderr


def test_unwritable_state_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    r = subprocess.run([*CLI, "agent", "--state-dir", str(tmp_path / "f" / "x"),
                        "--listen", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    assert "cannot create state dir" in r.stderr


def test_listener_is_tcp_so_keepalive_responses_are_not_delayed() -> None:
    # asyncio enables TCP_NODELAY on accepted sockets only when the listener's proto is
    # IPPROTO_TCP; with proto 0 every keep-alive scrape stalls ~40 ms on a delayed ACK.
    from swarm_maint.agent import bind_listener

    sock = bind_listener(f"127.0.0.1:{free_port()}")
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname()[:2])
        conn, _ = sock.accept()
        assert conn.proto == socket.IPPROTO_TCP
        conn.close()
        client.close()
    finally:
        sock.close()


def test_health_in_the_agent(tmp_path: Path) -> None:
    klog = tmp_path / "kern.log"
    klog.write_text("")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[health]\nkernel_log = "{klog}"\n')
    a = start_agent(tmp_path, "--config", str(cfg), "--state-dir", str(tmp_path / "st"))
    try:
        deadline = time.monotonic() + 30
        while True:
            body = httpx.get(f"{a.url}/api/v1/health").json()
            names = {c["check"] for c in body["conditions"]}
            if "gpu_xid" in names or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert {"gpu_xid", "disk_space", "memory_available"} <= names
        with klog.open("a") as f:
            f.write("[ 12.5] NVRM: Xid (PCI:0000:17:00): 79, pid='<unknown>', name=<unknown>, "
                    "GPU has fallen off the bus.\n")
        while True:
            cond = next(c for c in httpx.get(f"{a.url}/api/v1/health").json()["conditions"]
                        if c["check"] == "gpu_xid")
            if cond["status"] == "CRITICAL" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert cond["status"] == "CRITICAL"
        assert cond["action"] == "reboot"
        status = httpx.get(f"{a.url}/api/v1/status").json()
        assert status["health"]["status"] == "CRITICAL"
        assert any(p["check"] == "gpu_xid" for p in status["health"]["problems"])
        want = 'swarm_health_status{action="reboot",check="gpu_xid"} 2.0'
        while want not in (metrics := httpx.get(f"{a.url}/metrics").text):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the next collection (every second) exports the condition
        assert want in metrics
        assert 'swarm_gpu_xid_errors_total{code="79",pci_bus_id="00000000:17:00.0"} 1.0' in \
            metrics
    finally:
        a.proc.terminate()
        a.proc.communicate(timeout=10)
    assert a.proc.returncode == 0
