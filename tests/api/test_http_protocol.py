"""The agent's HTTP protocol closes connections that never complete a request head
(they would otherwise exhaust its file descriptors), and leaves real requests alone."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest
from fastapi import FastAPI

from swarm_maint.api import http_protocol
from swarm_maint.api.http_protocol import HeadDeadlineProtocol, quiet_accept_errors
from tests.live_server import serve


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closed ``sock`` (fails past ``limit``)."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    assert sock.recv(100) == b""
    return time.monotonic() - t0


def test_a_head_that_never_completes_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "HEAD_TIMEOUT", 0.5)
    app = FastAPI()
    app.get("/ok")(lambda: {"ok": True})
    with serve(app, http=HeadDeadlineProtocol) as url:
        host, port = url.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)))
        assert _closed_after(idle, 5.0) < 3.0
        slow = socket.create_connection((host, int(port)))
        slow.sendall(b"GET /ok HTTP/1.1\r\n")
        t0 = time.monotonic()
        cut = False
        for _ in range(50):  # a header line now and then does not keep it open
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            time.sleep(0.1)
        assert cut and time.monotonic() - t0 < 3.0
        with httpx.Client(base_url=url) as c:  # keep-alive: several requests, one socket
            for _ in range(3):
                assert c.get("/ok").json() == {"ok": True}
                time.sleep(0.3)
        idle.close()
        slow.close()


def test_failed_accepts_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    quiet_accept_errors()
    quiet_accept_errors()  # once is enough
    log = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(100):
            log.error("socket.accept() out of system resource", exc_info=OSError(24, "x"))
        log.error("another asyncio error")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("accept" in m for m in msgs) == 1 and "another asyncio error" in msgs
