"""``[alerts]``: alert rules, receivers of notifications and the routes to them."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from .base import Duration, _Section, is_http_url

__all__ = ["AlertsConfig", "ReceiverConfig", "RouteConfig"]


_BUILTIN_RECEIVERS = ("webhook", "alertmanager", "slack", "email")


class ReceiverConfig(_Section):
    name: str = Field(..., description="Name of the receiver, used by routes and the outbox.")
    type: str = Field("webhook", description="webhook (Alertmanager's webhook format), "
                      "alertmanager (API v2 push), slack (incoming webhook), email (SMTP), "
                      "or a plugin registered in the swarm_maint.notifiers entry-point group.")
    url: str = Field("", description="webhook and slack: where notifications are POSTed; "
                     "alertmanager: its base URL, e.g. http://127.0.0.1:9093.")
    timeout: Duration = Field(5.0, gt=0, description="Timeout of one delivery attempt.")
    send_resolved: bool = Field(True, description="Also notify when an alert resolves.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers "
                                    "(webhook, alertmanager, slack), e.g. Authorization.")
    resend_interval: Duration = Field(60.0, gt=0, description="alertmanager: re-send firing "
                                      "alerts this often; each push is valid for 4 times it.")
    channel: str = Field("", description="slack: channel override (empty: the hook's own).")
    smtp_host: str = Field("", description="email: SMTP server host.")
    smtp_port: int = Field(587, ge=1, le=65535, description="email: SMTP server port.")
    security: str = Field("starttls", description="email: starttls, tls (implicit, port "
                          "465) or none.")
    username: str = Field("", description="email: SMTP AUTH user (empty: no AUTH).")
    password_file: str = Field("", description="email: file holding the SMTP password.")
    ca_file: str = Field("", description="email: CA bundle to verify the server's "
                         "certificate (empty: the system's).")
    from_address: str = Field("", description="email: the From address.")
    to: list[str] = Field(default_factory=list, description="email: recipient addresses.")
    options: dict[str, Any] = Field(default_factory=dict, description="Settings of a "
                                    "plugin receiver type, passed to it as they are.")

    @model_validator(mode="after")
    def _per_type(self) -> ReceiverConfig:
        t = self.type
        if t in ("webhook", "alertmanager", "slack"):
            if not is_http_url(self.url):
                raise ValueError(f"receiver {self.name!r} ({t}) needs url = \"http(s)://...\" "
                                 "with a valid host and port")
        elif t == "email":
            if not self.smtp_host:
                raise ValueError(f"receiver {self.name!r} (email) needs smtp_host")
            if not _ADDRESS.fullmatch(self.from_address) or not self.to or not all(
                    _ADDRESS.fullmatch(a) for a in self.to):
                raise ValueError(f"receiver {self.name!r} (email) needs from_address and to "
                                 "(a list of addresses), each like name@example.com")
        for key, value in self.headers.items():
            # httpx sends header values as ASCII; CR/LF would start another header
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", key) or not value.isascii() \
                    or any(c in value for c in "\r\n\0"):
                raise ValueError(f"receiver {self.name!r}: header {key!r}: names are HTTP "
                                 "tokens, values ASCII on one line")
            if self.security not in ("starttls", "tls", "none"):
                raise ValueError(f"receiver {self.name!r}: security must be starttls, tls "
                                 "or none")
            if self.username and not self.password_file:
                raise ValueError(f"receiver {self.name!r}: username needs password_file")
        else:
            from ..plugins import available

            plugins = available("swarm_maint.notifiers")
            if t not in plugins:
                raise ValueError(f"receiver {self.name!r}: unknown type {t!r} (known: "
                                 f"{', '.join(plugins)})")
        return self


_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")


def _check_matchers(v: list[str]) -> list[str]:
    from ..alerts.matchers import parse_matcher

    for text in v:
        parse_matcher(text)
    return v


class RouteConfig(_Section):
    matchers: list[str] = Field(default_factory=list, description="Label matchers "
                                "(name=value, !=, =~, !~) an alert must all satisfy; empty "
                                "matches every alert.")
    receivers: list[str] = Field(..., min_length=1, description="Receivers of the alerts "
                                 "this route matches.")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"], description="Alerts "
                                "with equal values of these labels are sent together.")
    group_wait: Duration = Field(0.0, description="How long a new group waits for more "
                                 "alerts before its first notification.")
    repeat_interval: Duration = Field(4 * 3600.0, gt=0, description="Notify again about an alert "
                                      "that is still firing this often.")
    continue_matching: bool = Field(False, description="Also try the following routes "
                                    "after this one matched.")

    _matchers = field_validator("matchers")(_check_matchers)


class AlertsConfig(_Section):
    enabled: bool = Field(True, description="Evaluate alert rules in the agent.")
    default_rules: bool = Field(True, description="Load the shipped default rules.")
    rule_files: list[str] = Field(default_factory=list, description="Prometheus rule files "
                                  "added to the defaults.")
    receivers: list[ReceiverConfig] = Field(default_factory=list, description="Where "
                                            "notifications go (docs/alerts.md).")
    routes: list[RouteConfig] = Field(default_factory=list, description="Which alerts go "
                                      "to which receivers, tried in order (docs/alerts.md).")
    default_receivers: list[str] = Field(default_factory=list, description="Receivers of "
                                         "alerts no route matches; empty means all.")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"], description="Grouping "
                                "of alerts no route matches.")
    repeat_interval: Duration = Field(4 * 3600.0, gt=0, description="Repeat interval of alerts no "
                                      "route matches.")
    max_per_second: float = Field(5.0, gt=0, description="Most notifications per second to "
                                  "one receiver (a returning receiver gets no storm).")
    maintenance_expected: list[str] = Field(
        default_factory=lambda: [
            'alertname=~"GpuLost|GpuCountBelowExpected|HealthCheckCritical|'
            'GpuXidNeedsResetOrReboot|GpuRowRemapPending"'
        ],
        description="Matchers of the alerts a maintenance window holds back when it names "
        "none itself (a reboot or driver update makes these fire).")
    maintenance_grace: Duration = Field(120.0, description="Held alerts are released when "
                                        "they still fire this long after the maintenance.")

    _maintenance = field_validator("maintenance_expected")(_check_matchers)

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [r.name for r in self.receivers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"receiver name used twice: {', '.join(dup)}")
        for i, route in enumerate(self.routes):
            for r in route.receivers:
                if r not in names:
                    raise ValueError(f"routes[{i}] names receiver {r!r}, which is not "
                                     "configured")
        for r in self.default_receivers:
            if r not in names:
                raise ValueError(f"default_receivers names {r!r}, which is not configured")
        return self
