"""``[backup]``: backups and the snapshots of system and workload configuration."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .base import Duration, _Section
from .schedule import check_cron_field

__all__ = ["BackupConfig", "BackupJobConfig", "ConfigSnapshotsConfig"]


def _absolute_paths(v: list[str]) -> list[str]:
    """Each path absolute or under ``~``: an empty or relative one would be read from
    the agent's working directory (``/`` under systemd), the whole filesystem."""
    for p in v:
        if not p.strip():
            raise ValueError("empty path")
        if not (p.startswith(("/", "~/")) or p == "~"):
            raise ValueError(f"{p!r}: give an absolute path (or one under ~)")
    return v


class ConfigSnapshotsConfig(_Section):
    repo: str = Field(
        "",
        description="Repository of configuration snapshots; empty means "
        "<state_dir>/config-snapshots.",
    )
    password_file: str = Field(
        "",
        description="Password file of that repository; empty means "
        "<state_dir>/config-snapshots.pass, created with a random password (mode 0600).",
    )
    paths: list[str] = Field(
        default_factory=lambda: [
            "/etc", "~/.kube", "~/ray_bootstrap_config.yaml", "/var/lib/kubelet/config.yaml",
        ],
        description="System and workload configuration to snapshot; paths that do not "
        "exist are skipped. The agent's own config file is always added.",
    )

    _paths = field_validator("paths")(_absolute_paths)


class BackupJobConfig(_Section):
    name: str = Field(..., description="Name of the job (letters, digits, . _ -); the "
                      "scheduler runs it as backup:NAME.")
    repo: str = Field("", description="Repository URL; empty means <state_dir>/backups/NAME, "
                      "created on first use. A given repository must exist (backup init).")
    password_file: str = Field("", description="File holding the repository password; "
                               "required with repo, generated beside the default repo.")
    paths: list[str] = Field(..., min_length=1, description="What to back up.")
    exclude: list[str] = Field(default_factory=list, description="Globs of paths to leave out.")
    tags: list[str] = Field(default_factory=list, description="Extra snapshot tags.")
    one_file_system: bool = Field(False, description="Do not cross into other filesystems.")
    schedule: str = Field("0 3 * * *", description="Cron expression of the job.")
    enabled: bool = Field(True, description="Run it on its schedule.")
    keep_last: int = Field(0, ge=0, description="Retention: keep the newest N snapshots …")
    keep_daily: int = Field(7, ge=0, description="… the last of each of N days …")
    keep_weekly: int = Field(4, ge=0, description="… of N weeks …")
    keep_monthly: int = Field(6, ge=0, description="… and of N months.")
    prune: bool = Field(True, description="Free the space of forgotten snapshots.")
    timeout: Duration = Field(86400.0, description="A run still going after this long (a "
                              "hung mount) is killed and failed; 0s: no limit.")

    _schedule = field_validator("schedule")(check_cron_field)
    _paths = field_validator("paths")(_absolute_paths)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ValueError(f"{v!r}: use up to 64 letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _password(self) -> BackupJobConfig:
        if self.repo and not self.password_file:
            raise ValueError(f"backup job {self.name}: repo needs password_file")
        if not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly):
            raise ValueError(f"backup job {self.name}: keep at least one snapshot "
                             "(keep_last, keep_daily, keep_weekly or keep_monthly)")
        return self


def _default_jobs() -> list[BackupJobConfig]:
    return [BackupJobConfig(name="data", paths=["~/swarm-data"])]


class BackupConfig(_Section):
    config_snapshots: ConfigSnapshotsConfig = Field(
        default_factory=ConfigSnapshotsConfig, description="Configuration snapshots."
    )
    jobs: list[BackupJobConfig] = Field(
        default_factory=_default_jobs,
        description="Scheduled backups of datasets, models and results (docs/schedule.md); "
        "the default backs up ~/swarm-data daily to a local repository.")
    verify_read_data_subset: float = Field(5.0, ge=0, le=100, description="Percent of the "
                                           "packs the weekly backup-verify job reads back.")
    verify_repair: bool = Field(True, description="When backup-verify finds lost or "
                                "damaged packs or index files, it runs `backup repair` "
                                "(the damaged packs read whole), so that the next backup "
                                "stores the lost data again; the job still fails.")

    @field_validator("jobs")
    @classmethod
    def _unique(cls, v: list[BackupJobConfig]) -> list[BackupJobConfig]:
        names = [j.name for j in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"backup job name used twice: {', '.join(dup)}")
        return v
