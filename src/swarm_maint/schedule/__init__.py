"""The agent's maintenance schedule: cron jobs, windows, the lease, job history."""

from .builtin import JobContext, build_jobs
from .job import Job, JobOutcome, JobRun
from .lease import Lease
from .scheduler import Scheduler
from .service import build_scheduler

__all__ = ["Job", "JobContext", "JobOutcome", "JobRun", "Lease", "Scheduler", "build_jobs",
           "build_scheduler"]
