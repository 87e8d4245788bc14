"""The node agent: builds every component from the config in one place and runs them.

Threads: the main thread waits for SIGTERM/SIGINT; the hub collects on its own thread;
uvicorn serves the API on a third; the health runner, alert delivery and the maintenance
scheduler (whose jobs run on threads of their own) on the others. Stopping sets one
event, and every component is closed in reverse order of creation, so state is consistent
within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from .alerts.service import AlertService, build_alerts
from .api.app import ApiContext, create_app
from .api.auth import ensure_token
from .api.http_protocol import HeadDeadlineProtocol, quiet_accept_errors
from .clock import Clock, SystemClock
from .config import Config, parse_listen
from .errors import StateError, UsageError
from .health.check import FrameSamples, gpus_idle
from .health.runner import HealthRunner
from .health.service import HealthService, build_health
from .monitoring.build import build_collectors
from .monitoring.collector import CollectorContext
from .monitoring.history import MetricHistory
from .monitoring.hub import MetricsHub
from .schedule.builtin import JobContext
from .schedule.metrics import ScheduleCollector
from .schedule.scheduler import Scheduler
from .schedule.service import build_scheduler, gpu_utilization
from .store import Store
from .updates.watcher import SecurityWatcher

__all__ = ["Agent", "bind_listener"]

log = logging.getLogger(__name__)


def bind_listener(listen: str) -> socket.socket:
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
    # only then, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn wakes its loop ten times a second to poll ``should_exit``; on a node agent
    that idles most of the time, wait on an event instead and wake once a second (to
    refresh the Date header), which saves a measurable share of the agent's CPU."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        counter = 0  # on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter += 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)

    def request_exit(self) -> None:
        """Thread-safe: make the server shut down now."""
        self.should_exit = True
        loop, event = self._loop, self._exit
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(event.set)


class Agent:
    """Everything the node agent runs, built from one Config."""

    def __init__(
        self,
        config: Config,
        *,
        listen: str | None = None,
        state_dir: Path | None = None,
        clock: Clock | None = None,
        config_file: Path | None = None,
    ) -> None:
        if state_dir is not None:  # every component, snapshots and updates too, uses it
            config = config.with_state_dir(state_dir)
        self.config = config
        self.clock = clock or SystemClock()
        self.listen = listen or config.agent.listen
        self.state_dir = state_dir or config.agent.resolved_state_dir()
        self.node_name = config.agent.resolved_node_name()
        self._stop = threading.Event()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"{self.state_dir}: cannot create state dir: {exc.strerror}") from None
        self.token_file = (
            Path(config.agent.token_file).expanduser()
            if config.agent.token_file
            else self.state_dir / "api-token"
        )
        self.token = ensure_token(self.token_file)
        self.store = Store(self.state_dir / "state.db")
        mon = config.monitoring
        self.history = MetricHistory(
            self.store,
            capacity=max(2, math.ceil(mon.history.memory_window / mon.interval)),
            resolution=mon.history.resolution,
            retention=mon.history.retention,
            exclude=mon.history.exclude,
        )
        collectors = build_collectors(CollectorContext(config=mon, clock=self.clock))
        self.hub = MetricsHub(collectors, mon.interval, self.node_name, self.history, self.clock)
        self.health: HealthService | None = None
        if config.health.enabled:
            self.health = build_health(config, lambda: FrameSamples(self.hub.latest()),
                                       self.store, self.clock)
            self.hub.collectors.append(self.health.runner.collector())
            hub = self.hub
            self.health.runner.on_transition.append(lambda _c: hub.request_collection())
            if self.health.xids is not None:
                self.hub.collectors.append(self.health.xids.collector())
        self.alerts: AlertService | None = None
        if config.alerts.enabled:
            self.alerts = build_alerts(config, self.history, self.store, self.clock)
            alerts = self.alerts
            self.hub.on_frame.append(lambda frame: alerts.evaluate(frame.timestamp))
        self.updates: SecurityWatcher | None = None
        if config.updates.enabled:
            self.updates = SecurityWatcher(
                config, self.store, self.clock,
                maintenance=self.alerts.maintenance if self.alerts is not None else None,
                config_file=config_file)
            self.hub.collectors.append(self.updates.collector())
        self.scheduler: Scheduler | None = None
        if config.schedule.enabled:
            self.scheduler = self._build_scheduler(config_file)
            self.hub.collectors.append(ScheduleCollector(self.scheduler))
        self.app = create_app(ApiContext(hub=self.hub, token=self.token, clock=self.clock,
                                         health=self.health.runner if self.health else None,
                                         alerts=self.alerts, updates=self.updates,
                                         scheduler=self.scheduler))

    def _build_scheduler(self, config_file: Path | None) -> Scheduler:
        health = self.health

        @contextlib.contextmanager
        def runner() -> Iterator[HealthRunner]:
            assert health is not None
            yield health.runner

        def frame() -> FrameSamples:
            return FrameSamples(self.hub.latest())

        ctx = JobContext(
            self.config, self.store, self.clock, config_file=config_file,
            health=runner if health is not None else None,
            idle=lambda: gpus_idle(frame()),
            maintenance=self.alerts.maintenance if self.alerts is not None else None,
            security_check=self.updates.check_once if self.updates is not None else None,
            isolate_backups=True)
        return build_scheduler(ctx, utilization=lambda: gpu_utilization(frame()))

    def stop(self) -> None:
        self._stop.set()
        self.hub.request_collection()  # wake the collection thread
        if self.scheduler is not None:
            self.scheduler.wake()

    def run(self) -> None:
        """Serve until stop() or SIGTERM/SIGINT; always closes every component."""
        sock = bind_listener(self.listen)
        quiet_accept_errors()
        server = _Server(
            uvicorn.Config(
                self.app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                http=HeadDeadlineProtocol,
                loop="asyncio",
                timeout_graceful_shutdown=1,
                server_header=False,
            )
        )
        previous: dict[signal.Signals, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        collector_thread = threading.Thread(
            target=self.hub.run, args=(self._stop,), name="collector", daemon=True
        )
        def serve() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            finally:
                self._stop.set()  # a dead HTTP server stops the agent rather than idle on

        server_thread = threading.Thread(target=serve, name="http", daemon=True)
        delivery_thread = (
            threading.Thread(target=self.alerts.run_delivery, args=(self._stop,),
                             name="alert-delivery", daemon=True)
            if self.alerts is not None else None
        )
        scheduler_thread = (
            threading.Thread(target=self.scheduler.run, args=(self._stop,), name="scheduler",
                             daemon=True)
            if self.scheduler is not None else None
        )
        health_thread = (
            threading.Thread(target=self.health.runner.run, args=(self._stop,),
                             name="health", daemon=True)
            if self.health is not None else None
        )
        try:
            self.hub.collect_once()  # /metrics is never empty, even for the first scrape
            # everything built so far (modules, config, collectors) lives as long as the
            # agent: keep it out of the cyclic GC's full passes, which otherwise walk it
            # again and again for the short-lived garbage of each collection and scrape
            gc.freeze()
            collector_thread.start()
            server_thread.start()
            if self.health is not None and health_thread is not None:
                self.health.start_tracking()
                health_thread.start()
            if delivery_thread is not None:
                delivery_thread.start()
            if scheduler_thread is not None:
                scheduler_thread.start()
            log.info(
                "swarm-maint agent on http://%s (node %s, state %s, %d collectors)",
                self.listen, self.node_name, self.state_dir, len(self.hub.collectors),
            )
            for name, st in self.hub.latest().statuses.items():
                if st.state != "ok":
                    log.info("collector %s: %s: %s", name, st.state, st.message)
            self._stop.wait()  # signal handlers still run: the wait is interruptible
            if not server_thread.is_alive():
                log.error("HTTP server stopped unexpectedly; shutting down")
        finally:
            self._stop.set()
            self.hub.request_collection()
            server.request_exit()
            if self.health is not None:
                self.health.close()
            if self.alerts is not None:
                self.alerts.stop()
            server_thread.join(timeout=2.0)
            collector_thread.join(timeout=2.0)
            if health_thread is not None and health_thread.is_alive():
                health_thread.join(timeout=1.0)
            if delivery_thread is not None and delivery_thread.is_alive():
                delivery_thread.join(timeout=1.0)
            if scheduler_thread is not None and self.scheduler is not None:
                # a job still running is recorded as interrupted and runs again at start
                self.scheduler.close()
                scheduler_thread.join(timeout=1.0)
            self.hub.close()
            self.store.close()
            sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            log.info("swarm-maint agent stopped")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop()
