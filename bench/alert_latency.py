"""Alert latency: from a condition turning true (or false) to the webhook's notification.

    .venv/bin/python bench/alert_latency.py --write BENCHMARKS.md

What is measured: the time from the instant the bench makes a condition true to the
instant its own webhook receives the ``firing`` notification of that condition's alert,
and from the instant it makes the condition false again to the instant the ``resolved``
notification arrives. Both instants are read from ``time.monotonic()`` in this process
(the flip just before the file operation that makes it, the receipt in the webhook's
handler once the request body is read), so no clock of the systems under test is used.

Two kinds of condition, both driven by files the bench writes:

* health: a custom health check, ``sh -c '[ -e FLAG ] && exit 2 || exit 0'`` every 1 s;
  the rule is ``swarm_health_status{check="bench-hN"} == 2``. The check's
  ``passes_to_clear`` is set to 1 (the agent's default is 2, a deliberate hysteresis that
  would add one check interval to every resolved figure, in all three setups alike);
* metric: the agent's ``monitoring.proc_root`` points at a snapshot of this machine's
  /proc made of plain files, whose ``diskstats`` carries one fake device per trial; the
  rule is ``swarm_disk_io_now{device="benchmN"} > 50`` and the bench rewrites
  ``diskstats`` (write, then rename) with that device's in-flight count at 0 or 100.

Every trial has its own check or device and its own alert (``BenchHealthN``,
``BenchMetricN``), so a late notification can never be counted for another trial, and
the agent's flap detection (an alert that re-fires more than 4 times in 10 minutes is
held firing) is never triggered by the repetition of the benchmark itself.

Three setups, each with its own agent process (same configuration but for the alerting
section), all running at the same time and posting to their own webhook path:

1. agent: the swarm-maint agent evaluates the rules itself (``alerts.rule_files``, the
   shipped default rules off) and posts to the webhook (``[[alerts.receivers]]``);
2. tuned: Debian's Prometheus scrapes the agent's /metrics with ``scrape_interval`` and
   ``evaluation_interval`` 1 s and evaluates the same rules; Debian's Alertmanager routes
   with ``group_by: [alertname]``, ``group_wait: 0s`` (the smallest it accepts) and
   ``group_interval: 1s`` to a webhook with ``send_resolved: true``;
3. default: the same pair with their built-in defaults (Prometheus: scrape and evaluation
   every 1 m; Alertmanager: ``group_wait`` 30 s, ``group_interval`` 5 m,
   ``repeat_interval`` 4 h), only ``group_by: [alertname]`` set.

Setups 1 and 2 run their trials one after the other per kind of condition (the next
trial starts 0.5-1.5 s after the previous one's resolved notification, and the condition
is cleared 0.5-1.5 s after its firing notification, so the flips fall at random phases of
the 1 s intervals). Setup 3 would take hours that way: its trials all run at once, each
switched on at a random instant within the first minute and cleared 0-60 s after its
firing notification. A trial that gets no notification within the timeout is recorded
as a timeout (counted as a MISS for the agent). Percentiles are nearest-rank: with at
most 100 trials, p99 is the maximum.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

import httpx

import _report  # bench/_report.py: the script's folder is on sys.path
from _common import free_port, positive_int, swarm_version

BEGIN = "<!-- BEGIN alert_latency -->"
END = "<!-- END alert_latency -->"
COMMAND = ".venv/bin/python bench/alert_latency.py --write BENCHMARKS.md"
TARGET_P99_S = 2.0  # agent: p99 under 2 s, firing and resolved

KINDS = ("health", "metric")
KIND_LABEL = {"health": "health check", "metric": "metric threshold"}
EVENTS = ("firing", "resolved")
PROC_FILES = ("stat", "meminfo", "vmstat", "loadavg", "net/dev", "self/mounts",
              "pressure/cpu", "pressure/io", "pressure/memory")
METRIC_ON, METRIC_OFF = 100, 0  # swarm_disk_io_now of a bench device; the rule is > 50


def log(msg: str) -> None:
    sys.stderr.write(f"alert_latency: {msg}\n")
    sys.stderr.flush()






def nearest_rank(values: list[float], q: float) -> float:
    """The nearest-rank percentile: the ceil(q/100 * n)-th smallest value (n >= 1)."""
    xs = sorted(values)
    return xs[max(1, math.ceil(q / 100.0 * len(xs))) - 1]


def tool_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"version (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"




def check_name(i: int) -> str:
    return f"bench-h{i}"


def device_name(i: int) -> str:
    return f"benchm{i}"


def alert_name(kind: str, i: int) -> str:
    return f"Bench{kind.capitalize()}{i}"


# -- the webhook ----------------------------------------------------------------------------


class Webhook:
    """Receives Alertmanager-format webhooks on any path; remembers when each
    (path, alertname, status) arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        self.posts: dict[str, int] = defaultdict(int)
        self.bad: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                hook.record(self.path, body, now)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="webhook")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, path: str, body: bytes, at: float) -> None:
        try:
            alerts = json.loads(body)["alerts"]
            keys = [(path, str(a["labels"]["alertname"]), str(a["status"])) for a in alerts]
        except (ValueError, KeyError, TypeError) as exc:
            with self._lock:
                self.bad.append(f"{path}: {exc!r}: {body[:200]!r}")
            return
        with self._lock:
            self.posts[path] += 1
            for key in keys:
                self._seen[key].append(at)

    def first(self, path: str, alertname: str, status: str, since: float) -> float | None:
        """When the first notification of ``alertname`` in ``status`` arrived on ``path``
        at or after ``since``; None if none has."""
        with self._lock:
            times = self._seen.get((path, alertname, status), ())
            return next((t for t in times if t >= since), None)


# -- a node the bench controls --------------------------------------------------------------


class FakeNode:
    """The files behind one agent's conditions: flag files for the custom checks and a
    /proc snapshot whose diskstats the bench rewrites."""

    def __init__(self, root: Path, trials: int) -> None:
        self.root = root
        self.proc = root / "proc"
        self.flags = root / "flags"
        self.trials = trials
        self._lock = threading.Lock()
        self._busy: set[int] = set()
        self.flags.mkdir(parents=True)
        for rel in PROC_FILES:
            src = Path("/proc") / rel
            try:
                data = src.read_bytes()
            except OSError:
                continue  # e.g. no PSI on this kernel: that collector reports it
            dst = self.proc / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        self._real_diskstats = Path("/proc/diskstats").read_text()
        self._write_diskstats()

    def flag(self, i: int) -> Path:
        return self.flags / f"h{i}"

    def check_command(self, i: int) -> list[str]:
        return ["sh", "-c", f"[ -e {shlex.quote(str(self.flag(i)))} ] && exit 2 || exit 0"]

    def _write_diskstats(self) -> None:
        lines = [self._real_diskstats.rstrip("\n")]
        for i in range(self.trials):
            io_now = METRIC_ON if i in self._busy else METRIC_OFF
            # major minor name, then 17 fields; the 9th (io_now) is the one the rule reads
            fields = [0] * 8 + [io_now] + [0] * 8
            lines.append(f" 240 {i:7d} {device_name(i)} " + " ".join(map(str, fields)))
        tmp = self.proc / "diskstats.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.proc / "diskstats")

    def set(self, kind: str, i: int, on: bool) -> None:
        if kind == "health":
            if on:
                self.flag(i).touch()
            else:
                self.flag(i).unlink(missing_ok=True)
            return
        with self._lock:
            if on:
                self._busy.add(i)
            else:
                self._busy.discard(i)
            self._write_diskstats()


# -- configuration files --------------------------------------------------------------------


def rules_yaml(trials: int) -> str:
    out = ["groups:", "  - name: bench", "    rules:"]
    for i in range(trials):
        for kind, expr in (("health", f'swarm_health_status{{check="{check_name(i)}"}} == 2'),
                           ("metric", f'swarm_disk_io_now{{device="{device_name(i)}"}} > 50')):
            out += [f"      - alert: {alert_name(kind, i)}",
                    f"        expr: '{expr}'",
                    "        labels: {severity: critical}"]
    return "\n".join(out) + "\n"


def toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def agent_toml(node: FakeNode, rules: Path | None, hook_url: str | None) -> str:
    lines = [
        "[agent]",
        'log_level = "info"',
        "[monitoring]",
        f"proc_root = {toml_str(str(node.proc))}",
        "[health]",
    ]
    for i in range(node.trials):
        cmd = ", ".join(toml_str(a) for a in node.check_command(i))
        lines += ["[[health.custom]]", f'name = "{check_name(i)}"', f"command = [{cmd}]",
                  'interval = "1s"', 'timeout = "5s"']
    for i in range(node.trials):
        lines += [f"[health.checks.{check_name(i)}]", "passes_to_clear = 1"]
    lines += ["[updates]", "enabled = false", "[schedule]", "enabled = false", "[alerts]"]
    if rules is None:
        lines.append("enabled = false")
    else:
        lines += ["default_rules = false", f"rule_files = [{toml_str(str(rules))}]"]
        if hook_url:
            lines += ["[[alerts.receivers]]", 'name = "bench"', 'type = "webhook"',
                      f"url = {toml_str(hook_url)}"]
    return "\n".join(lines) + "\n"


def prometheus_yaml(tuned: bool, agent_port: int, am_port: int, rules: Path) -> str:
    head = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s"] if tuned else []
    return "\n".join([
        *head,
        f"rule_files: [{json.dumps(str(rules))}]",
        "alerting:",
        "  alertmanagers:",
        f"    - static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]",
        "scrape_configs:",
        "  - job_name: swarm-maint",
        f"    static_configs: [{{targets: ['127.0.0.1:{agent_port}']}}]",
    ]) + "\n"


def alertmanager_yaml(tuned: bool, hook_url: str) -> str:
    timing = ["  group_wait: 0s", "  group_interval: 1s"] if tuned else []
    return "\n".join([
        "route:",
        "  receiver: bench",
        "  group_by: [alertname]",
        *timing,
        "receivers:",
        "  - name: bench",
        "    webhook_configs:",
        f"      - url: {json.dumps(hook_url)}",
        "        send_resolved: true",
    ]) + "\n"


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """One process under test, in its own session, its output in a log file."""

    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float, ok: Callable[[httpx.Response], bool],
                  what: str = "") -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    code = self.proc.returncode if self.proc else "?"
                    raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
                try:
                    r = client.get(url)
                    if ok(r):
                        return
                    last = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    last = str(exc) or type(exc).__name__
                time.sleep(0.2)
        raise RuntimeError(f"{self.name}: {what or url} not ready in {timeout:.0f} s ({last})"
                           f"\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 5 s; never raises."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for 5 s; killing it")
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"cannot stop {self.name} (pid {p.pid}): {exc}")


def agent_proc(name: str, workdir: Path, config: str, port: int) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "agent.toml"
    cfg.write_text(config)
    env = {**os.environ, "XDG_STATE_HOME": str(workdir / "xdg")}
    env.pop("SWARM_MAINT_CONFIG", None)
    argv = [sys.executable, "-m", "swarm_maint.cli.main", "agent", "--config", str(cfg),
            "--state-dir", str(workdir / "state"), "--listen", f"127.0.0.1:{port}"]
    return Proc(name, argv, workdir, env)


# -- setups and trials ----------------------------------------------------------------------


@dataclass(frozen=True)
class SetupSpec:
    key: str
    label: str
    sequential: bool
    fire_timeout: float
    resolve_timeout: float
    gap: tuple[float, float]  # sequential: pause before a trial; concurrent: start offset
    off_delay: tuple[float, float]  # from the firing notification to clearing


SETUPS = {
    "agent": SetupSpec("agent", "swarm-maint agent", True, 30.0, 30.0, (0.5, 1.5),
                       (0.5, 1.5)),
    "tuned": SetupSpec("tuned", "Prometheus + Alertmanager, 1 s", True, 30.0, 30.0,
                       (0.5, 1.5), (0.5, 1.5)),
    "default": SetupSpec("default", "Prometheus + Alertmanager, defaults", False, 360.0,
                         660.0, (0.0, 60.0), (0.0, 60.0)),
}


@dataclass
class Trial:
    spec: SetupSpec
    kind: str
    index: int
    flip: Callable[[bool], None]
    state: str = "wait_on"  # wait_on -> firing -> wait_off -> resolving -> done
    on_at: float | None = None
    t_on: float = 0.0
    off_at: float = 0.0
    t_off: float = 0.0
    latency: dict[str, float | None] = field(default_factory=dict)  # None: timed out

    @property
    def alertname(self) -> str:
        return alert_name(self.kind, self.index)

    def step(self, hook: Webhook, now: float, rng: random.Random) -> bool:
        """Advance the trial; True when it just finished."""
        spec, path = self.spec, f"/{self.spec.key}"
        if self.state == "wait_on" and self.on_at is not None and now >= self.on_at:
            self.t_on = time.monotonic()
            self.flip(True)
            self.state = "firing"
        elif self.state == "firing":
            got = hook.first(path, self.alertname, "firing", self.t_on)
            if got is not None or now - self.t_on > spec.fire_timeout:
                self.latency["firing"] = None if got is None else got - self.t_on
                self.off_at = now + rng.uniform(*spec.off_delay)
                self.state = "wait_off"
                self._report("firing")
        elif self.state == "wait_off" and now >= self.off_at:
            self.t_off = time.monotonic()
            self.flip(False)
            self.state = "resolving"
        elif self.state == "resolving":
            got = hook.first(path, self.alertname, "resolved", self.t_off)
            if got is not None or now - self.t_off > spec.resolve_timeout:
                self.latency["resolved"] = None if got is None else got - self.t_off
                self.state = "done"
                self._report("resolved")
                return True
        return False

    def _report(self, event: str) -> None:
        v = self.latency[event]
        shown = "TIMEOUT" if v is None else f"{v:.3f} s"
        log(f"{self.spec.key:7} {self.alertname:15} {event:8} {shown}")


def run_trials(chains: list[list[Trial]], hook: Webhook, rng: random.Random) -> float:
    """Drive every chain to the end. A sequential chain starts trial i+1 after trial i;
    a concurrent one has every trial's start set up front. Returns the highest 1-minute
    load average seen (sampled every 5 s), to show whether something else ran."""
    t0 = time.monotonic()
    max_load, next_load = os.getloadavg()[0], t0 + 5.0
    for chain in chains:
        spec = chain[0].spec
        if spec.sequential:
            chain[0].on_at = t0 + rng.uniform(*spec.gap)
        else:
            for tr in chain:
                tr.on_at = t0 + rng.uniform(*spec.gap)
    while any(tr.state != "done" for chain in chains for tr in chain):
        now = time.monotonic()
        for chain in chains:
            for i, tr in enumerate(chain):
                if tr.step(hook, now, rng) and tr.spec.sequential and i + 1 < len(chain):
                    chain[i + 1].on_at = now + rng.uniform(*tr.spec.gap)
        if now >= next_load:
            max_load, next_load = max(max_load, os.getloadavg()[0]), now + 5.0
        time.sleep(0.01)
    return max_load


# -- results --------------------------------------------------------------------------------


@dataclass
class Stat:
    trials: int
    timeouts: int
    p50: float  # inf when the rank falls on a timeout
    p99: float
    max: float


def stat(trials: list[Trial], event: str) -> Stat | None:
    vals = [tr.latency.get(event, None) for tr in trials if tr.state == "done"]
    if not vals:
        return None
    xs = [math.inf if v is None else v for v in vals]
    return Stat(len(xs), sum(1 for v in vals if v is None), nearest_rank(xs, 50),
                nearest_rank(xs, 99), max(xs))


def fmt_s(v: float) -> str:
    return "timeout" if math.isinf(v) else f"{v:.2f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.4f}"


def table_rows(results: dict[tuple[str, str], list[Trial]]) -> list[list[str]]:
    rows = [["condition", "event", "setup", "trials", "timeouts", "p50 s", "p99 s", "max s",
             "agent p99 / this p99", "agent p99 < 2 s"]]
    for kind in KINDS:
        for event in EVENTS:
            ours = stat(results.get(("agent", kind), []), event)
            for key, spec in SETUPS.items():
                s = stat(results.get((key, kind), []), event)
                if s is None:
                    continue
                if key == "agent":
                    ratio, verdict = "", "PASS" if s.p99 < TARGET_P99_S else "MISS"
                else:
                    ratio = ("n/a" if ours is None or math.isinf(ours.p99) or math.isinf(s.p99)
                             else fmt_ratio(ours.p99 / s.p99))
                    verdict = ""
                rows.append([KIND_LABEL[kind], event, spec.label, str(s.trials),
                             str(s.timeouts), fmt_s(s.p50), fmt_s(s.p99), fmt_s(s.max),
                             ratio, verdict])
    return rows


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i < 3 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    align = ["---" if i < 3 else "---:" for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def section(env: dict[str, str], args: argparse.Namespace, rows: list[list[str]],
            runtime_s: float, max_load: float) -> str:
    n_default = "skipped" if args.skip_default else f"{args.default_trials} per condition"
    lines = [
        BEGIN,
        "## Alert latency: condition to webhook, vs Prometheus + Alertmanager",
        "",
        f"- Date: {env['date']}",
        f"- Machine: {env['cores']} cores ({env['cpu']}), kernel {env['kernel']}",
        f"- Versions: swarm-maint {env['swarm_maint']} (Python {env['python']}); "
        f"Prometheus {env['prometheus']} and Alertmanager {env['alertmanager']} (Debian)",
        f"- Trials: {args.trials} per condition for the agent and the 1 s pair, one after "
        f"the other; defaults pair: {n_default}, all at once; the three setups ran at the "
        f"same time, each with its own agent; the run took {runtime_s / 60:.1f} min, with "
        f"a 1-minute load average of at most {max_load:.2f}.",
        "",
        "```",
        args.command,
        "```",
        "",
        "(`make bench` runs exactly this.)" if args.command == COMMAND
        else f"(`make bench` runs `{COMMAND}`.)",
        "",
        markdown_table(rows),
        "",
        "How to read it: latency is from the instant the bench makes the condition true "
        "(firing) or false (resolved) to the instant its webhook receives the notification "
        "of that alert. The health condition is a custom check (`sh -c '[ -e FLAG ] && "
        "exit 2 || exit 0'`, every 1 s, `passes_to_clear = 1`) and the rule "
        "`swarm_health_status{check=...} == 2`; the metric condition is a device's "
        "in-flight I/O count in a /proc/diskstats file the bench rewrites (the agent's "
        "`monitoring.proc_root` points at a /proc snapshot) and the rule "
        "`swarm_disk_io_now{device=...} > 50`. Every trial has its own condition and "
        "alert. The agent evaluates the rules after every collection (1 s, its default) "
        "and posts to the webhook itself; the Prometheus setups scrape an identical agent "
        "(its alerting off) and evaluate the same rules. 1 s pair: `scrape_interval` and "
        "`evaluation_interval` 1 s, Alertmanager `group_wait: 0s` (its minimum) and "
        "`group_interval: 1s`. Defaults pair: nothing set but `group_by: [alertname]`. "
        "Percentiles are nearest-rank, so with at most 100 trials p99 is the maximum; a "
        "timeout counts as infinitely late. Each setup runs one process of each kind, so "
        "the phase between the agent's check schedule and its collection tick, and "
        "between Prometheus's scrapes and its rule evaluations, is fixed within a run: "
        "medians move by up to about a second from one run to the next. "
        "The defaults pair's trials are cleared 0-60 s "
        "after their firing notification, so its resolved figure sits near "
        "`group_interval` (5 m), Alertmanager's next flush of the alert's group.",
        END,
    ]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def find_binary(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)


def http_ok(r: httpx.Response) -> bool:
    return r.status_code == 200


def metrics_ready(trials: int) -> Callable[[httpx.Response], bool]:
    """The agent's /metrics shows every bench check as OK and every bench device idle."""
    want = [f'check="{check_name(i)}"' for i in range(trials)]
    want += [f'device="{device_name(i)}"' for i in range(trials)]

    def ok(r: httpx.Response) -> bool:
        if r.status_code != 200:
            return False
        lines = [ln for ln in r.text.splitlines()
                 if ln.startswith(("swarm_health_status{", "swarm_disk_io_now{"))]
        return all(any(w in ln and ln.split()[-1] in ("0", "0.0") for ln in lines)
                   for w in want)

    return ok


def prometheus_ready(trials: int) -> Callable[[httpx.Response], bool]:
    def ok(r: httpx.Response) -> bool:
        try:
            result = r.json()["data"]["result"]
            return bool(result) and int(float(result[0]["value"][1])) == trials
        except (ValueError, KeyError, IndexError, TypeError):
            return False

    return ok


@dataclass
class Stack:
    """Everything one run starts; stopped in reverse order."""

    procs: list[Proc] = field(default_factory=list)

    def add(self, p: Proc) -> Proc:
        self.procs.append(p)
        p.start()
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def __iter__(self) -> Iterator[Proc]:
        return iter(self.procs)


def start_setups(args: argparse.Namespace, tmp: Path, hook: Webhook, stack: Stack,
                 binaries: dict[str, str]) -> dict[str, FakeNode]:
    """Start every setup's processes and wait until all of them are ready."""
    nodes: dict[str, FakeNode] = {}
    # (process, URL, readiness test, what is awaited)
    waits: list[tuple[Proc, str, Callable[[httpx.Response], bool], str]] = []
    keys = ["agent", "tuned"] + ([] if args.skip_default else ["default"])
    for key in keys:
        n = args.default_trials if key == "default" else args.trials
        work = tmp / key
        node = nodes[key] = FakeNode(work / "node", n)
        rules = work / "rules.yml"
        rules.write_text(rules_yaml(n))
        port = free_port()
        cfg = (agent_toml(node, rules, f"{hook.base_url}/agent") if key == "agent"
               else agent_toml(node, None, None))
        agent = stack.add(agent_proc(f"{key}-agent", work, cfg, port))
        waits.append((agent, f"http://127.0.0.1:{port}/metrics", metrics_ready(n),
                      "the bench series at /metrics"))
        if key == "agent":
            continue
        tuned = key == "tuned"
        am_port, prom_port = free_port(), free_port()
        (work / "am").mkdir()
        (work / "am.yml").write_text(alertmanager_yaml(tuned, f"{hook.base_url}/{key}"))
        am = stack.add(Proc(f"{key}-alertmanager", [
            binaries["alertmanager"], f"--config.file={work / 'am.yml'}",
            f"--storage.path={work / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address="], work))
        (work / "prom").mkdir()
        (work / "prom.yml").write_text(prometheus_yaml(tuned, port, am_port, rules))
        prom = stack.add(Proc(f"{key}-prometheus", [
            binaries["prometheus"], f"--config.file={work / 'prom.yml'}",
            f"--storage.tsdb.path={work / 'prom'}",
            f"--web.listen-address=127.0.0.1:{prom_port}"], work))
        waits.append((am, f"http://127.0.0.1:{am_port}/-/ready", http_ok, ""))
        waits.append((prom, f"http://127.0.0.1:{prom_port}/-/ready", http_ok, ""))
        if tuned:  # the default pair's first scrape may be a minute away; don't wait for it
            q = 'count(swarm_health_status{check=~"bench-h.*"} == 0)'
            query = httpx.URL(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": q})
            waits.append((prom, str(query), prometheus_ready(n),
                          "the bench series in Prometheus"))
    for proc, url, ok, what in waits:
        proc.wait_http(url, 60, ok, what)
    return nodes


def agent_log_problems(stack: Stack) -> list[str]:
    out = []
    for p in stack:
        if not p.name.endswith("-agent"):
            continue
        bad = [ln for ln in p.log_text().splitlines()
               if re.match(r"\S+ \S+ (ERROR|CRITICAL) |Traceback", ln)]
        if bad:
            out.append(f"{p.name}: {len(bad)} error line(s), first: {bad[0][:200]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=positive_int, default=20,
                        help="trials per condition for the agent and the 1 s pair (default 20)")
    parser.add_argument("--default-trials", type=positive_int, default=20,
                        help="trials per condition for the defaults pair, run at once "
                        "(default 20)")
    parser.add_argument("--skip-default", action="store_true",
                        help="leave out the defaults pair (it takes about 8 minutes)")
    parser.add_argument("--seed", type=int, help="seed of the random flip instants")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="replace or insert the alert_latency section of FILE")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs and logs) and say where")
    args = parser.parse_args(argv)
    args.command = " ".join(
        [".venv/bin/python bench/alert_latency.py",
         *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])

    binaries = {"prometheus": find_binary("prometheus"),
                "alertmanager": find_binary("prometheus-alertmanager")}
    missing = [k for k, v in binaries.items() if v is None]
    if missing:
        log(f"not found: {', '.join(missing)}; install Debian's prometheus and "
            "prometheus-alertmanager")
        return 2
    bins = {k: v for k, v in binaries.items() if v is not None}
    rng = random.Random(args.seed)

    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    hook = Webhook()
    stack = Stack()
    tmp = Path(tempfile.mkdtemp(prefix="alert-latency-"))
    results: dict[tuple[str, str], list[Trial]] = {}
    try:
        hook.start()
        nodes = start_setups(args, tmp, hook, stack, bins)
        log(f"all setups ready after {time.monotonic() - started:.1f} s; running trials")
        chains = []
        for key, node in nodes.items():
            for kind in KINDS:
                chain = [Trial(SETUPS[key], kind, i, partial(node.set, kind, i))
                         for i in range(node.trials)]
                results[(key, kind)] = chain
                chains.append(chain)
        max_load = run_trials(chains, hook, rng)
        for p in stack:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited during the run:\n{p.log_tail()}")
        problems = agent_log_problems(stack)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except RuntimeError as exc:
        log(str(exc))
        return 1
    finally:
        stack.stop()
        hook.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    runtime = time.monotonic() - started

    for line in problems + [f"unparsable webhook body: {b}" for b in hook.bad[:5]]:
        log(line)
    env = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": _report.cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "swarm_maint": swarm_version(),
        "prometheus": tool_version(bins["prometheus"]),
        "alertmanager": tool_version(bins["alertmanager"]),
    }
    rows = table_rows(results)
    print(f"{env['date']}  {env['cores']} cores  {env['cpu']}  {env['kernel']}")
    print(f"swarm-maint {env['swarm_maint']}  vs  Prometheus {env['prometheus']} + "
          f"Alertmanager {env['alertmanager']}; run took {runtime / 60:.1f} min\n")
    print(plain_table(rows))
    print("\nnearest-rank percentiles (p99 = max with <= 100 trials); latencies in seconds;"
          f" highest 1-minute load average during the run: {max_load:.2f}")
    if args.write:
        _report.write_section(args.write, BEGIN, END, section(env, args, rows, runtime, max_load))
        log(f"wrote the alert_latency section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
