"""Errors of the scheduler (exit codes 30-39, beside the tree in swarm_maint.errors).

    SwarmMaintError
    └── ScheduleError          exit 30  a job cannot be found, started or recorded
        └── LeaseBusyError     exit 31  another job or command holds the maintenance lease
"""

from __future__ import annotations

from ..errors import SwarmMaintError

__all__ = ["LeaseBusyError", "ScheduleError"]


class ScheduleError(SwarmMaintError):
    exit_code = 30


class LeaseBusyError(ScheduleError):
    exit_code = 31
