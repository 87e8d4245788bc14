"""uvicorn's HTTP protocol with a deadline for the request head.

uvicorn closes a keep-alive connection that stays idle between requests, but not one
that never completes a request: a connection that sends nothing, or a header line now
and then, stays open for ever. Enough of them exhaust the agent's file descriptors,
and then its collectors cannot open /proc either. Here the head of every request
must arrive within ``HEAD_TIMEOUT`` of the connection (or of the request's first byte).
Failed accepts (out of descriptors anyway) are logged once a minute, not thousands of
times a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HEAD_TIMEOUT", "HeadDeadlineProtocol", "quiet_accept_errors"]

HEAD_TIMEOUT = 10.0


class HeadDeadlineProtocol(HttpToolsProtocol):
    _head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class _OncePerMinute(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if "accept" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < 60:
            return False
        self._last = now
        record.exc_info = None  # the traceback says nothing the message does not
        record.msg = f"{record.msg} (further such errors in the next minute are not logged)"
        return True


def quiet_accept_errors() -> None:
    """Install the once-a-minute filter on asyncio's logger (idempotent)."""
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OncePerMinute) for f in log.filters):
        log.addFilter(_OncePerMinute())
