"""``swarm-maint health run|list|history`` as a real process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.backup.cli_util import cli

pytestmark = pytest.mark.slow


def test_run_list_history(tmp_path: Path) -> None:
    klog = tmp_path / "kern.log"
    klog.write_text("[ 3.2] NVRM: Xid (PCI:0000:3b:00): 48, pid=1234, name=python, "
                    "DBE (double bit error) ECC error\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "st"}"\n'
                   f'[health]\nkernel_log = "{klog}"\n')
    r = cli(tmp_path, "health", "run", "--json", "--config", str(cfg), "--check", "gpu_xid",
            "--check", "disk_space", check=False)
    assert r.returncode == 2, r.stderr  # a CRITICAL
    results = {x["check"]: x for x in json.loads(r.stdout)}
    assert set(results) == {"gpu_xid", "disk_space"}
    assert results["gpu_xid"]["status"] == "CRITICAL"
    assert results["gpu_xid"]["action"] == "reset_gpu"
    assert set(results["disk_space"]) == {"check", "status", "message", "action", "details"}

    listed = json.loads(cli(tmp_path, "health", "list", "--json", "--config",
                            str(cfg)).stdout)
    names = {x["check"] for x in listed}
    assert {"gpu_xid", "gpu_count", "disk_space", "memory_available"} <= names

    hist = json.loads(cli(tmp_path, "health", "history", "--json", "--config",
                          str(cfg)).stdout)
    assert any(h["check"] == "gpu_xid" and h["to"] == "CRITICAL" for h in hist)

    bad = cli(tmp_path, "health", "run", "--check", "warp_core", "--config", str(cfg),
              check=False)
    assert bad.returncode == 2
    assert "no such check: warp_core" in bad.stderr


def test_list_shows_a_custom_check_s_own_timeout_and_run_escapes_its_output(
        tmp_path: Path) -> None:
    script = tmp_path / "noisy.py"
    script.write_text("import sys\nsys.stdout.buffer.write(b'bad\\x00 \\x1b[31mred\\n')\n"
                      "sys.exit(2)\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "st"}"\n[health]\nfamilies = []\n'
                   f'[[health.custom]]\nname = "a"\ncommand = ["true"]\n'
                   f'[[health.custom]]\nname = "noisy"\ncommand = ["python3", "{script}"]\n'
                   f'timeout = "2s"\n')
    listed = {x["check"]: x for x in json.loads(cli(tmp_path, "health", "list", "--json",
                                                    "--config", str(cfg)).stdout)}
    assert listed["a"]["timeout"] == 5.0 and listed["noisy"]["timeout"] == 2.0
    r = cli(tmp_path, "health", "run", "--config", str(cfg), check=False)
    assert r.returncode == 2
    assert "\x1b" not in r.stdout and "\x00" not in r.stdout
    assert "\\x1b[31mred" in r.stdout
