"""Backups (and their verification and retention) run in a child process of the agent.

The agent stays small (the backup engine's buffers and imports live and die with the
child), a backup that hangs (a dead NFS mount) is killed at the job's ``timeout``, and a
stopping agent stops its backup at once. The child dies with the agent's job thread
(``PR_SET_PDEATHSIG``, which follows the thread that started it), so a killed agent
leaves no orphan writing to the repository; the repository is crash-safe, and the next
run reuses what the killed one stored.

Protocol: the parent writes ``{"config": <effective config>, "action": "backup" | "verify" |
"retention" | "config-snapshot", "job": NAME, "parent": pid, "config_file": path}`` to the
child's stdin; the child prints the
outcome as one JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..config import BackupJobConfig, Config, config_from_dict
from ..durations import format_duration
from ..errors import SwarmMaintError
from .job import JobOutcome, JobRun

__all__ = ["backup_in_child", "in_child", "main"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_POLL = 0.5


def _die_with_parent(parent: int) -> None:
    """Be killed when the agent's job thread that started us ends. Set by the child itself
    (a preexec_fn is unsafe in the threaded agent); the agent may have died before, so
    the parent is checked after."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(1)


def backup_in_child(cfg: Config, job: BackupJobConfig, run: JobRun) -> JobOutcome:
    """Run one backup job in a child process; kill it at the timeout or when asked to stop."""
    return in_child(cfg, "backup", run, job=job.name, timeout=job.timeout)


def in_child(cfg: Config, action: str, run: JobRun, *, job: str = "",
             timeout: float = 0.0, config_file: Path | None = None) -> JobOutcome:
    """Run ``action`` (backup, verify, retention, config-snapshot) in a child process."""
    payload = json.dumps({"config": cfg.model_dump(mode="json"), "action": action,
                          "job": job, "parent": os.getpid(),
                          "config_file": str(config_file) if config_file else None})
    proc = subprocess.Popen([sys.executable, "-m", "swarm_maint.schedule.child"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout if timeout > 0 else None
    stdin: str | None = payload
    while True:
        try:
            out, err = proc.communicate(stdin, timeout=_POLL)
            break
        except subprocess.TimeoutExpired:
            stdin = None
        if run.stop.is_set():
            _end(proc)
            return JobOutcome("interrupted", f"the agent stopped during the {action}; it "
                              "runs again at the next start")
        if deadline is not None and time.monotonic() > deadline:
            _end(proc)
            return JobOutcome("failed", f"timed out after {format_duration(timeout)} "
                              "and was killed; the repository stays sound and the next run "
                              "reuses what this one stored")
    try:
        data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return JobOutcome(data["status"], data["summary"], data.get("details", {}))
    except (IndexError, ValueError, KeyError, TypeError):
        last = (err.strip().splitlines() or ["no output"])[-1]
        return JobOutcome("failed", f"the {action} process exited {proc.returncode}: {last}")


def _end(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def main() -> int:
    from .backup_jobs import backup_job, retention, verify_all

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    request = json.loads(sys.stdin.read())
    _die_with_parent(int(request["parent"]))
    cfg = config_from_dict(request["config"], "<agent>")
    action = request["action"]
    run = JobRun(action, "child", 1, threading.Event())
    try:
        if action == "backup":
            from ..backup.memory import limit_heap_growth

            limit_heap_growth()  # this process does nothing else: tune its heap for it
            job = next(j for j in cfg.backup.jobs if j.name == request["job"])
            outcome = backup_job(cfg, job, run)
        elif action == "verify":
            outcome = verify_all(cfg, run)
        elif action == "retention":
            outcome = retention(cfg, run)
        elif action == "config-snapshot":
            from .builtin import config_snapshot

            given = request.get("config_file")
            outcome = config_snapshot(cfg, Path(given) if given else None)
        else:
            raise SystemExit(f"unknown action {action!r}")
    except SwarmMaintError as exc:
        outcome = JobOutcome("failed", str(exc))
    sys.stdout.write(json.dumps({"status": outcome.status, "summary": outcome.summary,
                                 "details": outcome.details}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
