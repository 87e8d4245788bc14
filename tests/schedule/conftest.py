"""A node config for schedule tests: small data, no package updates, quick health."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from swarm_maint.config import Config, config_from_dict


def node_settings(tmp: Path, **overrides: Any) -> dict[str, Any]:
    data = tmp / "data"
    (data / "models").mkdir(parents=True, exist_ok=True)
    (data / "models" / "model.safetensors").write_bytes(b"\x01" * 300_000)
    (data / "results.csv").write_text("epoch,loss\n1,0.5\n")
    etc = tmp / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "app.conf").write_text("setting = 1\n")
    settings: dict[str, Any] = {
        "agent": {"state_dir": str(tmp / "state")},
        "monitoring": {"collectors": ["cpu", "memory"]},
        "health": {"families": ["custom"], "custom": [
            {"name": "always-ok", "command": ["true"], "interval": "1h"}]},
        "updates": {"enabled": False},
        "backup": {"config_snapshots": {"paths": [str(etc)]},
                   "jobs": [{"name": "data", "paths": [str(data)]}]},
        "schedule": {"jitter": "0s", "start_delay": "1s"},
    }
    for section, values in overrides.items():
        settings.setdefault(section, {}).update(values)
    return settings


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Config]:
    settings = node_settings(tmp_path)
    path = tmp_path / "swarm-maint.toml"
    path.write_text(tomli_w.dumps(settings))
    return path, config_from_dict(settings)
