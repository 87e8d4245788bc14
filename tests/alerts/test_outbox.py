"""The alert outbox over a real SQLite file, a real loopback HTTP receiver and a fake clock."""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest

from swarm_maint.alerts.engine import Alert, AlertChange
from swarm_maint.alerts.notifiers import Batch, Notifier, NotifyError
from swarm_maint.alerts.notifiers.webhook import WebhookNotifier
from swarm_maint.alerts.outbox import ZERO_TIME, Outbox, rfc3339
from swarm_maint.store import Store
from tests.fake_clock import FakeClock


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTed JSON bodies."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.status == 200:
                    receiver.bodies.append(json.loads(data))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"oops")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [a for b in self.bodies for a in b["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def change(
    n: int, kind: Literal["firing", "resolved"] = "firing", t: float = 1_800_000_000.0
) -> AlertChange:
    labels = {"alertname": "GpuHot", "gpu": str(n), "severity": "critical"}
    alert = Alert(
        f"fp{n:04d}", "GpuHot", "gpu", labels, {"summary": f"GPU {n} is hot"},
        "firing" if kind == "firing" else "resolved",
        active_since=t - 60, value=91.0, fired_at=t,
        resolved_at=t + 30 if kind == "resolved" else None,
    )
    return AlertChange(kind, alert)


def make(path: Path, clock: FakeClock, **kw: Any) -> Outbox:
    return Outbox(Store(path), clock, rng=random.Random(7), **kw)


def test_enqueue_is_durable_before_any_send(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "state.db"
    ob = make(db, clock)
    row_id = ob.enqueue("hook", change(1))
    assert row_id > 0
    # a fresh process on the same database sees it, nothing having been sent
    again = make(db, clock)
    [p] = again.pending()
    assert (p["id"], p["receiver"], p["kind"], p["attempts"]) == (row_id, "hook", "firing", 0)
    assert p["last_error"] is None
    assert p["payload"]["fingerprint"] == "fp0001"
    assert p["payload"]["startsAt"] == rfc3339(clock.now - 60)
    assert p["payload"]["endsAt"] == ZERO_TIME


def test_receiver_500_backs_off_exponentially_then_delivers_in_order_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock, base_delay=1.0, jitter=0.2)
    hook = WebhookNotifier(receiver.url, name="hook")
    senders = {"hook": hook.send}
    ob.enqueue("hook", change(1))
    ob.enqueue("hook", change(2))
    ob.enqueue("hook", change(1, "resolved"))
    receiver.status = 500
    delays = []
    for attempt in range(1, 6):
        assert ob.deliver_due(senders) == 0
        pend = ob.pending()
        assert len(pend) == 3  # nothing lost
        head = pend[0]
        assert head["attempts"] == attempt
        assert head["last_error"] == f"{receiver.url}: HTTP 500: oops"
        delays.append(head["next_attempt"] - clock.now)
        # not due yet: nothing is attempted
        clock.advance(head["next_attempt"] - clock.now - 0.01)
        assert ob.deliver_due(senders) == 0
        assert ob.pending()[0]["attempts"] == attempt
        clock.advance(0.01)
    for k, d in enumerate(delays):
        assert 0.8 * 2**k <= d <= 1.2 * 2**k
    for a, b in itertools.pairwise(delays):
        assert 2 * 0.8 / 1.2 <= b / a <= 2 * 1.2 / 0.8  # roughly doubles
    receiver.status = 200
    assert ob.deliver_due(senders) == 3
    assert ob.pending() == []
    clock.advance(3600)
    assert ob.deliver_due(senders) == 0
    got = [(a["fingerprint"], a["status"]) for a in receiver.alerts()]
    assert got == [("fp0001", "firing"), ("fp0002", "firing"), ("fp0001", "resolved")]


def test_receiver_not_listening_then_back(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock)
    hook = WebhookNotifier(f"http://127.0.0.1:{port}/hook", timeout=2.0, name="hook")
    for n in range(4):
        ob.enqueue("hook", change(n))
    assert ob.deliver_due({"hook": hook.send}) == 0
    pend = ob.pending()
    assert len(pend) == 4
    assert "ConnectError" in pend[0]["last_error"]
    assert "\n" not in pend[0]["last_error"]
    r = Receiver(port)
    try:
        clock.advance(10)
        assert ob.deliver_due({"hook": hook.send}) == 4
        assert [a["fingerprint"] for a in r.alerts()] == [f"fp{n:04d}" for n in range(4)]
    finally:
        r.close()


def test_restart_midway_delivers_the_rest_without_resending(
    tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock()
    db = tmp_path / "s.db"
    first = make(db, clock, max_per_second=2.0)
    hook = WebhookNotifier(receiver.url, name="hook")
    for n in range(6):
        first.enqueue("hook", change(n))
    assert first.deliver_due({"hook": hook.send}) == 2  # the bucket holds 2 tokens
    first._store.close()  # the agent dies
    second = make(db, clock, max_per_second=2.0)
    total = 0
    for _ in range(5):
        clock.advance(1.0)
        total += second.deliver_due({"hook": hook.send})
    assert total == 4
    assert [a["fingerprint"] for a in receiver.alerts()] == [f"fp{n:04d}" for n in range(6)]


def test_storm_control_after_an_outage(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock, max_per_second=5.0)
    hook = WebhookNotifier(receiver.url, name="hook")
    for n in range(100):
        ob.enqueue("hook", change(n))
    receiver.status = 503
    assert ob.deliver_due({"hook": hook.send}) == 0
    clock.advance(3600)  # the receiver comes back an hour later
    receiver.status = 200
    counts = []
    while ob.pending():
        counts.append(ob.deliver_due({"hook": hook.send}))
        clock.advance(1.0)
        assert len(counts) <= 30
    assert max(counts) <= 5
    assert sum(counts) == 100
    assert all(len(b["alerts"]) <= 5 for b in receiver.bodies)
    assert [a["fingerprint"] for a in receiver.alerts()] == [f"fp{n:04d}" for n in range(100)]


def test_webhook_body_has_alertmanager_shape(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock)
    hook: Notifier = WebhookNotifier(receiver.url, headers={"X-Token": "t"}, name="ops")
    ob.enqueue("ops", change(1))
    ob.enqueue("ops", change(2, "resolved"))
    assert ob.deliver_due({"ops": hook.send}) == 2
    ob.enqueue("ops", change(3, "resolved"))
    assert ob.deliver_due({"ops": hook.send}) == 1
    first, second = receiver.bodies
    assert set(first) == {
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
        "commonLabels", "commonAnnotations", "externalURL", "alerts",
    }
    assert first["version"] == "4"
    assert first["status"] == "firing"
    assert second["status"] == "resolved"
    assert first["receiver"] == "ops"
    assert first["groupLabels"] == {}
    assert first["externalURL"] == ""
    assert first["commonLabels"] == {"alertname": "GpuHot", "severity": "critical"}
    assert first["commonAnnotations"] == {}
    firing, resolved = first["alerts"]
    for a in (firing, resolved):
        assert set(a) == {
            "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
            "fingerprint",
        }
        assert a["generatorURL"] == ""
    assert firing["status"] == "firing"
    assert firing["endsAt"] == ZERO_TIME
    assert firing["labels"] == {"alertname": "GpuHot", "gpu": "1", "severity": "critical"}
    assert firing["annotations"] == {"summary": "GPU 1 is hot"}
    assert resolved["status"] == "resolved"
    assert resolved["endsAt"] == rfc3339(clock.now + 30)
    assert resolved["startsAt"].endswith("Z")
    assert second["commonAnnotations"] == {"summary": "GPU 3 is hot"}


def test_unknown_receiver_keeps_the_row_with_its_error(tmp_path: Path) -> None:
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock)
    sent: list[Batch] = []
    ob.enqueue("nope", change(1))
    ob.enqueue("known", change(2))
    assert ob.deliver_due({"known": sent.append}) == 1
    [p] = ob.pending()
    assert (p["receiver"], p["attempts"], p["last_error"]) == ("nope", 1, "no such receiver")
    assert p["next_attempt"] > clock.now
    assert [x["fingerprint"] for batch in sent for x in batch.alerts] == ["fp0002"]
    # the receiver appears later (config reload): the row is delivered
    clock.advance(60)
    assert ob.deliver_due({"nope": sent.append}) == 1
    assert ob.pending() == []


def test_rows_older_than_max_age_are_given_up(tmp_path: Path) -> None:
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock, max_age=3600)

    def down(_: list[dict[str, Any]]) -> None:
        raise NotifyError("down\nmore detail")

    ob.enqueue("hook", change(1))
    assert ob.deliver_due({"hook": down}) == 0
    assert ob.pending()[0]["last_error"] == "down"
    clock.advance(3601)
    assert ob.deliver_due({"hook": down}) == 0
    assert ob.pending() == []
    [(err, delivered)] = ob._store.query("SELECT last_error, delivered FROM alert_outbox")
    assert (err, delivered) == ("expired", clock.now)


def test_run_loop_delivers_until_stopped(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    ob = make(tmp_path / "s.db", clock)
    hook = WebhookNotifier(receiver.url, name="hook")
    stop = threading.Event()
    t = threading.Thread(target=ob.run, args=(stop, {"hook": hook.send}), daemon=True)
    t.start()
    try:
        ob.enqueue("hook", change(1))
        deadline = time.monotonic() + 5
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        ob.wake()  # without it the idle loop would sleep for an hour
        t.join(5)
    assert not t.is_alive()
    assert [a["fingerprint"] for a in receiver.alerts()] == ["fp0001"]
    assert ob.pending() == []
