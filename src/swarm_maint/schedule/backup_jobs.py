"""The scheduled backup work: each ``[[backup.jobs]]`` entry, verification, retention.

A job's repository defaults to ``<state_dir>/backups/<name>`` with a generated password
file beside it; that default repository is created on first use. A repository given
in the config must exist (``swarm-maint backup init``), so a typo never starts a new,
empty repository somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backup.errors import RepositoryNotFoundError
from ..config import BackupJobConfig, Config
from ..errors import ConfigError
from .job import JobOutcome, JobRun

if TYPE_CHECKING:  # the backup engine (crypto, compression) loads when a job first runs
    from ..backup.repository import Repository
    from ..backup.storage import Storage
    from ..backup.verify import VerifyReport

__all__ = ["backup_job", "job_tag", "open_job_repo", "repositories", "retention", "verify_all"]


def job_tag(job: BackupJobConfig) -> str:
    return f"job:{job.name}"


def _default_location(cfg: Config, job: BackupJobConfig) -> Path:
    return cfg.agent.resolved_state_dir() / "backups" / job.name


def _password(cfg: Config, job: BackupJobConfig, storage: Storage) -> str:
    from ..backup.passwords import generated_password, read_password_file

    if job.password_file:
        return read_password_file(Path(job.password_file).expanduser(),
                                  f"backup.jobs {job.name}: password_file", ConfigError)
    return generated_password(_default_location(cfg, job).with_suffix(".pass"),
                              repository_exists=storage.exists("config"))


def open_job_repo(cfg: Config, job: BackupJobConfig) -> Repository:
    from ..backup.repository import Repository
    from ..backup.storage import open_storage

    url = job.repo or str(_default_location(cfg, job))
    storage = open_storage(url)
    password = _password(cfg, job, storage)
    try:
        return Repository.open(storage, password)
    except RepositoryNotFoundError:
        if job.repo:
            raise RepositoryNotFoundError(
                f"backup job {job.name}: no repository at {url}; create it with "
                f"`swarm-maint backup init --repo {url} --password-file "
                f"{job.password_file or 'FILE'}`") from None
        return Repository.init(storage, password)


def backup_job(cfg: Config, job: BackupJobConfig, run: JobRun) -> JobOutcome:
    """One snapshot of the job's paths, incremental through the files cache."""
    from ..backup.backup import run_backup
    from ..backup.files_cache import FilesCache, cache_folder
    from ..backup.locks import lock_repository
    from ..backup.orphan_check import backup_starts

    paths = [str(Path(p).expanduser()) for p in job.paths]
    present = [p for p in paths if os.path.lexists(p)]
    missing = [p for p in paths if p not in present]
    if not present:
        return JobOutcome("failed", f"nothing to back up: {', '.join(missing)} "
                          "do(es) not exist; create it or set [[backup.jobs]] paths")
    repo = open_job_repo(cfg, job)
    cache_dir = cache_folder(cfg.agent.resolved_state_dir(), repo.id)
    cache = FilesCache(cache_dir / "files.db")
    lock = lock_repository(repo.storage, False)
    try:
        check = backup_starts(repo, lock.stale_removed, cache_dir)
        res = run_backup(repo, present, tags=[job_tag(job), "scheduled", *job.tags],
                         excludes=job.exclude, one_file_system=job.one_file_system,
                         files_cache=cache)
        check.end()
    finally:
        cache.close()
        lock.release()
    details: dict[str, Any] = {
        "snapshot": res.snapshot_id, "files": res.files, "bytes": res.bytes,
        "added_bytes": res.added_bytes, "seconds": round(res.seconds, 3),
        "repository": repo.storage.location(), "missing": missing,
        "unreadable": [e["path"] for e in res.errors][:20],
    }
    summary = (f"snapshot {res.snapshot_id[:12]}: {res.files} files, "
               f"{res.bytes / 2**20:.1f} MiB, {res.added_bytes / 2**20:.1f} MiB added")
    if res.partial:
        summary += f"; {len(res.errors)} file(s) could not be read"
    if missing:
        return JobOutcome("failed", f"{summary}; missing: {', '.join(missing)}", details)
    return JobOutcome("succeeded", summary, details)


def repositories(cfg: Config) -> list[tuple[str, Any]]:
    """(label, opener) of every repository the schedule writes: backup jobs and the
    configuration snapshots."""
    from ..backup.config_snapshots import open_config_repo

    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for job in cfg.backup.jobs:
        url = job.repo or str(_default_location(cfg, job))
        if url not in seen:
            seen.add(url)
            out.append((f"backup:{job.name}", lambda j=job: open_job_repo(cfg, j)))
    out.append(("config-snapshots", lambda: open_config_repo(cfg)))
    return out


def verify_all(cfg: Config, run: JobRun) -> JobOutcome:
    """Verify every repository, reading a share of its data."""
    from ..backup.locks import lock_repository
    from ..backup.verify import verify

    subset = cfg.backup.verify_read_data_subset
    lines, bad, details = [], [], {}
    for label, opener in repositories(cfg):
        if run.stop.is_set():
            return JobOutcome("failed", "stopped before every repository was verified")
        try:
            repo = opener()
        except RepositoryNotFoundError as exc:
            bad.append(label)
            lines.append(f"{label}: {exc}")
            continue
        lock = lock_repository(repo.storage, False)
        try:
            report = verify(repo, read_data_subset=subset if subset > 0 else None)
        finally:
            lock.release()
        details[label] = {"ok": report.ok, "errors": len(report.errors)}
        if not report.ok:
            bad.append(label)
            line = (f"{label}: {len(report.errors)} problem(s), first: "
                    f"{report.lines()[0] if report.lines() else '?'}")
            if cfg.backup.verify_repair and report.repairable:
                line += "; " + _auto_repair(repo, report, details[label])
            else:
                line += f"; {report.next_step}"
            lines.append(line)
    if bad:
        return JobOutcome("failed", "damaged: " + "; ".join(lines), details)
    read = f", {subset:g}% of the data read" if subset > 0 else ""
    return JobOutcome("succeeded", f"{len(details)} repositories sound{read}", details)


def _auto_repair(repo: Repository, report: VerifyReport, details: dict[str, Any]) -> str:
    """``backup repair`` for the damage verify found, reading the damaged packs whole;
    what it did, for the job's summary."""
    from ..backup.locks import lock_repository
    from ..backup.repair import repair
    from ..errors import SwarmMaintError

    suspects = frozenset(p.pack for p in report.damaged_packs + report.damaged_blobs
                         if p.pack)
    try:
        lock = lock_repository(repo.storage, True)
        try:
            res = repair(repo, suspects=suspects)
        finally:
            lock.release()
    except (SwarmMaintError, OSError) as exc:  # locked by another node, a failing disk…
        return f"not repaired ({exc}); {report.next_step}"
    details["repair"] = res.to_dict()
    if not res.changed:
        return f"repair changed nothing; {report.next_step}"
    return (f"repaired: the index now lists what the packs hold ({res.blobs_lost} lost "
            f"blob(s), {res.blobs_salvaged} salvaged); the next backup stores what still "
            "exists again")


def retention(cfg: Config, run: JobRun) -> JobOutcome:
    """Forget each job's snapshots outside its keep policy, then prune its repository."""
    from ..backup.locks import lock_repository
    from ..backup.prune import prune
    from ..backup.retention import forget

    parts, details = [], {}
    for job in cfg.backup.jobs:
        if not job.enabled or run.stop.is_set():
            continue
        repo = open_job_repo(cfg, job)
        lock = lock_repository(repo.storage, True)
        try:
            res = forget(repo, keep_last=job.keep_last, keep_daily=job.keep_daily,
                         keep_weekly=job.keep_weekly, keep_monthly=job.keep_monthly,
                         only_tags=[job_tag(job)])
            pr = prune(repo) if job.prune and res.removed else None
        finally:
            lock.release()
        details[job.name] = {"removed": len(res.removed), "kept": len(res.kept),
                             **({"prune": pr.to_dict()} if pr is not None else {})}
        parts.append(f"{job.name}: {len(res.removed)} forgotten, {len(res.kept)} kept"
                     + (f" ({pr.summary()})" if pr is not None else ""))
    return JobOutcome("succeeded", "; ".join(parts) or "no backup jobs", details)
