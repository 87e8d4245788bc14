"""apt and dpkg, driven through their own commands, on the host or on an alternate root.

With ``root`` set (``--root DIR``: a chroot, an image, a test tree) every command gets an
``APT_CONFIG`` file pointing apt's ``Dir`` at the root and dpkg at ``--root``/``--admindir``
inside it, with maintainer scripts run without chroot (``DPKG_ROOT`` tells them where the
root is). Nothing of the host's package database is read or written then.

Origins of a candidate come from ``apt-cache policy``: the per-package version table names
the index each version is in, and the global policy maps each index to its Release fields
(``o`` origin, ``a`` suite/archive, ``n`` codename, ``l`` label, ``c`` component), which is
what unattended-upgrades' origin patterns match.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..errors import PackageError
from .base import Candidate

__all__ = ["AptManager", "parse_policy_releases", "parse_simulation"]

_INST = re.compile(r"^Inst (\S+) \[([^\]]+)\] \((\S+) ")
_RELEASE = re.compile(r"^\s+release (.*)$")
_INDEX = re.compile(r"^\s*-?\d+ (\S+ \S+ \S+(?: \S+)?)$")
_VERSION_ROW = re.compile(r"^ (?:\*\*\*| {3}) (\S+) -?\d+$")


def parse_simulation(text: str) -> dict[str, tuple[str, str]]:
    """``apt-get -s`` output → {package: (current, candidate)} for upgrades."""
    out = {}
    for line in text.splitlines():
        m = _INST.match(line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3))
    return out


def parse_policy_releases(text: str) -> dict[str, dict[str, str]]:
    """Global ``apt-cache policy`` → {index line: release fields}."""
    out: dict[str, dict[str, str]] = {}
    index: str | None = None
    for line in text.splitlines():
        site = re.match(r"^\s+origin (\S+)$", line)
        if site and index is not None and index in out:
            out[index]["site"] = site.group(1)
            continue
        rel = _RELEASE.match(line)
        if rel and index is not None:
            fields = {}
            for part in rel.group(1).split(","):
                k, _, v = part.partition("=")
                fields[k.strip()] = v.strip()
            out[index] = fields
            continue
        m = _INDEX.match(line)
        index = m.group(1) if m else None
    return out


def parse_package_policy(text: str) -> dict[str, dict[str, list[str]]]:
    """Per-package ``apt-cache policy P...`` → {package: {version: [index lines]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    pkg: str | None = None
    version: str | None = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            pkg, version = line[:-1], None
            out[pkg] = {}
            continue
        if pkg is None:
            continue
        m = _VERSION_ROW.match(line)
        if m:
            version = m.group(1)
            out[pkg][version] = []
            continue
        idx = re.match(r"^\s{8}-?\d+ (.+)$", line)
        if idx and version is not None:
            out[pkg][version].append(idx.group(1).strip())
    return out


def _cause(output: str) -> str:
    """The most telling line of a failed apt/dpkg run: dpkg's own error with its reason
    (the maintainer script that failed) before apt's generic "Sub-process returned"."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("dpkg: error processing") and i + 1 < len(lines):
            return f"{line.rstrip(':')}: {lines[i + 1].strip()}"
    for prefix in ("E:", "dpkg: error", "dpkg:"):
        found = [ln for ln in lines if ln.startswith(prefix)]
        if found:
            return found[0]
    tail = output.strip().splitlines()[-1:]
    return tail[0] if tail else "no output"


class AptManager:
    name = "apt"

    def __init__(self, root: Path | None = None, *, timeout: float = 3600.0) -> None:
        self.root = root.resolve() if root is not None else None
        self.timeout = timeout
        self._env: dict[str, str] | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def admindir(self) -> Path:
        return (self.root or Path("/")) / "var/lib/dpkg"

    def env(self) -> dict[str, str]:
        """The environment of every apt/dpkg command (an APT_CONFIG for an alternate root)."""
        if self._env is not None:
            return self._env
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        if self.root is not None:
            r = self.root
            for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/apt/lists/partial",
                      "var/cache/apt/archives/partial", "etc/apt/apt.conf.d",
                      "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/log/apt"):
                (r / d).mkdir(parents=True, exist_ok=True)
            for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
                (r / f).touch(exist_ok=True)
            conf = r / "etc/apt/swarm-maint-root.conf"
            conf.write_text(
                f'Dir "{r}/";\n'
                f'Dir::State::status "{r}/var/lib/dpkg/status";\n'
                'Dir::Bin::Methods "/usr/lib/apt/methods";\n'
                'Dir::Bin::dpkg "/usr/bin/dpkg";\n'
                f'DPkg::Options {{ "--root={r}"; "--admindir={r}/var/lib/dpkg"; '
                f'"--force-script-chrootless"; "--log={r}/var/log/dpkg.log"; }};\n'
                'APT::Sandbox::User "root";\n'
            )
            env["APT_CONFIG"] = str(conf)
            env["DPKG_ROOT"] = str(r)
        self._env = env
        return env

    def _dpkg_args(self) -> list[str]:
        if self.root is None:
            return []
        return [f"--root={self.root}", f"--admindir={self.admindir}",
                "--force-script-chrootless"]

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run one apt/dpkg command; ``PackageError`` naming it when it fails."""
        try:
            proc = subprocess.run(list(argv), env=self.env(), capture_output=True, text=True,
                                  timeout=timeout or self.timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise PackageError(f"{argv[0]}: not found (is this a Debian/Ubuntu system?)") \
                from None
        except subprocess.TimeoutExpired:
            raise PackageError(f"{' '.join(argv[:3])}: timed out") from None
        if check and proc.returncode != 0:
            raise PackageError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): "
                               f"{_cause(proc.stderr + proc.stdout)}")
        return proc

    # -- reading ----------------------------------------------------------------------------

    def refresh(self) -> None:
        self.run(["apt-get", "update", "-q"])

    def installed(self) -> dict[str, str]:
        proc = self.run(["dpkg-query", f"--admindir={self.admindir}", "-W",
                         "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n"])
        out = {}
        for line in proc.stdout.splitlines():
            name, version, status = [*line.split("\t"), "", ""][:3]
            if status.startswith("i"):
                out[name] = version
        return out

    def candidates(self) -> list[Candidate]:
        sim = parse_simulation(self.run(["apt-get", "-s", "-q", "dist-upgrade"]).stdout)
        if not sim:
            return []
        releases = parse_policy_releases(self.run(["apt-cache", "policy"]).stdout)
        per_pkg = parse_package_policy(self.run(["apt-cache", "policy", *sorted(sim)]).stdout)
        out = []
        for name, (current, candidate) in sorted(sim.items()):
            indexes = per_pkg.get(name, {}).get(candidate, [])
            origins = tuple(releases[i] for i in indexes if i in releases)
            out.append(Candidate(name, current, candidate, origins))
        return out

    def audit(self) -> str:
        """What ``dpkg --audit`` reports (empty when the package database is consistent)."""
        return self.run(["dpkg", *self._dpkg_args(), "--audit"], check=False).stdout.strip()

    def reboot_required(self) -> list[str]:
        """Packages that asked for a reboot (Debian's /run/reboot-required convention)."""
        base = self.root or Path("/")
        flag = base / "run/reboot-required"
        if not flag.exists():
            flag = base / "var/run/reboot-required"
        if not flag.exists():
            return []
        pkgs = flag.with_name("reboot-required.pkgs")
        names = pkgs.read_text().split() if pkgs.exists() else []
        return names or ["(unknown package)"]

    # -- changing ---------------------------------------------------------------------------

    def repair(self) -> None:
        """Finish an interrupted dpkg run (``dpkg --configure -a``)."""
        self.run(["dpkg", *self._dpkg_args(), "--force-confold", "--configure", "-a"])

    def install(self, versions: dict[str, str]) -> None:
        if not versions:
            return
        specs = [f"{n}={v}" for n, v in sorted(versions.items())]
        self.run(["apt-get", "install", "-y", "-q", "--allow-downgrades",
                  "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold",
                  "-o", "Dpkg::Options::=--force-confdef", *specs])

    def remove(self, names: list[str]) -> None:
        if not names:
            return
        self.run(["apt-get", "remove", "-y", "-q", "-o", "Dpkg::Options::=--force-confold",
                  "-o", "Dpkg::Options::=--force-confdef", *sorted(names)])
