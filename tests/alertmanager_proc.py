"""Runs Debian's real Alertmanager (``prometheus-alertmanager``) on loopback for tests.

``run_alertmanager`` starts one that routes every alert to a webhook;
``run_alertmanager_config`` takes a whole YAML configuration. Both yield the base URL
(``http://127.0.0.1:PORT``) once ``/-/ready`` answers and stop the process afterwards.
Clustering is off (``--cluster.listen-address=``) so nothing else is bound and the
instance is ready at once; its log goes to ``alertmanager.log`` in its directory.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.live_server import free_port

__all__ = ["ALERTMANAGER", "alertmanager_config", "run_alertmanager",
           "run_alertmanager_config"]

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def alertmanager_config(
    webhook_url: str,
    *,
    group_wait: str = "0s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
    group_by: tuple[str, ...] = ("alertname",),
) -> str:
    """A configuration sending every alert (and its resolve) to ``webhook_url``."""
    by = ", ".join(f"'{label}'" for label in group_by)
    return (
        "route:\n"
        "  receiver: hook\n"
        f"  group_by: [{by}]\n"
        f"  group_wait: {group_wait}\n"
        f"  group_interval: {group_interval}\n"
        f"  repeat_interval: {repeat_interval}\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: '{webhook_url}'\n"
        "        send_resolved: true\n"
    )


def _log_tail(log: Path, limit: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start(workdir: Path, config: Path, timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    log = workdir / "alertmanager.log"
    for _attempt in range(3):  # free_port() can race with another process taking the port
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [ALERTMANAGER, f"--config.file={config}",
                 f"--storage.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}",
                 "--cluster.listen-address=", "--log.level=debug"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        _stop(proc)
        if "address already in use" not in _log_tail(log):
            break
    raise RuntimeError(f"alertmanager did not become ready (exit {proc.returncode}): "
                       f"{_log_tail(log)}")


@contextmanager
def run_alertmanager_config(tmp_path: Path, config_yaml: str, *,
                            timeout: float = 20.0) -> Iterator[str]:
    """Run Alertmanager with ``config_yaml``; yield its base URL, stop it on exit.

    Its files (config, storage, log) live in a fresh directory under ``tmp_path``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="alertmanager-", dir=tmp_path))
    config = workdir / "alertmanager.yml"
    config.write_text(config_yaml)
    proc, url = _start(workdir, config, timeout)
    try:
        yield url
    finally:
        _stop(proc)


@contextmanager
def run_alertmanager(
    tmp_path: Path,
    webhook_url: str,
    *,
    group_wait: str = "0s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
) -> Iterator[str]:
    """Run Alertmanager routing every alert to ``webhook_url``; yield its base URL."""
    config = alertmanager_config(webhook_url, group_wait=group_wait,
                                 group_interval=group_interval,
                                 repeat_interval=repeat_interval)
    with run_alertmanager_config(tmp_path, config) as url:
        yield url
