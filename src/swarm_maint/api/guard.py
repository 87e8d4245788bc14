"""What the API checks before a request reaches FastAPI.

FastAPI reads and parses a JSON body before it resolves a route's dependencies, the
token check among them: a client without the token could make the agent parse any
amount of JSON (a 90 MB body once took it to 2.4 GB). So every request that may change
something (any method but GET, HEAD and OPTIONS) must carry the token before one byte
of its body is read, and bodies are capped: the largest legitimate one (a silence with
50 matchers) is a few KiB.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .auth import token_matches

__all__ = ["MAX_BODY", "RequestGuard"]

MAX_BODY = 64 * 1024
_READ_ONLY = {"GET", "HEAD", "OPTIONS"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: 401 without the token and 413 above ``MAX_BODY`` for requests
    that may change state, before their body is read."""

    def __init__(self, app: ASGIApp, token: Callable[[], str]) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _READ_ONLY:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not token_matches(self.token(), auth):
            await _answer(send, 401, "missing or wrong bearer token (see the api-token file "
                          "in the state dir)", [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await _answer(send, 413, f"the body is larger than {MAX_BODY} bytes")
            return
        # a body sent without a length (chunked) is counted as it arrives
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await _answer(send, 413, f"the body is larger than {MAX_BODY} bytes")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, error: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": payload})
