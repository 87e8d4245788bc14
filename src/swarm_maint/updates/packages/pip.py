"""pip, driven through ``python -m pip`` of one Python environment (a virtualenv or an interpreter).

Every command runs as ``<python> -m pip <command> ... --disable-pip-version-check --no-input``
with ``PIP_NO_INPUT=1``, ``PIP_DISABLE_PIP_VERSION_CHECK=1`` and ``LC_ALL=C``, and without
``PYTHONPATH``/``PYTHONHOME`` (they would make the target interpreter see, and pip list,
packages that are not in the environment being managed). The rest of the caller's
environment and pip's own configuration files still apply: an ``index_url`` given here
overrides the configured index, while ``find_links`` given here are added to configured
ones (pip appends command-line ``--find-links`` to them).

Index options: ``index_url`` becomes ``--index-url``, each of ``find_links`` a
``--find-links``, and find-links without an index URL also ``--no-index``, so that a
wheel directory is the only source of packages (no network).

Package names are PEP 503-canonical in everything returned (``Swarm_Kit`` → ``swarm-kit``);
pip accepts any spelling in what it is given.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import PackageError
from .base import Candidate

__all__ = ["DEFAULT_INDEX", "PipManager", "canonicalize_name", "parse_pip_list"]

DEFAULT_INDEX = "https://pypi.org/simple"

_SEPARATORS = re.compile(r"[-_.]+")
_ERROR_LINE = re.compile(r"^(?:ERROR|error):\s*(.*)$")


def canonicalize_name(name: str) -> str:
    """PEP 503 normal form of a project name: lowercase, runs of ``-_.`` → ``-``."""
    return _SEPARATORS.sub("-", name).lower()


def parse_pip_list(text: str) -> list[dict[str, str]]:
    """``pip list --format=json`` output → its rows (``PackageError`` if it is not that)."""
    try:
        rows: Any = json.loads(text)
    except json.JSONDecodeError:
        first = text.strip().splitlines()[:1]
        raise PackageError(f"pip list: not JSON: {first[0][:120] if first else 'no output'}") \
            from None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str)
            and isinstance(r.get("version"), str) for r in rows):
        raise PackageError("pip list: unexpected JSON (not a list of name/version rows)")
    return [{str(k): str(v) for k, v in r.items()} for r in rows]


def _error_line(stderr: str, stdout: str) -> str:
    """The most useful line of a failed pip run: its first ``ERROR:`` line, else the last."""
    for line in (stderr + "\n" + stdout).splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m and m.group(1):
            return m.group(1)
    lines = [ln.strip() for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


class PipManager:
    name = "pip"

    def __init__(self, python: Path, *, index_url: str = "", find_links: Sequence[str] = (),
                 timeout: float = 1800.0) -> None:
        # not resolved: a virtualenv's python is a symlink to the base interpreter, and only
        # the link's own location makes it the virtualenv's
        path = Path(python).absolute()
        if path.is_dir():
            path = path / "bin" / "python"
        if not path.is_file() or not os.access(path, os.X_OK):
            raise PackageError(f"{python}: not a Python executable or virtualenv directory "
                               f"({path} does not exist or is not executable)")
        self.python = path
        self.index_url = index_url
        self.find_links = tuple(str(x) for x in find_links)
        self.timeout = timeout

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def index(self) -> str:
        """Where candidates come from, as the ``index`` field of their origin."""
        return self.index_url or " ".join(self.find_links) or DEFAULT_INDEX

    def index_args(self) -> list[str]:
        args = ["--index-url", self.index_url] if self.index_url else []
        for link in self.find_links:
            args += ["--find-links", link]
        if self.find_links and not self.index_url:
            args.append("--no-index")
        return args

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", LC_ALL="C")
        return env

    def run(self, args: Sequence[str], *,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python -m pip ARGS``; ``PackageError`` naming it when it fails."""
        argv = [str(self.python), "-m", "pip", *args, "--disable-pip-version-check",
                "--no-input"]
        what = f"{self.python} -m pip {args[0] if args else ''}".rstrip()
        limit = timeout or self.timeout
        try:
            proc = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                                  timeout=limit, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PackageError(f"{what}: timed out after {limit:g}s") from None
        except OSError as e:
            raise PackageError(f"{what}: cannot run: {e.strerror or e}") from None
        if proc.returncode != 0:
            raise PackageError(f"{what} failed (exit {proc.returncode}): "
                               f"{_error_line(proc.stderr, proc.stdout)}")
        return proc

    # -- reading ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Nothing to fetch (pip reads the index at each query); checks that pip runs at all,
        so a broken environment is an early error."""
        self.run(["--version"], timeout=min(self.timeout, 120.0))

    def installed(self) -> dict[str, str]:
        rows = parse_pip_list(self.run(["list", "--format=json"]).stdout)
        return {canonicalize_name(r["name"]): r["version"] for r in rows}

    def candidates(self) -> list[Candidate]:
        rows = parse_pip_list(
            self.run(["list", "--outdated", "--format=json", *self.index_args()]).stdout)
        origin = {"index": self.index, "o": "pip"}
        out = [Candidate(canonicalize_name(r["name"]), r["version"],
                         r.get("latest_version", ""), (dict(origin),)) for r in rows]
        return sorted((c for c in out if c.candidate), key=lambda c: c.name)

    # pip keeps no record of a half-done install that could be checked cheaply (``pip check``
    # only finds unmet dependencies, which an exact pin can cause on purpose), and nothing it
    # installs asks for a reboot: audit, repair and reboot_required exist so that the runbook
    # can call them on any manager. Installing the recorded versions again is pip's repair.

    def audit(self) -> str:
        """Always empty: pip has no half-installed state to detect."""
        return ""

    def repair(self) -> None:
        """Nothing to finish: see ``audit``."""

    def reboot_required(self) -> list[str]:
        """Always empty: Python packages never require a reboot."""
        return []

    # -- changing ---------------------------------------------------------------------------

    def install(self, versions: dict[str, str]) -> None:
        if not versions:
            return
        specs = [f"{n}=={v}" for n, v in sorted(versions.items())]
        self.run(["install", *self.index_args(), *specs])

    def remove(self, names: list[str]) -> None:
        if not names:
            return
        self.run(["uninstall", "-y", *sorted(names)])
