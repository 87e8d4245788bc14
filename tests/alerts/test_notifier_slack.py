"""The Slack notifier against a real loopback HTTP server playing the incoming webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from swarm_maint.alerts.notifiers import Batch, NotifyError, build_notifier
from swarm_maint.alerts.notifiers.slack import MAX_ATTACHMENTS, SlackNotifier
from swarm_maint.alerts.outbox import ZERO_TIME
from swarm_maint.config import ReceiverConfig
from tests.live_server import free_port

TOKEN_PATH = "/services/T000/B000/sEcReTtOkEn"


class SlackHook:
    """Records POSTs; answers ``status`` with ``answer`` (Slack: 200 "ok")."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.status = 200
        self.answer = b"ok"
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, dict(self.headers), json.loads(data)))
                self.send_response(hook.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(hook.answer)))
                self.end_headers()
                self.wfile.write(hook.answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{TOKEN_PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def body(self) -> dict[str, Any]:
        [(_, _, body)] = self.posts
        return body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[SlackHook]:
    h = SlackHook()
    yield h
    h.close()


def alert(status: str, severity: str = "critical", node: str = "gpu-node-17", gpu: int = 0,
          **annotations: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "GpuLost", "node": node, "severity": severity,
                   "gpu": str(gpu)},
        "annotations": annotations or {"summary": f"GPU {gpu} fell off the bus",
                                       "description": "Xid 79 logged"},
        "startsAt": "2027-01-15T08:00:00.000Z",
        "endsAt": "2027-01-15T08:30:00.000Z" if status == "resolved" else ZERO_TIME,
        "fingerprint": f"fp{gpu}",
    }


def batch(*alerts: dict[str, Any]) -> Batch:
    return Batch("chat", list(alerts), {"alertname": "GpuLost"}, '{}:{alertname="GpuLost"}')


def test_build_notifier_loads_the_slack_entry_point() -> None:
    n = build_notifier(ReceiverConfig(name="chat", type="slack",
                                      url="https://hooks.slack.com/services/T/B/x",
                                      channel="#gpu-ops", timeout=2.5))
    assert isinstance(n, SlackNotifier)
    assert (n.name, n.url, n.channel, n.timeout) == (
        "chat", "https://hooks.slack.com/services/T/B/x", "#gpu-ops", 2.5)


def test_one_attachment_per_alert_with_color_title_text_and_fields(hook: SlackHook) -> None:
    n = SlackNotifier(hook.url, channel="#gpu-ops", headers={"X-Trace": "abc"}, name="chat")
    n.send(batch(alert("firing", "critical", gpu=0), alert("firing", "warning", gpu=1),
                 alert("resolved", "critical", gpu=2)))
    [(path, headers, body)] = hook.posts
    assert path == TOKEN_PATH
    assert headers["X-Trace"] == "abc"
    assert headers["Content-Type"] == "application/json"
    assert body["channel"] == "#gpu-ops"
    assert body["text"] == "[FIRING:2] GpuLost (gpu-node-17)"
    crit, warn, resolved = body["attachments"]
    assert [crit["color"], warn["color"], resolved["color"]] == ["danger", "warning", "good"]
    assert crit["title"] == "[FIRING] GpuLost on gpu-node-17"
    assert resolved["title"] == "[RESOLVED] GpuLost on gpu-node-17"
    assert crit["text"] == "GPU 0 fell off the bus\nXid 79 logged"
    assert crit["fields"] == [{"title": "severity", "value": "critical", "short": True},
                              {"title": "gpu", "value": "0", "short": True}]
    assert warn["fields"][0] == {"title": "severity", "value": "warning", "short": True}
    assert crit["footer"] == "started 2027-01-15T08:00:00.000Z"
    assert resolved["footer"] == ("started 2027-01-15T08:00:00.000Z, "
                                  "resolved 2027-01-15T08:30:00.000Z")
    assert all(a["fallback"] == a["title"] for a in body["attachments"])


def test_resolved_batch_without_channel(hook: SlackHook) -> None:
    SlackNotifier(hook.url).send(batch(alert("resolved", node="gpu-node-3")))
    body = hook.body()
    assert "channel" not in body
    assert body["text"] == "[RESOLVED] GpuLost (gpu-node-3)"
    [att] = body["attachments"]
    assert (att["color"], att["title"]) == ("good", "[RESOLVED] GpuLost on gpu-node-3")


def test_alerts_of_several_nodes_name_no_node_in_the_text(hook: SlackHook) -> None:
    SlackNotifier(hook.url).send(batch(alert("firing", node="a"), alert("firing", node="b")))
    body = hook.body()
    assert body["text"] == "[FIRING:2] GpuLost"
    assert [a["title"] for a in body["attachments"]] == ["[FIRING] GpuLost on a",
                                                         "[FIRING] GpuLost on b"]


def test_slack_control_characters_are_escaped(hook: SlackHook) -> None:
    SlackNotifier(hook.url).send(batch(alert("firing", summary="temp > 90 & <!channel>")))
    [att] = hook.body()["attachments"]
    assert att["text"] == "temp &gt; 90 &amp; &lt;!channel&gt;"


def test_a_long_batch_is_truncated_with_and_n_more(hook: SlackHook) -> None:
    alerts = [alert("firing", gpu=i, description="x" * 50_000) for i in range(57)]
    SlackNotifier(hook.url).send(batch(*alerts))
    body = hook.body()
    atts = body["attachments"]
    assert len(atts) == MAX_ATTACHMENTS
    shown = MAX_ATTACHMENTS - 1
    assert [a["fields"][1]["value"] for a in atts[:-1]] == [str(i) for i in range(shown)]
    assert atts[-1]["text"] == f"and {57 - shown} more"
    assert body["text"] == "[FIRING:57] GpuLost (gpu-node-17)"
    # each text is cut, so the message stays far below Slack's 40k-character limit
    assert all(len(a["text"]) <= 1000 for a in atts)
    assert len(json.dumps(body)) < 40_000


def test_exactly_the_maximum_is_not_truncated(hook: SlackHook) -> None:
    SlackNotifier(hook.url).send(batch(*[alert("firing", gpu=i)
                                         for i in range(MAX_ATTACHMENTS)]))
    atts = hook.body()["attachments"]
    assert len(atts) == MAX_ATTACHMENTS
    assert all(a["title"] == "[FIRING] GpuLost on gpu-node-17" for a in atts)


@pytest.mark.parametrize(("status", "answer", "expected"), [
    (400, b"invalid_payload", "HTTP 400: invalid_payload"),
    (404, b"channel_not_found", "HTTP 404: channel_not_found"),
    (500, b"rollup_error", "HTTP 500: rollup_error"),
    (200, b'{"ok": false, "error": "invalid_blocks"}', "HTTP 200: invalid_blocks"),
])
def test_error_answers_raise_notify_error_without_the_token(
    hook: SlackHook, status: int, answer: bytes, expected: str
) -> None:
    hook.status, hook.answer = status, answer
    with pytest.raises(NotifyError) as err:
        SlackNotifier(hook.url).send(batch(alert("firing")))
    port = hook.server.server_address[1]
    assert str(err.value) == f"slack http://127.0.0.1:{port}: {expected}"
    assert len(hook.posts) == 1


@pytest.mark.parametrize("answer", [b"", b"ok", b'{"ok": true}', b'{"success": true}'])
def test_success_answers(hook: SlackHook, answer: bytes) -> None:
    hook.answer = answer
    SlackNotifier(hook.url).send(batch(alert("firing")))
    assert len(hook.posts) == 1


def test_server_down_raises_notify_error() -> None:
    port = free_port()
    n = SlackNotifier(f"http://127.0.0.1:{port}{TOKEN_PATH}", timeout=2.0)
    with pytest.raises(NotifyError) as err:
        n.send(batch(alert("firing")))
    msg = str(err.value)
    assert msg.startswith(f"slack http://127.0.0.1:{port}: ConnectError")
    assert "sEcReT" not in msg and "\n" not in msg
