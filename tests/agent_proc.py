"""Start the agent as a real process for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.live_server import free_port

CLI = [sys.executable, "-m", "swarm_maint.cli.main"]


@dataclass
class RunningAgent:
    proc: subprocess.Popen[str]
    url: str
    state: Path
    env: dict[str, str]


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"agent exited {proc.returncode}: {err}")
        try:
            if httpx.get(f"{url}/api/v1/status", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("agent did not become ready")


def start_agent(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None,
                listen: bool = True) -> RunningAgent:
    port = free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), **(env_extra or {})}
    env.pop("SWARM_MAINT_CONFIG", None)
    argv = [*CLI, "agent", *args]
    if listen:
        argv += ["--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return RunningAgent(proc, url, tmp_path / "xdg" / "swarm-maint", env)


