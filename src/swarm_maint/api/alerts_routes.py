"""HTTP routes of alerting: alerts with their delivery state, silences, maintenance windows,
and test notifications. Mutating routes need the bearer token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..alerts.notifiers import NotifyError
from ..alerts.service import AlertService
from ..durations import parse_duration
from ..errors import UsageError

__all__ = ["alerts_router"]


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    matchers: Annotated[list[str], Field(min_length=1, max_length=50)]
    duration: Annotated[str, Field(description="e.g. 2h", max_length=32)]
    comment: Annotated[str, Field(min_length=1, max_length=2000)]
    created_by: Annotated[str, Field(max_length=200)] = "api"


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    reason: Annotated[str, Field(min_length=1, max_length=500)]
    max_duration: Annotated[str, Field(max_length=32)] = "1h"
    matchers: Annotated[list[str], Field(max_length=50)] = []


class TestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    receiver: Annotated[str, Field(min_length=1, max_length=200)]


def _duration(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def alerts_router(get: Callable[[], AlertService | None], now: Callable[[], float],
                  require_token: Callable[..., None]) -> APIRouter:
    router = APIRouter()
    auth = [Depends(require_token)]

    def service() -> AlertService:
        svc = get()
        if svc is None:
            raise UsageError("alerting is disabled on this agent ([alerts] enabled = false)")
        return svc

    @router.get("/api/v1/alerts")
    def alerts() -> dict[str, Any]:
        svc = get()
        if svc is None:
            return {"enabled": False, "alerts": [], "outbox": [], "silences": [],
                    "maintenance": []}
        t = now()
        return {"enabled": True, "alerts": svc.active(), "outbox": svc.outbox.pending(),
                "silences": [s.to_json(t) for s in svc.silences.all()],
                "maintenance": [w.to_json(t, svc.maintenance.grace)
                                for w in svc.maintenance.all()]}

    @router.post("/api/v1/alerts/test", dependencies=auth)
    def send_test(body: TestRequest) -> dict[str, Any]:
        try:
            sent = service().send_test(body.receiver)
        except NotifyError as exc:
            return {"receiver": body.receiver, "delivered": False, "error": str(exc)}
        return {"receiver": body.receiver, "delivered": True, "alert": sent}

    @router.get("/api/v1/silences")
    def silences(all: bool = False) -> dict[str, Any]:
        svc, t = service(), now()
        return {"silences": [s.to_json(t) for s in svc.silences.all(include_expired=all)]}

    @router.post("/api/v1/silences", dependencies=auth, status_code=201)
    def add_silence(body: SilenceIn) -> dict[str, Any]:
        s = service().silences.add(body.matchers, _duration(body.duration, "duration"),
                                   body.comment, body.created_by)
        return s.to_json(now())

    @router.delete("/api/v1/silences/{silence_id}", dependencies=auth)
    def expire_silence(silence_id: str) -> dict[str, Any]:
        return service().silences.expire(silence_id).to_json(now())

    @router.get("/api/v1/maintenance")
    def maintenance(all: bool = False) -> dict[str, Any]:
        svc, t = service(), now()
        return {"windows": [w.to_json(t, svc.maintenance.grace)
                            for w in svc.maintenance.all(include_ended=all)]}

    @router.post("/api/v1/maintenance", dependencies=auth, status_code=201)
    def begin_maintenance(body: MaintenanceIn) -> dict[str, Any]:
        svc = service()
        w = svc.maintenance.begin(body.reason, _duration(body.max_duration, "max_duration"),
                                  body.matchers)
        return w.to_json(now(), svc.maintenance.grace)

    @router.delete("/api/v1/maintenance/{window_id}", dependencies=auth)
    def end_maintenance(window_id: str) -> dict[str, Any]:
        svc = service()
        return svc.maintenance.end(window_id).to_json(now(), svc.maintenance.grace)

    return router
