"""Run the real ``swarm-maint`` CLI in a subprocess for backup tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "swarm_maint.cli.main"]


def env_for(tmp_path: Path, password: str = "s3cret pass") -> dict[str, str]:
    env = {**os.environ, "SWARM_MAINT_PASSWORD": password,
           "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("SWARM_MAINT_CONFIG", None)
    return env


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                       env=env or env_for(tmp_path), stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def cli_json(tmp_path: Path, *args: str, **kw: Any) -> Any:
    return json.loads(cli(tmp_path, *args, "--json", **kw).stdout)
