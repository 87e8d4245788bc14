"""``[agent]``: the node agent's listen address, state directory, node name and logging."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ..hostname import local_hostname
from .base import _Section, default_state_dir, parse_listen

__all__ = ["AgentConfig"]


class AgentConfig(_Section):
    listen: str = Field(
        "127.0.0.1:9310",
        description="HOST:PORT the HTTP server binds to; loopback by default.",
    )
    state_dir: str = Field(
        "",
        description="Directory for the state database and API token; "
        "empty means $XDG_STATE_HOME/swarm-maint.",
    )
    node_name: str = Field("", description="Name of this node in metrics and alerts; "
                           "empty means the host name.")
    token_file: str = Field(
        "",
        description="File holding the bearer token for mutating API calls; "
        "empty means <state_dir>/api-token (created with mode 0600).",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()

    def resolved_node_name(self) -> str:
        return self.node_name or local_hostname()
