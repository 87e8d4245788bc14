"""Overhead of the swarm-maint agent next to Debian's prometheus-node-exporter.

Both run side by side in one run, on free loopback ports, each in its own temp dir. After a
warm-up (imports, first collections, first renders) both are scraped once per second for
``--seconds`` seconds, one after the other, alternating which goes first. Each target has
one persistent keep-alive HTTP/1.1 connection (``http.client``; reopened only if the
server closes it), and every request is the same: ``GET /metrics`` with
``Accept-Encoding: identity``, so neither side compresses. Latency is the time from sending
the request to having read the full body.

CPU (user + system, children included) is read with psutil at the start and the end of
the measured window; RSS is sampled once per second. Only the standard library and the
project's own dependencies are used, so ``make bench`` needs nothing else.

    .venv/bin/python bench/agent_overhead.py --seconds 60 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

import _report  # bench/_report.py: the script's folder is on sys.path
from _common import free_port, positive_int, swarm_version, version_line

BEGIN = "<!-- BEGIN agent_overhead -->"
END = "<!-- END agent_overhead -->"
COMMAND = ".venv/bin/python bench/agent_overhead.py --seconds 60 --write BENCHMARKS.md"
MIB = 1024.0 * 1024.0

# Targets from the issue.
TARGET_CPU_PCT = 1.0  # agent at or under 1 % of one core
TARGET_RSS_MIB = 80.0  # agent RSS under 80 MiB
TARGET_CPU_RATIO = 1.0  # agent CPU per minute / node_exporter's, at most 1.0
TARGET_P99_MS = 20.0  # agent scrape p99 under 20 ms


# -- helpers --------------------------------------------------------------------------------


def parse_interval(text: str) -> float:
    """``1s``, ``500ms``, ``1.5s``, ``2m`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}; write e.g. 1s or 500ms")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value < 0.1:
        raise argparse.ArgumentTypeError("the agent's interval must be at least 100ms")
    return value






def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def count_samples(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def log(msg: str) -> None:
    sys.stderr.write(f"agent_overhead: {msg}\n")
    sys.stderr.flush()


# -- targets --------------------------------------------------------------------------------


@dataclass
class Target:
    """One process under test and its persistent scrape connection."""

    name: str
    argv: list[str]
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    conn: http.client.HTTPConnection | None = None
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "stderr.log"

    def start(self) -> None:
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # Ctrl-C reaches only us; we stop it cleanly
            )
        self.ps = psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return self.conn

    def scrape(self) -> tuple[float, bytes]:
        """GET /metrics on the persistent connection; (seconds to full body, body)."""
        for attempt in (0, 1):
            conn = self._connection()
            try:
                t0 = time.perf_counter()
                conn.request("GET", "/metrics", headers={"Accept-Encoding": "identity"})
                resp = conn.getresponse()
                body = resp.read()
                elapsed = time.perf_counter() - t0
            except (http.client.HTTPException, OSError):
                conn.close()
                self.conn = None
                if attempt:
                    raise
                self.reconnects += 1  # the server closed the idle connection; retry once
                continue
            if resp.status != 200:
                raise RuntimeError(f"{self.name}: /metrics answered HTTP {resp.status}")
            if resp.will_close:
                conn.close()
                self.conn = None
            return elapsed, body
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode if self.proc else '?'} "
                    f"before answering /metrics:\n{self.log_tail()}"
                )
            try:
                _, body = self.scrape()
                if count_samples(body) > 0:
                    return
                last = "empty body"
            except (OSError, http.client.HTTPException, RuntimeError) as exc:
                last = str(exc)
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /metrics in {timeout:.0f}s ({last})")

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children (live and reaped)."""
        assert self.ps is not None
        with self.ps.oneshot():
            t = self.ps.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            kids = self.ps.children(recursive=True)
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                kt = kid.cpu_times()
                total += kt.user + kt.system
        return total

    def rss_bytes(self) -> int:
        assert self.ps is not None
        total = int(self.ps.memory_info().rss)
        for kid in self.ps.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += int(kid.memory_info().rss)
        return total

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; never raises."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for 5 s; killing it")
                proc.kill()
                proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"cannot stop {self.name} (pid {proc.pid}): {exc}")


# -- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    scrapes: int
    window_s: float
    cpu_s: float
    cpu_s_per_scrape: float
    cpu_s_per_min: float
    cpu_pct_one_core: float
    rss_max_mib: float
    rss_mean_mib: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    series_per_scrape: float
    body_bytes: float
    reconnects: int
    latencies_ms: list[float]
    rss_mib: list[float]


def agent_argv(workdir: Path, port: int, interval: float) -> list[str]:
    config = workdir / "config.toml"
    config.write_text(
        "[agent]\n"
        'log_level = "info"\n'
        "[monitoring]\n"
        f'interval = "{round(interval * 1000)}ms"\n'
        # The updates and schedule collectors run every second like the rest and are
        # measured; the jobs themselves (apt-get update and a plan, backups, snapshots,
        # the full health suite) are not per-second monitoring cost, and must not touch
        # the packages or files of the machine running the benchmark.
        "[updates]\n"
        "apt = false\n"
        "[backup]\n"
        "jobs = []\n"
        + "".join(f'[schedule.jobs.{job}]\nenabled = false\n' for job in (
            "health", "diagnostics", "config-snapshot", "security-updates", "system-updates"))
    )
    script = Path(sys.executable).parent / "swarm-maint"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "swarm_maint.cli.main"]
    return [
        *cmd, "agent",
        "--listen", f"127.0.0.1:{port}",
        "--state-dir", str(workdir / "state"),
        "--config", str(config),
    ]


def exporter_argv(binary: str, port: int) -> list[str]:
    return [binary, f"--web.listen-address=127.0.0.1:{port}"]


def summarize(t: Target, window_s: float, cpu_s: float) -> Result:
    n = len(t.latencies_ms)
    rss_mib = [r / MIB for r in t.rss]
    return Result(
        name=t.name,
        scrapes=n,
        window_s=window_s,
        cpu_s=cpu_s,
        cpu_s_per_scrape=cpu_s / n if n else float("nan"),
        cpu_s_per_min=cpu_s / window_s * 60.0,
        cpu_pct_one_core=cpu_s / window_s * 100.0,
        rss_max_mib=max(rss_mib),
        rss_mean_mib=statistics.fmean(rss_mib),
        p50_ms=percentile(t.latencies_ms, 50),
        p90_ms=percentile(t.latencies_ms, 90),
        p99_ms=percentile(t.latencies_ms, 99),
        max_ms=max(t.latencies_ms),
        series_per_scrape=statistics.fmean(t.samples),
        body_bytes=statistics.fmean(t.sizes),
        reconnects=t.reconnects,
        latencies_ms=[round(x, 3) for x in t.latencies_ms],
        rss_mib=[round(x, 2) for x in rss_mib],
    )


def measure(targets: list[Target], seconds: int, warmup: float) -> list[Result]:
    """Warm up, then scrape every target once per second for ``seconds`` seconds."""

    def tick(i: int, record: bool) -> None:
        order = targets if i % 2 == 0 else targets[::-1]
        for t in order:
            if not t.alive():
                raise RuntimeError(f"{t.name} exited during the run:\n{t.log_tail()}")
            elapsed, body = t.scrape()
            if record:
                t.latencies_ms.append(elapsed * 1000.0)
                t.sizes.append(len(body))
                t.samples.append(count_samples(body))
        if record:
            for t in targets:
                t.rss.append(t.rss_bytes())

    # Warm-up: the same scrape load, discarded.
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < warmup:
        tick(i, record=False)
        i += 1
        time.sleep(max(0.0, start + i - time.monotonic()))

    cpu0 = [t.cpu_seconds() for t in targets]
    t0 = time.monotonic()
    for k in range(seconds):
        time.sleep(max(0.0, t0 + k - time.monotonic()))
        tick(k, record=True)
        if (k + 1) % 10 == 0:
            log(f"{k + 1}/{seconds} s")
    # The window covers exactly `seconds` scrape periods; the last one ends here.
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    cpu1 = [t.cpu_seconds() for t in targets]
    window = time.monotonic() - t0
    return [summarize(t, window, c1 - c0) for t, c0, c1 in zip(targets, cpu0, cpu1, strict=True)]


# -- report ---------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def table(agent: Result, peer: Result) -> list[list[str]]:
    rows: list[list[str]] = [["", "swarm-maint agent", "node_exporter", "agent / node_exporter"]]

    def row(label: str, a: float, b: float, fmt: str, with_ratio: bool = False) -> None:
        rows.append([label, format(a, fmt), format(b, fmt),
                     format(ratio(a, b), ".2f") if with_ratio else ""])

    row("scrapes", agent.scrapes, peer.scrapes, ".0f")
    row("CPU s per scrape", agent.cpu_s_per_scrape, peer.cpu_s_per_scrape, ".4f")
    row("CPU s per minute", agent.cpu_s_per_min, peer.cpu_s_per_min, ".3f", True)
    row("% of one core", agent.cpu_pct_one_core, peer.cpu_pct_one_core, ".2f")
    row("RSS max MiB", agent.rss_max_mib, peer.rss_max_mib, ".1f", True)
    row("RSS mean MiB", agent.rss_mean_mib, peer.rss_mean_mib, ".1f")
    row("scrape p50 ms", agent.p50_ms, peer.p50_ms, ".2f")
    row("scrape p90 ms", agent.p90_ms, peer.p90_ms, ".2f")
    row("scrape p99 ms", agent.p99_ms, peer.p99_ms, ".2f", True)
    row("scrape max ms", agent.max_ms, peer.max_ms, ".2f")
    row("series per scrape", agent.series_per_scrape, peer.series_per_scrape, ".0f")
    row("body KiB per scrape", agent.body_bytes / 1024, peer.body_bytes / 1024, ".1f")
    return rows


def targets_check(agent: Result, peer: Result) -> list[tuple[str, bool, str]]:
    cpu_ratio = ratio(agent.cpu_s_per_min, peer.cpu_s_per_min)
    return [
        ("agent CPU <= 1 % of one core", agent.cpu_pct_one_core <= TARGET_CPU_PCT,
         f"{agent.cpu_pct_one_core:.2f} %"),
        ("agent RSS < 80 MiB", agent.rss_max_mib < TARGET_RSS_MIB,
         f"{agent.rss_max_mib:.1f} MiB max"),
        ("agent CPU per minute / node_exporter's <= 1.0", cpu_ratio <= TARGET_CPU_RATIO,
         f"{cpu_ratio:.2f} ({agent.cpu_s_per_min:.3f} s vs {peer.cpu_s_per_min:.3f} s)"),
        ("agent scrape p99 < 20 ms", agent.p99_ms < TARGET_P99_MS, f"{agent.p99_ms:.2f} ms"),
    ]


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:],
                                                                      strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)






def environment(binary: str) -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": _report.cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "swarm_maint": swarm_version(),
        "node_exporter": version_line([binary, "--version"]),
    }


def section(env: dict[str, str], args: argparse.Namespace, agent: Result, peer: Result) -> str:
    checks = targets_check(agent, peer)
    lines = [
        BEGIN,
        "## Agent overhead vs prometheus-node-exporter",
        "",
        f"- Date: {env['date']}",
        f"- Machine: {env['cores']} cores ({env['cpu']}), kernel {env['kernel']}",
        f"- Versions: swarm-maint {env['swarm_maint']} (Python {env['python']}); "
        f"{env['node_exporter']}, default collectors",
        f"- Load: both scraped once per second for {agent.window_s:.0f} s after a "
        f"{args.warmup:g} s warm-up, one after the other (alternating which goes first), "
        "on one keep-alive connection each, `Accept-Encoding: identity`; "
        f"agent collection interval {args.interval:g} s.",
        "- Agent: embedded defaults with every collector, the health runner, alerts, and the "
        "updates and schedule collectors on; the scheduled jobs themselves and apt are "
        "switched off (they are not per-second cost, and must not touch this machine).",
        "",
        "```",
        args.command,
        "```",
        "",
        "(`make bench` runs exactly this.)" if args.command == COMMAND
        else f"(`make bench` runs `{COMMAND}`.)",
        "",
        markdown_table(table(agent, peer)),
        "",
        "| target | result | figure |",
        "| --- | --- | --- |",
        *(f"| {name} | {'PASS' if ok else 'MISS'} | {fig} |" for name, ok, fig in checks),
        "",
        "How to read it: CPU is user + system time of each process over the measured window, "
        "so the agent's figure includes its own collection every interval while "
        "node_exporter collects during each scrape; both therefore cost what one "
        "Prometheus scraping every second would cost. Latency is client-side time to the "
        "full body over loopback, and RSS is sampled once per second.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    _report.write_section(path, BEGIN, END, text)


# -- main -----------------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=positive_int, default=60,
                        help="length of the measured window in seconds (default 60)")
    parser.add_argument("--interval", type=parse_interval, default=1.0,
                        help="the agent's collection interval, e.g. 1s or 500ms (default 1s)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of scraping discarded before measuring (default 5)")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="replace or insert the agent_overhead section of FILE")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--node-exporter", default="prometheus-node-exporter",
                        help="node_exporter binary (default: prometheus-node-exporter)")
    args = parser.parse_args(argv)
    args.command = " ".join(
        [".venv/bin/python bench/agent_overhead.py",
         *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]
    )

    binary = shutil.which(args.node_exporter) or (
        "/usr/bin/prometheus-node-exporter"
        if Path("/usr/bin/prometheus-node-exporter").exists() else None
    )
    if binary is None:
        log(f"{args.node_exporter} not found; install Debian's prometheus-node-exporter")
        return 2

    signal.signal(signal.SIGTERM, _raise_interrupt)
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="agent-overhead-") as tmp:
        try:
            for name in ("agent", "node_exporter"):
                workdir = Path(tmp) / name
                workdir.mkdir()
                port = free_port()
                argv_ = (agent_argv(workdir, port, args.interval) if name == "agent"
                         else exporter_argv(binary, port))
                t = Target(name, argv_, workdir, port)
                targets.append(t)
                t.start()
            for t in targets:
                t.wait_ready(timeout=30)
            log(f"both answer /metrics; warming up {args.warmup:g} s, "
                f"then measuring {args.seconds} s")
            agent, peer = measure(targets, args.seconds, args.warmup)
        except KeyboardInterrupt:
            log("interrupted; stopping both processes")
            return 130
        except RuntimeError as exc:
            log(str(exc))
            return 1
        finally:
            for t in targets:
                t.stop()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    env = environment(binary)
    if args.json:
        payload: dict[str, Any] = {
            "environment": env,
            "seconds": args.seconds,
            "interval_s": args.interval,
            "warmup_s": args.warmup,
            "results": {r.name: asdict(r) for r in (agent, peer)},
            "targets": [{"target": n, "pass": ok, "figure": f}
                        for n, ok, f in targets_check(agent, peer)],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        print(f"{env['date']}  {env['cores']} cores  {env['cpu']}  {env['kernel']}")
        print(f"swarm-maint {env['swarm_maint']}  vs  {env['node_exporter']}")
        print(f"{args.seconds} s window, 1 scrape/s each, agent interval {args.interval:g} s\n")
        print(plain_table(table(agent, peer)))
        print()
        for name, ok, fig in targets_check(agent, peer):
            print(f"{'PASS' if ok else 'MISS'}  {name}: {fig}")
    if args.write:
        write_section(args.write, section(env, args, agent, peer))
        log(f"wrote the agent_overhead section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
