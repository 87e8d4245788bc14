"""The agent's maintenance schedule: cron jobs, windows, the lease, job history.

Import the modules themselves (``schedule.lease``, ``schedule.scheduler`` …): this package
imports nothing, so a command that needs only the lease (``backup run``) does not load the
scheduler, croniter and the health checks.
"""
