"""The agent evaluates rules as it collects and delivers through the outbox to a webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent_proc import start_agent

pytestmark = pytest.mark.slow


class Hook:
    """A webhook receiver; on a fixed port it can be started late (an outage)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]  # the one picked when given 0
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def events(self, alertname: str) -> list[str]:
        return [a["status"] for body in self.received for a in body["alerts"]
                if a["labels"]["alertname"] == alertname]


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    hook = Hook(0)
    hook.start()
    try:
        yield f"http://127.0.0.1:{hook.port}/hook", hook.received
    finally:
        hook.stop()


def test_rule_fires_and_reaches_the_webhook(tmp_path: Path,
                                            webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: node\n    rules:\n"
        "      - alert: AgentRunning\n"
        "        expr: swarm_agent_info == 1\n"
        "        labels: {severity: info}\n"
        "        annotations: {summary: 'agent {{ $labels.version }} on {{ $labels.node }}'}\n"
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\nnode_name = "gpu-node-17"\n'
        f'[alerts]\nrule_files = ["{rules}"]\n'
        f'[[alerts.receivers]]\nname = "ops"\ntype = "webhook"\nurl = "{url}"\n'
    )
    agent = start_agent(tmp_path, "--config", str(cfg), "--state-dir", str(tmp_path / "st"))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = {a["labels"].get("alertname") for body in received
                     for a in body["alerts"]}
            if {"AgentRunning", "Watchdog"} <= names:
                break
            time.sleep(0.1)
        alerts = {a["labels"]["alertname"]: a for body in received for a in body["alerts"]}
        assert "AgentRunning" in alerts
        assert "Watchdog" in alerts  # the shipped default rules are on
        mine = alerts["AgentRunning"]
        assert mine["status"] == "firing"
        assert mine["labels"]["severity"] == "info"
        assert mine["annotations"]["summary"] == "agent 0.1.0 on gpu-node-17"
        assert received[0]["version"] == "4"
        assert received[0]["receiver"] == "ops"
        # delivered once: later evaluations of a firing alert send nothing new
        time.sleep(2.5)
        count = sum(1 for body in received for a in body["alerts"]
                    if a["labels"]["alertname"] == "AgentRunning")
        assert count == 1
        api = httpx.get(f"{agent.url}/api/v1/alerts").json()
        assert any(a["alertname"] == "AgentRunning" and a["state"] == "firing"
                   for a in api["alerts"])
        assert api["outbox"] == []  # nothing left undelivered
    finally:
        agent.proc.terminate()
        agent.proc.communicate(timeout=10)
    assert agent.proc.returncode == 0


def test_bad_rule_file_stops_the_agent_with_one_line(tmp_path: Path) -> None:
    import subprocess

    from tests.agent_proc import CLI

    rules = tmp_path / "bad.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n"
                     "      - alert: X\n        expr: rate(x[5m:1m])\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[alerts]\nrule_files = ["{rules}"]\n')
    r = subprocess.run([*CLI, "agent", "--config", str(cfg), "--state-dir",
                        str(tmp_path / "st"), "--listen", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"swarm-maint: error: {rules}")
    assert "subqueries are not supported" in r.stderr


def flag_agent_config(tmp_path: Path, url: str) -> Path:
    """An agent whose FlagUp alert fires while tmp_path/flag exists (a custom check)."""
    flag = tmp_path / "flag"
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: t\n    rules:\n      - alert: FlagUp\n"
        "        expr: swarm_health_status{check=\"flag\"} == 2\n"
        "        labels: {severity: critical}\n"
        "        annotations: {summary: flag is up}\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\nnode_name = "n1"\nstate_dir = "{tmp_path / "st"}"\n'
        f'[health]\nchecks.gpu.enabled = false\n'
        f'[[health.custom]]\nname = "flag"\n'
        f'command = ["sh", "-c", "test -e {flag} && exit 2 || exit 0"]\n'
        f'interval = "1s"\ntimeout = "5s"\n'
        f'[alerts]\ndefault_rules = false\nrule_files = ["{rules}"]\n'
        f'[[alerts.receivers]]\nname = "ops"\nurl = "{url}"\n')
    return cfg


def wait_for(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def stop(agent: Any) -> None:
    agent.proc.terminate()
    agent.proc.communicate(timeout=10)
    assert agent.proc.returncode == 0


def test_outage_and_restarts_lose_and_repeat_nothing(tmp_path: Path) -> None:
    from tests.live_server import free_port

    port = free_port()
    hook = Hook(port)
    cfg = flag_agent_config(tmp_path, f"http://127.0.0.1:{port}/hook")
    (tmp_path / "flag").touch()
    agent = start_agent(tmp_path, "--config", str(cfg))
    try:
        # the receiver is down: the firing waits in the outbox, retried
        def retrying() -> bool:
            rows = httpx.get(f"{agent.url}/api/v1/alerts").json()["outbox"]
            return any(r["attempts"] >= 1 for r in rows)
        wait_for(retrying)
    finally:
        stop(agent)
    # the condition ends while the agent is down; the receiver comes back
    (tmp_path / "flag").unlink()
    hook.start()
    try:
        agent = start_agent(tmp_path, "--config", str(cfg))
        try:
            wait_for(lambda: hook.events("FlagUp") == ["firing", "resolved"], 40)
            time.sleep(2)  # nothing more comes: no duplicate firing, no second resolve
            assert hook.events("FlagUp") == ["firing", "resolved"]
            assert httpx.get(f"{agent.url}/api/v1/alerts").json()["outbox"] == []
        finally:
            stop(agent)
        # fires again; the agent restarts while it fires: no second notification
        (tmp_path / "flag").touch()
        agent = start_agent(tmp_path, "--config", str(cfg))
        try:
            wait_for(lambda: hook.events("FlagUp").count("firing") == 2)
        finally:
            stop(agent)
        agent = start_agent(tmp_path, "--config", str(cfg))
        try:
            time.sleep(3)
            assert hook.events("FlagUp") == ["firing", "resolved", "firing"]
        finally:
            stop(agent)
    finally:
        hook.stop()


def test_silence_from_the_cli_mutes_a_running_agent(tmp_path: Path) -> None:
    import subprocess

    from tests.agent_proc import CLI
    from tests.live_server import free_port

    port = free_port()
    hook = Hook(port)
    hook.start()
    cfg = flag_agent_config(tmp_path, f"http://127.0.0.1:{port}/hook")
    agent = start_agent(tmp_path, "--config", str(cfg))
    try:
        r = subprocess.run([*CLI, "alerts", "silence", "add", "-c", str(cfg), "-m",
                            "alertname=FlagUp", "--duration", "1h", "--comment", "test",
                            "--json"], capture_output=True, text=True, timeout=60,
                           env=agent.env)
        assert r.returncode == 0, r.stderr
        silence = json.loads(r.stdout)["id"]
        (tmp_path / "flag").touch()

        def silenced() -> bool:
            alerts = httpx.get(f"{agent.url}/api/v1/alerts").json()["alerts"]
            return any(a["alertname"] == "FlagUp" and a["silenced_by"] == silence
                       and a["state"] == "firing" for a in alerts)
        wait_for(silenced)
        time.sleep(1.5)
        assert hook.events("FlagUp") == []
        r = subprocess.run([*CLI, "alerts", "silence", "expire", "-c", str(cfg), silence],
                           capture_output=True, text=True, timeout=60, env=agent.env)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: hook.events("FlagUp") == ["firing"])  # released
    finally:
        stop(agent)
        hook.stop()


def test_agent_feeds_a_real_alertmanager(tmp_path: Path) -> None:
    """agent -> Alertmanager 0.25 (API v2 push) -> a webhook: firing, then resolved."""
    from tests.alertmanager_proc import run_alertmanager
    from tests.live_server import free_port

    port = free_port()
    hook = Hook(port)
    hook.start()
    try:
        with run_alertmanager(tmp_path, f"http://127.0.0.1:{port}/hook") as am:
            cfg = flag_agent_config(tmp_path, "http://unused.invalid/")
            text = cfg.read_text().replace(
                'name = "ops"\nurl = "http://unused.invalid/"',
                f'name = "site-am"\ntype = "alertmanager"\nurl = "{am}"\n'
                'resend_interval = "2s"')
            cfg.write_text(text)
            (tmp_path / "flag").touch()
            agent = start_agent(tmp_path, "--config", str(cfg))
            try:
                wait_for(lambda: hook.events("FlagUp") == ["firing"], 30)
                [pushed] = [a for a in httpx.get(f"{am}/api/v2/alerts").json()
                            if a["labels"]["alertname"] == "FlagUp"]
                assert pushed["labels"]["node"] == "n1"
                assert pushed["annotations"]["summary"] == "flag is up"
                assert pushed["status"]["state"] == "active"
                (tmp_path / "flag").unlink()
                wait_for(lambda: hook.events("FlagUp") == ["firing", "resolved"], 30)
                rows = httpx.get(f"{agent.url}/api/v1/alerts").json()["outbox"]
                assert rows == []
            finally:
                stop(agent)
    finally:
        hook.stop()
