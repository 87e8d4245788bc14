"""The Alertmanager notifier against a real Alertmanager 0.25 (Debian's binary).

Alertmanager routes everything to a webhook served by the test, so what it makes of the
pushed alerts is observed end to end: firing, resolved by us, resolved by itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarm_maint.alerts.notifiers import Batch, NotifyError, build_notifier
from swarm_maint.alerts.notifiers.alertmanager import AlertmanagerNotifier
from swarm_maint.alerts.outbox import ZERO_TIME, rfc3339
from swarm_maint.config import ReceiverConfig
from tests.alertmanager_proc import run_alertmanager
from tests.live_server import free_port

LABELS = {"alertname": "GpuLost", "node": "gpu-node-17", "gpu": "3", "severity": "critical"}
ANNOTATIONS = {"summary": "GPU 3 fell off the bus"}


class Recorder:
    """An HTTP server on 127.0.0.1 recording POSTs (path, headers, JSON body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self._lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                with rec._lock:
                    rec.posts.append((self.path, dict(self.headers), json.loads(data)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def bodies(self) -> list[Any]:
        with self._lock:
            return [body for _, _, body in self.posts]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0
                 ) -> dict[str, Any]:
        """The first webhook notification satisfying ``pred``, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.bodies():
                if pred(body):
                    return dict(body)
            time.sleep(0.05)
        raise AssertionError(f"no matching notification in {timeout}s: {self.bodies()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def entry(status: str, starts: float, ends: float | None = None,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    """One ``Batch.alerts`` entry, as the outbox builds it."""
    return {
        "status": status,
        "labels": dict(labels or LABELS),
        "annotations": dict(ANNOTATIONS),
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends) if ends is not None else ZERO_TIME,
        "fingerprint": "fp0001",
    }


def batch(*alerts: dict[str, Any]) -> Batch:
    return Batch("am", list(alerts), {"alertname": "GpuLost"}, '{}:{alertname="GpuLost"}')


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def with_status(status: str) -> Callable[[dict[str, Any]], bool]:
    def pred(body: dict[str, Any]) -> bool:
        return body["status"] == status and any(
            a["status"] == status and a["labels"] == LABELS for a in body["alerts"])
    return pred


def test_build_notifier_loads_the_alertmanager_entry_point() -> None:
    n = build_notifier(ReceiverConfig(name="am", type="alertmanager",
                                      url="http://127.0.0.1:9093/", resend_interval=30,
                                      timeout=2.0, headers={"Authorization": "Bearer t"}))
    assert isinstance(n, AlertmanagerNotifier)
    assert (n.name, n.url, n.resend_interval, n.timeout) == (
        "am", "http://127.0.0.1:9093", 30.0, 2.0)
    assert n.endpoint == "http://127.0.0.1:9093/api/v2/alerts"
    assert n.headers == {"Authorization": "Bearer t"}


def test_wire_format_end_times_and_headers(recorder: Recorder) -> None:
    sent_at = 1_800_000_000.0
    n = AlertmanagerNotifier(recorder.base + "/", resend_interval=45.0,
                             headers={"Authorization": "Bearer t"}, now=lambda: sent_at)
    firing = entry("firing", sent_at - 120)
    resolved = entry("resolved", sent_at - 600, sent_at - 5,
                     labels={**LABELS, "gpu": "4"})
    n.send(batch(firing, resolved))
    [(path, headers, body)] = recorder.posts
    assert path == "/api/v2/alerts"
    assert headers["Authorization"] == "Bearer t"
    assert body == [
        {"labels": LABELS, "annotations": ANNOTATIONS, "startsAt": firing["startsAt"],
         "endsAt": rfc3339(sent_at + 4 * 45.0), "generatorURL": ""},
        {"labels": {**LABELS, "gpu": "4"}, "annotations": ANNOTATIONS,
         "startsAt": resolved["startsAt"], "endsAt": rfc3339(sent_at - 5),
         "generatorURL": ""},
    ]


def test_resolved_entry_without_end_time_ends_now(recorder: Recorder) -> None:
    n = AlertmanagerNotifier(recorder.base, now=lambda: 1_800_000_000.0)
    n.send(batch({**entry("resolved", 1_799_999_000.0), "endsAt": ZERO_TIME}))
    [(_, _, [pushed])] = recorder.posts
    assert pushed["endsAt"] == rfc3339(1_800_000_000.0)


@pytest.mark.slow
def test_firing_then_resolved_through_alertmanager(tmp_path: Path, recorder: Recorder) -> None:
    with run_alertmanager(tmp_path, recorder.base + "/hook") as am:
        resend = 30.0
        n = AlertmanagerNotifier(am, resend_interval=resend, name="am")
        started = time.time() - 60
        before = time.time()
        n.send(batch(entry("firing", started)))
        after = time.time()

        note = recorder.wait_for(with_status("firing"))
        [fired] = note["alerts"]
        assert fired["annotations"] == ANNOTATIONS
        assert abs(parse(fired["startsAt"]) - started) < 0.01

        [stored] = httpx.get(f"{am}/api/v2/alerts", timeout=5).json()
        assert stored["labels"] == LABELS
        assert stored["status"]["state"] == "active"
        ends = parse(stored["endsAt"])
        assert before + 4 * resend - 0.01 <= ends <= after + 4 * resend + 0.01

        resolved_at = time.time()
        n.send(batch(entry("resolved", started, resolved_at)))
        note = recorder.wait_for(with_status("resolved"))
        [gone] = note["alerts"]
        assert abs(parse(gone["endsAt"]) - resolved_at) < 0.01
        # the API lists only unresolved alerts by default
        assert httpx.get(f"{am}/api/v2/alerts", timeout=5).json() == []


@pytest.mark.slow
def test_alertmanager_resolves_alerts_of_a_silent_node(tmp_path: Path,
                                                       recorder: Recorder) -> None:
    with run_alertmanager(tmp_path, recorder.base + "/hook") as am:
        # valid for 4 x 0.25 s: no re-send follows, as if the node had gone away
        n = AlertmanagerNotifier(am, resend_interval=0.25)
        pushed = time.time()
        n.send(batch(entry("firing", pushed - 10)))
        recorder.wait_for(with_status("firing"))
        note = recorder.wait_for(with_status("resolved"))
        assert time.time() - pushed >= 0.99  # endsAt is cut to milliseconds
        [gone] = note["alerts"]
        assert abs(parse(gone["endsAt"]) - (pushed + 1.0)) < 0.5


@pytest.mark.slow
def test_alertmanager_rejecting_an_alert_is_a_notify_error(tmp_path: Path,
                                                           recorder: Recorder) -> None:
    with run_alertmanager(tmp_path, recorder.base + "/hook") as am:
        n = AlertmanagerNotifier(am)
        with pytest.raises(NotifyError) as err:
            n.send(batch(entry("firing", time.time(), labels={"bad-name": "x"})))
        msg = str(err.value)
        assert msg.startswith(f"{am}/api/v2/alerts: HTTP 400: ")
        assert "invalid label set" in msg and "\n" not in msg


def test_alertmanager_down_is_a_notify_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    n = AlertmanagerNotifier(url, timeout=2.0)
    with pytest.raises(NotifyError) as err:
        n.send(batch(entry("firing", time.time())))
    assert str(err.value).startswith(f"{url}/api/v2/alerts: ConnectError")
