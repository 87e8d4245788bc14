"""Custom checks: external commands that follow the Nagios / node-problem-detector
convention (exit 0 OK, 1 WARNING, 2 CRITICAL, anything else UNKNOWN; the first line of
output is the message).

The command runs without a shell in its own process group; when it overruns its
timeout the whole group is killed, so children it started do not linger.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from ...config import CustomCheckConfig
from ..check import CheckResult, HealthCheck, HealthContext, Status

__all__ = ["CustomCheck", "create"]

_CODES: dict[int, Status] = {0: "OK", 1: "WARNING", 2: "CRITICAL"}
_MAX_MESSAGE = 500


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= _MAX_MESSAGE else line[:_MAX_MESSAGE - 1] + "…"
    return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


class CustomCheck:
    level = 1

    def __init__(self, entry: CustomCheckConfig) -> None:
        self.name = entry.name
        self.command = list(entry.command)
        self.interval = entry.interval
        self.command_timeout = entry.timeout
        self.action = entry.action
        # leave the runner's own timeout room to kill and reap the group
        self.timeout = entry.timeout + 5.0

    def run(self) -> CheckResult:
        details: dict[str, Any] = {"command": self.command}
        try:
            proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except FileNotFoundError:
            return CheckResult(self.name, "UNKNOWN", f"command not found: {self.command[0]}",
                               None, details)
        except PermissionError:
            return CheckResult(self.name, "UNKNOWN",
                               f"command not executable: {self.command[0]}", None, details)
        except OSError as exc:
            return CheckResult(self.name, "UNKNOWN",
                               f"cannot run {self.command[0]}: {exc.strerror or exc}",
                               None, details)
        try:
            out, err = proc.communicate(timeout=self.command_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                proc.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:  # a child left the group and holds a pipe
                proc.kill()
                proc.wait()
            details["pid"] = proc.pid
            return CheckResult(self.name, "UNKNOWN",
                               f"timed out after {self.command_timeout:g}s (killed)",
                               None, details)
        code = proc.returncode
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        details.update(exit_code=code, stdout=stdout[:4000], stderr=stderr[:4000])
        status: Status = _CODES.get(code, "UNKNOWN")
        message = _first_line(stdout) or _first_line(stderr)
        if code < 0:
            message = f"killed by signal {-code}" + (f": {message}" if message else "")
        elif not message:
            message = f"exit code {code}"
        return CheckResult(self.name, status, message,
                           None if status == "OK" else self.action, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [CustomCheck(entry) for entry in ctx.config.custom]
