"""The ``PackageManager`` protocol and the records it deals in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..errors import PackageError

__all__ = ["Candidate", "PackageError", "PackageManager"]


@dataclass(frozen=True)
class Candidate:
    """An installed package with a newer version available."""

    name: str
    current: str
    candidate: str
    # release fields of where the candidate comes from (apt: o, a, n, l, c, site; pip: index)
    origins: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def origin(self) -> str:
        """A short human form of the first origin, e.g. ``Debian/bookworm-security``."""
        if not self.origins:
            return ""
        o = self.origins[0]
        return "/".join(x for x in (o.get("o", ""), o.get("a", "") or o.get("n", "")) if x)


class PackageManager(Protocol):
    name: str

    def refresh(self) -> None:
        """Fetch the package indexes (apt-get update)."""
        ...

    def installed(self) -> dict[str, str]:
        """Installed packages and their versions."""
        ...

    def candidates(self) -> list[Candidate]:
        """Installed packages that have a newer candidate version."""
        ...

    def install(self, versions: dict[str, str]) -> None:
        """Install exactly these versions (upgrades and downgrades), non-interactively,
        keeping existing configuration files."""
        ...

    def remove(self, names: list[str]) -> None:
        """Remove these packages (ones an update pulled in that rollback takes away)."""
        ...

    def audit(self) -> str:
        """What an interrupted earlier run left half done (empty when sound)."""
        ...

    def repair(self) -> None:
        """Finish or undo what an interrupted earlier run left half done."""
        ...

    def reboot_required(self) -> list[str]:
        """Packages that asked for a reboot."""
        ...
