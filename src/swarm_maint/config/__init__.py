"""The TOML configuration: pydantic models, embedded defaults, one-line errors.

Every key has a type, a default and a one-line description (``Field(description=...)``);
docs/configuration.md is generated from these models and a test keeps it in step.
Unknown keys are rejected so a typo never silently falls back to a default.

The models live in one module per top-level section (``agent``, ``monitoring``, ``health``,
``alerts``, ``backup``, ``updates``), built on the shared pieces in ``base``; this package
puts them together as ``Config`` and re-exports every name, so
``from swarm_maint.config import X`` works for all of them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from ..errors import ConfigError
from .agent import AgentConfig
from .alerts import _BUILTIN_RECEIVERS as _BUILTIN_RECEIVERS
from .alerts import AlertsConfig, ReceiverConfig, RouteConfig
from .alerts import _check_matchers as _check_matchers
from .backup import BackupConfig, BackupJobConfig, ConfigSnapshotsConfig
from .base import Duration, default_state_dir, parse_listen
from .base import _check_regex as _check_regex
from .base import _Section as _Section
from .base import _to_seconds as _to_seconds
from .health import (
    CheckOverride,
    CustomCheckConfig,
    EndpointConfig,
    HealthConfig,
    ThresholdsConfig,
)
from .monitoring import (
    BUILTIN_COLLECTORS,
    DiskConfig,
    FilesystemConfig,
    HistoryConfig,
    MonitoringConfig,
    NetworkConfig,
)
from .schedule import BUILTIN_JOBS, JobOverride, ScheduleConfig, WindowConfig
from .updates import _DRIVER_PACKAGES as _DRIVER_PACKAGES
from .updates import _KERNEL_PACKAGES as _KERNEL_PACKAGES
from .updates import _ORIGIN_KEYS as _ORIGIN_KEYS
from .updates import PipEnvConfig, UpdatesConfig

__all__ = [
    "BUILTIN_COLLECTORS",
    "AgentConfig",
    "AlertsConfig",
    "BackupConfig",
    "BackupJobConfig",
    "CheckOverride",
    "Config",
    "ConfigSnapshotsConfig",
    "CustomCheckConfig",
    "DiskConfig",
    "Duration",
    "EndpointConfig",
    "FilesystemConfig",
    "HealthConfig",
    "HistoryConfig",
    "JobOverride",
    "MonitoringConfig",
    "NetworkConfig",
    "PipEnvConfig",
    "ReceiverConfig",
    "RouteConfig",
    "ScheduleConfig",
    "ThresholdsConfig",
    "UpdatesConfig",
    "WindowConfig",
    "config_from_dict",
    "default_state_dir",
    "iter_keys",
    "load_config",
    "parse_listen",
]


class Config(_Section):
    agent: AgentConfig = Field(default_factory=AgentConfig, description="The node agent.")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig,
                                         description="Metric collection and history.")
    backup: BackupConfig = Field(default_factory=BackupConfig,
                                 description="Backups and configuration snapshots.")
    health: HealthConfig = Field(default_factory=HealthConfig,
                                 description="Hardware and software health checks.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig,
                                 description="Alert rules and notifications.")
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig,
                                   description="System and Python package updates.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig,
                                     description="The maintenance schedule (docs/schedule.md).")

    def with_state_dir(self, path: str | os.PathLike[str]) -> Config:
        """This config with ``agent.state_dir`` replaced (``--state-dir``)."""
        agent = self.agent.model_copy(update={"state_dir": str(path)})
        return self.model_copy(update={"agent": agent})

    @model_validator(mode="after")
    def _job_names(self) -> Config:
        known = [*BUILTIN_JOBS, *(f"backup:{j.name}" for j in self.backup.jobs)]
        unknown = sorted(set(self.schedule.jobs) - set(known))
        if unknown:
            raise ValueError(f"schedule.jobs.{unknown[0]}: no such job; the jobs are "
                             f"{', '.join(known)}")
        return self


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")


def _format_validation(source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = _key_path(err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see docs/configuration.md for the valid keys)"
        msg = msg.removeprefix("Value error, ")
        problems.append(f"{source}: key {key}: {msg}")
    return problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1
                          else "")


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: TOML syntax error: {exc}") from None
    return config_from_dict(data, str(p))


def _inline_toml(value: Any) -> str:
    """A value as inline TOML on one line (arrays and inline tables)."""
    import tomli_w

    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_inline_toml(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline_toml(v) for v in value) + "]"
    if value is None:
        return "(unset)"
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def _item_model(ann: Any) -> tuple[str, type[BaseModel]] | None:
    """``("[]", M)`` for list[M], ``(".<name>", M)`` for dict[str, M], else None."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "[]", args[0]
    if (origin is dict and len(args) == 2 and isinstance(args[1], type)
            and issubclass(args[1], BaseModel)):
        return ".<name>", args[1]
    return None


def iter_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every leaf key as (dotted name, TOML default, description), for the docs.

    Tables in arrays and maps of tables are listed too, as ``key[].sub`` and
    ``key.<name>.sub``; a key without a default says ``(required)``."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(iter_keys(ann, dotted + "."))
            continue
        if field.is_required():
            rendered = "(required)"
        else:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list) and default and isinstance(default[0], BaseModel):
                value: Any = [d.model_dump(mode="json", exclude_defaults=True) for d in default]
            else:
                form: Any = Annotated[ann, *field.metadata] if field.metadata else ann
                adapter: TypeAdapter[Any] = TypeAdapter(form)
                value = adapter.dump_python(default, mode="json")
            rendered = _inline_toml(value)
        rows.append((dotted, rendered, field.description or ""))
        item = _item_model(ann)
        if item is not None:
            rows.extend(iter_keys(item[1], f"{dotted}{item[0]}."))
    return rows
