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


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


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
