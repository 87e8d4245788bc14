"""Network check: configured TCP endpoints must accept a connection, quickly.

Only the configured hosts are ever contacted. Endpoints are probed in parallel so one
dead endpoint costs its own timeout, not the sum of them all.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ...config import EndpointConfig
from ..check import CheckResult, HealthCheck, HealthContext, Status, worst

__all__ = ["EndpointsCheck", "create", "probe"]


def probe(ep: EndpointConfig) -> dict[str, Any]:
    """Connect once: {"ok": bool, "latency_seconds": float | None, "error": str | None}."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((ep.host, ep.port), timeout=ep.timeout):
            latency = time.perf_counter() - t0
    except TimeoutError:
        return {"ok": False, "latency_seconds": None,
                "error": f"no answer within {ep.timeout:g}s"}
    except socket.gaierror as exc:
        return {"ok": False, "latency_seconds": None,
                "error": f"cannot resolve {ep.host}: {exc.strerror}"}
    except OSError as exc:
        return {"ok": False, "latency_seconds": None,
                "error": exc.strerror or str(exc) or type(exc).__name__}
    return {"ok": True, "latency_seconds": round(latency, 6), "error": None}


class EndpointsCheck:
    name = "endpoints"
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self._endpoints = list(ctx.config.endpoints)
        self.interval = ctx.config.interval
        # the slowest endpoint may take its whole timeout (plus name resolution)
        self.timeout = max(ctx.config.timeout,
                           max((e.timeout for e in self._endpoints), default=0.0) + 2.0)

    def run(self) -> CheckResult:
        results: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()

        def one(ep: EndpointConfig) -> None:
            r = probe(ep)
            with lock:
                results[ep.name] = {"host": ep.host, "port": ep.port, **r}

        threads = [threading.Thread(target=one, args=(ep,), daemon=True,
                                    name=f"swarm-probe-{ep.name}") for ep in self._endpoints]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout - 0.5
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        findings: list[tuple[Status, str, str | None]] = []
        details: dict[str, Any] = {}
        for ep in self._endpoints:
            with lock:
                r = results.get(ep.name)
            if r is None:
                r = {"host": ep.host, "port": ep.port, "ok": False, "latency_seconds": None,
                     "error": "no answer (name resolution hangs?)"}
            details[ep.name] = r
            where = f"{ep.name} ({ep.host}:{ep.port})"
            if not r["ok"]:
                findings.append(("CRITICAL", f"{where} unreachable: {r['error']}",
                                 "investigate"))
            elif r["latency_seconds"] > ep.warn_latency:
                findings.append(("WARNING", f"{where} slow: connected in "
                                 f"{r['latency_seconds'] * 1000:.0f} ms "
                                 f"(> {ep.warn_latency * 1000:.0f} ms)", "investigate"))
        status, msg, action = worst(findings)
        if status == "OK":
            return CheckResult(self.name, "OK",
                               f"{len(self._endpoints)} endpoint(s) answer", None,
                               {"endpoints": details})
        return CheckResult(self.name, status,
                           f"{msg}: check the service, the route and firewalls", action,
                           {"endpoints": details})


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [EndpointsCheck(ctx)] if ctx.config.endpoints else []
