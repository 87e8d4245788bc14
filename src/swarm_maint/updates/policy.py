"""Which updates to install now: security origins, holds, minimum age, disruption.

A plan lists every candidate of every managed environment (apt on the node or on an
alternate root, and each configured pip environment) with the verdict of the policy:

* **security**: a candidate from an origin matching ``updates.security_origins``, patterns
  in the style of unattended-upgrades (``o=Debian,n=*-security``), matched against the
  Release fields apt reports for the index the version comes from.
* **held**: NVIDIA driver, CUDA and kernel packages (``updates.holds``; per pip environment
  its own ``holds``) never move in routine or security runs; they move together, only in a
  driver update (mode ``driver``).
* **minimum age**: a version is installed once it has been offered for ``min_age``
  (``security_min_age`` for security updates, 0 by default). First sightings are stored.
* **disruptive**: a reboot (kernel, microcode, libc), a driver reload, or the restart of a
  service that workloads depend on (``critical_services``): the runbook drains first.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import UpdatesConfig
from ..durations import format_duration
from ..store import Store
from .packages.base import Candidate, PackageManager

__all__ = ["Mode", "PlanItem", "Policy", "SeenVersions", "Target", "make_plan",
           "parse_origin_pattern", "units_of"]

Mode = Literal["routine", "security", "driver"]
Disruption = Literal["reboot", "driver-reload", "service-restart"]

_ALIASES = {"origin": "o", "suite": "a", "archive": "a", "codename": "n", "label": "l",
            "component": "c"}
_UNIT = re.compile(r"^/(?:usr/)?lib/systemd/system/([^/]+\.service)$")


def parse_origin_pattern(text: str, codename: str = "") -> dict[str, str]:
    """``"o=Debian,n=${distro_codename}-security"`` → {"o": "Debian", "n": "bookworm-security"}."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        out[_ALIASES.get(key, key)] = value.strip().replace("${distro_codename}", codename)
    return out


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Target:
    """One managed environment: apt of a root, or a pip environment."""

    label: str                  # "apt" or the pip environment's name
    manager: PackageManager
    holds: tuple[str, ...]


@dataclass
class PlanItem:
    manager: str
    name: str
    current: str
    candidate: str
    origin: str
    security: bool
    held: bool
    disruptive: bool
    disruption: Disruption | None
    services: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    skip_reason: str | None = None

    @property
    def selected(self) -> bool:
        return self.skip_reason is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanItem:
        return cls(**data)


class SeenVersions:
    """When each candidate version was first offered, kept in the state database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def record(self, manager: str, cands: Sequence[Candidate], now: float) -> dict[str, float]:
        """Note first sightings; {name: first_seen} of the offered versions."""
        with self._store.transaction() as conn:
            for c in cands:
                conn.execute("INSERT OR IGNORE INTO update_seen VALUES (?, ?, ?, ?)",
                             (manager, c.name, c.candidate, now))
            # versions no longer offered (installed, or withdrawn) need no record
            offered = {(c.name, c.candidate) for c in cands}
            rows = conn.execute("SELECT name, version, first_seen FROM update_seen"
                                " WHERE manager = ?", (manager,)).fetchall()
            out = {}
            for name, version, first in rows:
                if (name, version) in offered:
                    out[name] = first
                else:
                    conn.execute("DELETE FROM update_seen WHERE manager = ? AND name = ?"
                                 " AND version = ?", (manager, name, version))
        return out


class Policy:
    def __init__(self, cfg: UpdatesConfig, root: Path | None = None) -> None:
        self.cfg = cfg
        self.root = root
        codename = _distro_codename(root or Path("/"))
        self._security = [parse_origin_pattern(p, codename) for p in cfg.security_origins]

    def is_security(self, cand: Candidate) -> bool:
        return any(all(fnmatch.fnmatchcase(origin.get(k, ""), v) for k, v in pat.items())
                   for origin in cand.origins for pat in self._security)

    def disruption(self, target: Target, name: str, services: list[str]) -> Disruption | None:
        if target.label != "apt":
            return None  # a pip environment restarts nothing; workloads pick it up later
        if _matches_any(name, self.cfg.reboot_packages):
            return "reboot"
        if _matches_any(name, self.cfg.driver_packages):
            return "driver-reload"
        if any(_matches_any(s, self.cfg.critical_services) for s in services):
            return "service-restart"
        return None

    def judge(self, target: Target, cand: Candidate, first_seen: float, now: float,
              mode: Mode, allow_disruptive: bool = True) -> PlanItem:
        services = units_of(target.manager, cand.name)
        security = self.is_security(cand)
        held = _matches_any(cand.name, target.holds)
        disruption = self.disruption(target, cand.name, services)
        item = PlanItem(target.label, cand.name, cand.current, cand.candidate, cand.origin,
                        security, held, disruption is not None, disruption, services,
                        first_seen)
        min_age = self.cfg.security_min_age if security else self.cfg.min_age
        age = now - first_seen
        if mode == "driver":
            if not held:
                item.skip_reason = "not a held package (a driver update moves only those)"
        elif held and target.label == "apt":
            item.skip_reason = ("held: driver, CUDA and kernel packages move only together, "
                                "in a driver update (update apply --driver)")
        elif held:
            item.skip_reason = ("held: pinned for the workload (updates.pip holds); moves "
                                "only in a driver update (update apply --driver)")
        elif mode == "security" and not security:
            item.skip_reason = "not a security update"
        # a driver update moves its packages as one unit, when a person starts it
        if item.skip_reason is None and age < min_age and mode != "driver":
            item.skip_reason = (f"too new: seen for {format_duration(max(0.0, age))}, "
                                f"minimum age {format_duration(min_age)}")
        if item.skip_reason is None and item.disruptive and not allow_disruptive:
            item.skip_reason = f"disruptive ({disruption}): waits for a maintenance window"
        return item


def make_plan(targets: Sequence[Target], policy: Policy, seen: SeenVersions, now: float,
              mode: Mode = "routine", *, allow_disruptive: bool = True,
              refresh: bool = True) -> list[PlanItem]:
    """Every candidate of every target with the policy's verdict, in a stable order."""
    items: list[PlanItem] = []
    for target in targets:
        if refresh:
            target.manager.refresh()
        cands = target.manager.candidates()
        first = seen.record(target.label, cands, now)
        for cand in cands:
            items.append(policy.judge(target, cand, first.get(cand.name, now), now, mode,
                                      allow_disruptive))
    return items


def units_of(manager: PackageManager, name: str) -> list[str]:
    """systemd services the installed version of an apt package ships."""
    admindir = getattr(manager, "admindir", None)
    if not isinstance(admindir, Path):
        return []
    info = admindir / "info"
    units: list[str] = []
    for listing in (info / f"{name}.list", *sorted(info.glob(f"{name}:*.list"))):
        try:
            lines = listing.read_text(errors="replace").splitlines()
        except OSError:
            continue
        units.extend(m.group(1) for m in map(_UNIT.match, lines) if m)
    return sorted(set(units))


def _distro_codename(root: Path) -> str:
    try:
        text = (root / "etc/os-release").read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r'^VERSION_CODENAME="?([^"\n]*)"?$', text, re.M)
    return m.group(1) if m else ""
