"""Real .deb packages built with dpkg-deb and published as local apt repositories
(dpkg-scanpackages, a Release file with Origin/Label/Suite and SHA256 sums)."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    postinst: str = ""          # shell body; $DPKG_ROOT is the target root
    depends: str = ""
    unit: str = ""              # a systemd service file the package ships


def build_deb(deb: Deb, out_dir: Path, work: Path) -> Path:
    d = work / f"{deb.name}_{deb.version}"
    (d / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (d / f"usr/share/{deb.name}").mkdir(parents=True, exist_ok=True)
    control = (f"Package: {deb.name}\nVersion: {deb.version}\nArchitecture: all\n"
               f"Maintainer: tests <tests@example.invalid>\nDescription: test {deb.name}\n")
    if deb.depends:
        control += f"Depends: {deb.depends}\n"
    (d / "DEBIAN/control").write_text(control)
    (d / f"usr/share/{deb.name}/version").write_text(deb.version + "\n")
    if deb.unit:
        (d / "lib/systemd/system").mkdir(parents=True, exist_ok=True)
        (d / "lib/systemd/system" / deb.unit).write_text(
            f"[Service]\nExecStart=/bin/true {deb.version}\n")
    if deb.postinst:
        p = d / "DEBIAN/postinst"
        p.write_text("#!/bin/sh\nset -e\n" + deb.postinst + "\n")
        p.chmod(0o755)
    out = out_dir / f"{deb.name}_{deb.version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(d), str(out)], check=True,
                   capture_output=True)
    return out


def publish(repo: Path, debs: list[Deb], *, origin: str, label: str, suite: str,
            codename: str) -> str:
    """Build ``debs`` into a flat repository at ``repo``; its sources.list line."""
    repo.mkdir(parents=True, exist_ok=True)
    work = repo.parent / f".build-{repo.name}"
    for deb in debs:
        build_deb(deb, repo, work)
    packages = subprocess.run(["dpkg-scanpackages", "-m", ".", "/dev/null"], cwd=repo,
                              check=True, capture_output=True, text=True).stdout
    (repo / "Packages").write_text(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages.encode()))
    sums = []
    for f in ("Packages", "Packages.gz"):
        data = (repo / f).read_bytes()
        sums.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {f}")
    (repo / "Release").write_text(
        f"Origin: {origin}\nLabel: {label}\nSuite: {suite}\nCodename: {codename}\n"
        f"Date: {formatdate(usegmt=True)}\nArchitectures: all\n"
        "SHA256:\n" + "\n".join(sums) + "\n")
    return f"deb [trusted=yes] file:{repo} ./"


def make_root(root: Path, sources: list[str]) -> Path:
    """An empty Debian-like root whose apt reads ``sources``."""
    (root / "etc/apt").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    return root
