"""What a scheduled job is: its schedule, its rules, and the action it runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .cron import CronSpec

__all__ = ["Job", "JobOutcome", "JobRun", "Outcome"]

# "interrupted": the agent is stopping; the run is repeated at the next start
Outcome = Literal["succeeded", "failed", "skipped", "interrupted"]


@dataclass
class JobOutcome:
    status: Outcome
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRun:
    """Handed to a job's action: what run this is, and a flag that asks it to stop early."""

    job: str
    trigger: str
    attempt: int
    stop: threading.Event


@dataclass
class Job:
    name: str
    kind: str                        # health, backup, config-snapshot, updates …
    description: str
    schedule: CronSpec
    action: Callable[[JobRun], JobOutcome]
    enabled: bool = True
    jitter: float = 0.0              # seconds; each slot is delayed by a stable share of it
    lease: bool = True               # takes the node's maintenance lease
    window: bool = False             # waits for a maintenance window and low GPU usage
    retries: int = 2                 # extra attempts after a failure, same slot
    retry_backoff: float = 60.0      # first retry delay; doubles each time
    catch_up: bool = True            # a slot missed while the agent was down runs once
    labels: dict[str, str] = field(default_factory=dict)  # e.g. {"backup_job": "models"}
    max_age: float | None = None     # how old the last success may get (backup jobs)
    # asked at agent start: True runs the job right after the start delay (an update run
    # cut off by a reboot must be finished at once, not at the next slot)
    urgent_at_start: Callable[[], bool] | None = None
    # when several runs wait for the lease, the lowest number gets it first
    priority: int = 50
