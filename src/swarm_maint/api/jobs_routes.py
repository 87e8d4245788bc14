"""HTTP routes of the maintenance schedule: the jobs, their history, run-now (token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from ..schedule.errors import ScheduleError
from ..schedule.scheduler import Scheduler

__all__ = ["jobs_router"]


def jobs_router(get: Callable[[], Scheduler | None],
                require_token: Callable[..., None]) -> APIRouter:
    r = APIRouter()

    @r.get("/api/v1/jobs")
    def jobs() -> dict[str, Any]:
        """Every job with its schedule, state, next run and last result; the lease."""
        sched = get()
        if sched is None:
            return {"enabled": False, "jobs": [], "lease": None}
        holder = sched.lease.holder()
        return {"enabled": True, "jobs": sched.statuses(),
                "lease": holder.to_json() if holder is not None else None}

    @r.get("/api/v1/jobs/history")
    def history(job: Annotated[str | None, Query(max_length=200)] = None,
                limit: Annotated[int, Query(ge=1, le=10000)] = 100) -> dict[str, Any]:
        """Past runs, newest first."""
        sched = get()
        if sched is None:
            return {"runs": []}
        return {"runs": [rec.to_json() for rec in sched.history.runs(job, limit)]}

    @r.post("/api/v1/jobs/{name}/run", dependencies=[Depends(require_token)],
            status_code=202, response_model=None)
    def run(name: str) -> dict[str, Any] | JSONResponse:
        """Run a job as soon as the lease allows (windows do not apply)."""
        sched = get()
        if sched is None:
            return JSONResponse({"error": "the schedule is disabled on this agent"},
                                status_code=409)
        if name not in sched.jobs:
            return JSONResponse({"error": f"no job named {name!r}; the jobs are: "
                                 f"{', '.join(sorted(sched.jobs))}"}, status_code=404)
        try:
            sched.request(name, "api")
        except ScheduleError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return {"queued": name}

    return r
