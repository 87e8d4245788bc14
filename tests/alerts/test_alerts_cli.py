"""``swarm-maint alerts list|test|silence|maintenance`` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from swarm_maint.alerts.engine import Alert, AlertChange
from swarm_maint.alerts.service import AlertService
from swarm_maint.store import Store
from tests.agent_proc import CLI
from tests.alerts.test_outbox import Receiver

pytestmark = pytest.mark.slow


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), "COLUMNS": "250"}
    env.pop("SWARM_MAINT_CONFIG", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=env)


def config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                   'listen = "127.0.0.1:9"\nnode_name = "n7"\n' + extra)
    return cfg


def test_silence_add_list_expire(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    r = cli(tmp_path, "alerts", "silence", "add", "-c", cfg, "--matcher", "alertname=GpuLost",
            "-m", 'gpu=~"0|1"', "--duration", "2h", "--comment", "RMA", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["matchers"] == ['alertname="GpuLost"', 'gpu=~"0|1"']
    assert s["ends"] - s["starts"] == pytest.approx(7200)
    r = cli(tmp_path, "alerts", "silence", "list", "-c", cfg, "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [s["id"]]
    r = cli(tmp_path, "alerts", "silence", "list", "-c", cfg)
    assert s["id"] in r.stdout and "RMA" in r.stdout
    r = cli(tmp_path, "alerts", "silence", "expire", "-c", cfg, s["id"])
    assert r.returncode == 0 and f"silence {s['id']} expired" in r.stdout
    assert json.loads(cli(tmp_path, "alerts", "silence", "list", "-c", cfg, "--json").stdout) == []
    r = cli(tmp_path, "alerts", "silence", "list", "-c", cfg, "--json", "--all")
    assert [x["state"] for x in json.loads(r.stdout)] == ["expired"]
    # bad input: one line, exit 2, nothing stored
    for args, problem in [
        (["--matcher", "alertname~x", "--comment", "c"], "expected =, !=, =~ or !~"),
        (["--matcher", "a=b", "--comment", "c", "--duration", "forever"], "--duration"),
        (["--matcher", "a=b"], "comment"),
        (["--comment", "c"], "at least one matcher"),
    ]:
        r = cli(tmp_path, "alerts", "silence", "add", "-c", cfg, *args)
        assert r.returncode == 2 and problem in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = cli(tmp_path, "alerts", "silence", "expire", "-c", cfg, "nope")
    assert r.returncode == 2 and "no silence with id 'nope'" in r.stderr
    r = cli(tmp_path, "alerts", "silence", "list", "-c", cfg, "--json", "--all")
    assert len(json.loads(r.stdout)) == 1


def test_maintenance_start_list_end(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    r = cli(tmp_path, "alerts", "maintenance", "start", "-c", cfg, "--reason", "driver 550",
            "--max-duration", "45m", "--json")
    assert r.returncode == 0, r.stderr
    w = json.loads(r.stdout)
    assert w["holding"] is True and w["deadline"] - w["started"] == pytest.approx(2700)
    r = cli(tmp_path, "alerts", "maintenance", "list", "-c", cfg)
    assert w["id"] in r.stdout and "(alerts.maintenance_expected)" in r.stdout
    r = cli(tmp_path, "alerts", "maintenance", "end", "-c", cfg, w["id"])
    assert r.returncode == 0 and "2m" in r.stdout
    r = cli(tmp_path, "alerts", "maintenance", "list", "-c", cfg, "--json", "--all")
    [ended] = json.loads(r.stdout)
    assert ended["ended"] is not None
    r = cli(tmp_path, "alerts", "maintenance", "start", "-c", cfg)
    assert r.returncode == 2 and "needs a reason" in r.stderr


def test_list_reads_the_state_database_when_no_agent_answers(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    r = cli(tmp_path, "alerts", "list", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["alerts"] == []
    # what an agent left behind: one firing alert, delivered to one receiver
    store = Store(tmp_path / "state" / "state.db")
    alert = Alert("f" * 16, "GpuLost", "gpu", {"alertname": "GpuLost", "gpu": "3",
                                               "severity": "critical"},
                  {"summary": "lost"}, "firing", active_since=1.8e9, value=1.0,
                  fired_at=1.8e9)
    AlertService._persist(type("S", (), {"store": store})(),  # type: ignore[arg-type]
                          AlertChange("firing", alert))
    with store.transaction() as conn:
        conn.execute("INSERT INTO alert_receiver_state VALUES ('ops', ?, '{}', 'firing', 1.8e9)",
                     (alert.fingerprint,))
    store.close()
    r = cli(tmp_path, "alerts", "list", "-c", str(cfg), "--json")
    data = json.loads(r.stdout)
    assert data["source"].startswith("state database")
    [a] = data["alerts"]
    assert a["alertname"] == "GpuLost" and a["deliveries"][0]["state"] == "delivered"
    r = cli(tmp_path, "alerts", "list", "-c", str(cfg))
    assert "GpuLost" in r.stdout and "ops: delivered" in r.stdout


def test_test_sends_to_the_receiver_or_exits_1(tmp_path: Path) -> None:
    hook = Receiver()
    try:
        cfg = config(tmp_path, f'[[alerts.receivers]]\nname = "ops"\nurl = "{hook.url}"\n'
                     '[[alerts.receivers]]\nname = "down"\nurl = "http://127.0.0.1:9/"\n')
        r = cli(tmp_path, "alerts", "test", "-c", str(cfg), "ops")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "test notification delivered to ops\n"
        [a] = hook.alerts()
        assert a["labels"]["alertname"] == "SwarmMaintTest" and a["labels"]["node"] == "n7"
        r = cli(tmp_path, "alerts", "test", "-c", str(cfg), "down")
        assert r.returncode == 1 and r.stderr.startswith("swarm-maint: error: down: ")
        r = cli(tmp_path, "alerts", "test", "-c", str(cfg), "nope", "--json")
        assert r.returncode == 2 and "no receiver named 'nope'" in r.stderr
    finally:
        hook.close()


def test_bad_input_is_one_line_and_stores_nothing(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    for duration in ("99999999w", "9" * 400 + "w"):
        r = cli(tmp_path, "alerts", "silence", "add", "-c", cfg, "-m", "alertname=GpuLost",
                "--duration", duration, "--comment", "huge")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        r = cli(tmp_path, "alerts", "maintenance", "start", "-c", cfg, "--reason", "r",
                "--max-duration", duration)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    r = cli(tmp_path, "alerts", "silence", "add", "-c", cfg, "-m", 'alertname!=""',
            "--comment", "everything")
    assert r.returncode == 2 and "match every alert" in r.stderr
    listed = cli(tmp_path, "alerts", "silence", "list", "-c", cfg, "--all", "--json")
    assert json.loads(listed.stdout) == []
    assert json.loads(cli(tmp_path, "alerts", "maintenance", "list", "-c", cfg, "--all",
                          "--json").stdout) == []
    deep = tmp_path / "deep.yml"
    deep.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: "
                    + "(" * 5000 + "1" + ")" * 5000 + "\n")
    r = cli(tmp_path, "alerts", "rules", "check", str(deep))
    assert r.returncode == 2 and "nested too deeply" in r.stderr, r.stderr
    r = cli(tmp_path, "health", "history", "-c", cfg, "--limit", "9" * 23)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_maintenance_end_twice_says_it_had_ended(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    r = cli(tmp_path, "alerts", "maintenance", "start", "-c", cfg, "--reason", "r", "--json")
    wid = json.loads(r.stdout)["id"]
    first = cli(tmp_path, "alerts", "maintenance", "end", wid, "-c", cfg)
    again = cli(tmp_path, "alerts", "maintenance", "end", wid, "-c", cfg)
    assert "will be sent" in first.stdout
    assert again.returncode == 0 and "had already ended" in again.stdout


def test_receivers_httpx_or_smtplib_cannot_use_are_config_errors(tmp_path: Path) -> None:
    for receiver in ('name = "h"\nurl = "http://127.0.0.1:1/x"\nheaders = {"X-A" = "tëst"}',
                     'name = "u"\nurl = "http://[::1/hook"',
                     'name = "p"\nurl = "http://127.0.0.1:99999/x"',
                     'name = "m"\ntype = "email"\nsmtp_host = "127.0.0.1"\n'
                     'from_address = "a@b"\nto = ["x@y\\nBcc: evil@z"]'):
        cfg = tmp_path / "r.toml"
        cfg.write_text(f"[[alerts.receivers]]\n{receiver}\n")
        r = cli(tmp_path, "config", "check", str(cfg))
        assert r.returncode == 2 and "alerts.receivers" in r.stderr, (receiver, r.stderr)
