"""The FastAPI application: thin routes over the library objects the agent built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..alerts.service import AlertService
from ..clock import Clock, SystemClock
from ..durations import parse_duration
from ..errors import NotFoundError, UsageError
from ..health.runner import HealthRunner
from ..monitoring.history import Aggregate
from ..monitoring.hub import MetricsHub
from ..monitoring.summary import node_summary
from ..schedule.scheduler import Scheduler
from ..strict_json import dumps as strict_dumps
from ..updates.watcher import SecurityWatcher
from .alerts_routes import alerts_router
from .auth import token_matches
from .guard import RequestGuard
from .jobs_routes import jobs_router

__all__ = ["METRICS_CONTENT_TYPE", "ApiContext", "create_app", "parse_time"]

# The classic text format every Prometheus understands (our names are all legacy-valid).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ApiContext:
    hub: MetricsHub
    token: str
    clock: Clock
    health: HealthRunner | None = None
    alerts: AlertService | None = None
    updates: SecurityWatcher | None = None
    scheduler: Scheduler | None = None


class _Unauthorized(Exception):
    pass


class StrictJSONResponse(JSONResponse):
    """JSON with NaN and infinities as null (see strict_json), not a 500."""

    def render(self, content: Any) -> bytes:
        return strict_dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def parse_time(value: str | None, now: float, default: float) -> float:
    """A unix timestamp, or a duration meaning that long ago (``15m``, ``-15m``)."""
    if value is None or value == "":
        return default
    try:
        ts = float(value)
    except ValueError:
        try:
            return now - parse_duration(value.removeprefix("-"))
        except ValueError:
            raise UsageError(
                f"invalid time {value!r}: give unix seconds or a duration ago such as '15m'"
            ) from None
    if not math.isfinite(ts):
        raise UsageError(f"invalid time {value!r}")
    return ts


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="swarm-maint agent",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        default_response_class=StrictJSONResponse,
        openapi_url=None,  # not a public schema: its 422 answers are not what we send
        redirect_slashes=False,  # a redirect built from the client's Host header
    )
    app.add_middleware(RequestGuard, token=lambda: ctx.token)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if not token_matches(ctx.token, authorization):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def _unauth(_: Request, __: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": "missing or wrong bearer token (see the api-token file in the state dir)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(UsageError)
    async def _usage(_: Request, exc: UsageError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 400
        return JSONResponse({"error": str(exc)[:500]}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes, wrong methods, unparsable bodies: the documented shape too
        return JSONResponse({"error": str(exc.detail)[:500]}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=400)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(ctx.hub.exposition(), media_type=METRICS_CONTENT_TYPE)

    def health_summary() -> dict[str, Any]:
        if ctx.health is None:
            return {"enabled": False, "status": "OK", "conditions": []}
        conds = sorted(ctx.health.snapshot(), key=lambda c: c.check)
        order = {"OK": 0, "UNKNOWN": 1, "WARNING": 2, "CRITICAL": 3}
        overall = max((c.status for c in conds), key=lambda s: order[s], default="OK")
        return {"enabled": True, "status": overall, "conditions": [c.to_dict() for c in conds]}

    @app.get("/api/v1/status")
    def status() -> dict[str, Any]:
        data = node_summary(ctx.hub)
        h = health_summary()
        data["health"] = {"status": h["status"], "enabled": h["enabled"],
                          "problems": [{k: c[k] for k in ("check", "status", "message",
                                                          "action")}
                                       for c in h["conditions"] if c["status"] != "OK"]}
        data["jobs"] = [] if ctx.scheduler is None else [
            {"name": j["name"], "state": j["state"], "next_run": j["next_run"],
             "last_status": (j["last_run"] or {}).get("status"),
             "last_ended": (j["last_run"] or {}).get("ended"),
             "summary": (j["last_run"] or {}).get("summary", "")}
            for j in ctx.scheduler.statuses()]
        return data

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        return health_summary()

    @app.get("/api/v1/health/history")
    def health_history(
        check: str | None = None,
        since: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        if ctx.health is None:
            return {"transitions": []}
        now = ctx.clock.time()
        return {"transitions": ctx.health.history(check, parse_time(since, now, 0.0), limit)}

    app.include_router(alerts_router(lambda: ctx.alerts, ctx.clock.time, require_token))
    app.include_router(jobs_router(lambda: ctx.scheduler, require_token))

    @app.get("/api/v1/updates")
    def updates(limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
        """Pending updates as of the agent's last check, and the latest update runs."""
        if ctx.updates is None:
            return {"enabled": False, "last_check": None, "pending": [], "runs": []}
        items, checked = ctx.updates.pending()
        return {"enabled": True, "last_check": checked,
                "pending": [i.to_json() for i in items or []],
                "runs": [r.to_json() for r in ctx.updates.history.runs(limit)]}

    @app.get("/api/v1/metrics/names")
    def metric_names() -> dict[str, Any]:
        history = ctx.hub.history
        return {"names": history.names() if history else []}

    @app.get("/api/v1/metrics/history")
    def history(
        name: Annotated[str, Query(min_length=1, max_length=200)],
        match: Annotated[list[str] | None, Query()] = None,
        start: str | None = None,
        end: str | None = None,
        source: Annotated[str, Query(pattern="^(auto|memory|store)$")] = "auto",
        agg: Annotated[str, Query(pattern="^(avg|min|max|last)$")] = "avg",
    ) -> dict[str, Any]:
        hist = ctx.hub.history
        if hist is None:
            raise UsageError("metric history is disabled on this agent")
        matchers: dict[str, str] = {}
        for m in match or []:
            key, sep, val = m.partition("=")
            if not sep or not key:
                raise UsageError(f"invalid match {m!r}: write label=value")
            matchers[key] = val
        now = ctx.clock.time()
        t_end = parse_time(end, now, now)
        t_start = parse_time(start, now, now - 900.0)
        if t_start > t_end:
            raise UsageError("start is after end")
        agg_t: Aggregate = agg  # type: ignore[assignment]  # checked by the pattern above
        used, series = hist.query(
            name, matchers, t_start, t_end, source, agg_t  # type: ignore[arg-type]
        )
        return {
            "name": name,
            "source": used,
            "aggregate": None if used == "memory" else agg,
            "start": t_start,
            "end": t_end,
            "series": [{"labels": s.labels, "points": s.points} for s in series],
        }

    @app.post("/api/v1/collect", dependencies=[Depends(require_token)])
    def collect_now() -> dict[str, Any]:
        """Collect immediately (mutating: it changes rates and history)."""
        frame = ctx.hub.collect_once()
        return {"collected_at": frame.timestamp, "generation": frame.generation}

    return app


def default_context(hub: MetricsHub, token: str) -> ApiContext:
    return ApiContext(hub=hub, token=token, clock=SystemClock())
