"""apt/dpkg on an alternate root against real local repositories; the host is untouched."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_maint.updates.errors import PackageError
from swarm_maint.updates.packages.apt import AptManager
from tests.updates.debrepo import Deb, make_root, publish

pytestmark = pytest.mark.slow


def host_dpkg_state() -> str:
    return hashlib.sha256(Path("/var/lib/dpkg/status").read_bytes()).hexdigest()


@pytest.fixture
def apt(tmp_path: Path) -> Iterator[AptManager]:
    before = host_dpkg_state()
    main = publish(tmp_path / "main", [
        Deb("tool", "1.0"), Deb("tool", "1.1"), Deb("libfoo", "1.0"),
        Deb("broken", "1.0"), Deb("broken", "1.1", postinst="exit 3"),
        Deb("kernel-ish", "1.0"),
        Deb("kernel-ish", "1.1", postinst='mkdir -p "$DPKG_ROOT/run"\n'
            'touch "$DPKG_ROOT/run/reboot-required"\n'
            'echo kernel-ish >> "$DPKG_ROOT/run/reboot-required.pkgs"'),
    ], origin="Swarm Test", label="Swarm Test", suite="stable", codename="test")
    security = publish(tmp_path / "security", [Deb("libfoo", "1.0+sec1")],
                       origin="Swarm Test", label="Swarm Test-Security",
                       suite="stable-security", codename="test-security")
    mgr = AptManager(make_root(tmp_path / "root", [main, security]))
    mgr.refresh()
    yield mgr
    assert host_dpkg_state() == before, "the host's package database was changed"


def test_install_list_candidates_with_origins(apt: AptManager) -> None:
    apt.install({"tool": "1.0", "libfoo": "1.0"})
    assert apt.installed() == {"tool": "1.0", "libfoo": "1.0"}
    assert apt.root is not None
    assert (apt.root / "usr/share/tool/version").read_text() == "1.0\n"
    cands = {c.name: c for c in apt.candidates()}
    assert set(cands) == {"tool", "libfoo"}
    assert (cands["tool"].current, cands["tool"].candidate) == ("1.0", "1.1")
    assert cands["tool"].origins[0]["a"] == "stable"
    sec = cands["libfoo"]
    assert sec.candidate == "1.0+sec1"
    assert sec.origins[0]["l"] == "Swarm Test-Security"
    assert sec.origins[0]["a"] == "stable-security" and sec.origin == "Swarm Test/stable-security"


def test_downgrade_back_to_a_recorded_version(apt: AptManager) -> None:
    apt.install({"tool": "1.1"})
    apt.install({"tool": "1.0"})
    assert apt.installed()["tool"] == "1.0"
    assert apt.root is not None
    assert (apt.root / "usr/share/tool/version").read_text() == "1.0\n"


def test_remove_takes_a_package_away(apt: AptManager) -> None:
    apt.install({"tool": "1.0", "libfoo": "1.0"})
    apt.remove([])  # nothing to do
    apt.remove(["libfoo"])
    assert apt.installed() == {"tool": "1.0"}
    assert apt.root is not None
    assert not (apt.root / "usr/share/libfoo/version").exists()


def test_failing_postinst_is_an_error_seen_by_audit_and_rolled_back(apt: AptManager) -> None:
    apt.install({"broken": "1.0"})
    with pytest.raises(PackageError, match=r"apt-get install -y failed \(exit 100\)"):
        apt.install({"broken": "1.1"})
    assert "broken" in apt.audit()  # half-configured
    apt.install({"broken": "1.0"})
    assert apt.installed()["broken"] == "1.0" and apt.audit() == ""


def test_reboot_required_is_detected(apt: AptManager) -> None:
    apt.install({"kernel-ish": "1.0"})
    assert apt.reboot_required() == []
    apt.install({"kernel-ish": "1.1"})
    assert apt.reboot_required() == ["kernel-ish"]


def test_unknown_version_is_one_line(apt: AptManager) -> None:
    with pytest.raises(PackageError) as err:
        apt.install({"tool": "9.9"})
    assert "\n" not in str(err.value) and "9.9" in str(err.value)


def test_dpkg_killed_mid_install_is_detected_and_repaired(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    repo = publish(tmp_path / "repo", [
        Deb("slow", "1.0", postinst='if [ ! -e "$DPKG_ROOT/slow-once" ]; then\n'
            '  touch "$DPKG_ROOT/slow-once"; sleep 60\nfi'),
    ], origin="Swarm Test", label="Swarm Test", suite="stable", codename="test")
    apt = AptManager(make_root(tmp_path / "root", [repo]))
    apt.refresh()
    assert apt.root is not None
    proc = subprocess.Popen(["apt-get", "install", "-y", "-q", "slow=1.0"], env=apt.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not (apt.root / "slow-once").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "postinst never ran"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # apt and dpkg die at once
    proc.wait(10)
    # dpkg runs maintainer scripts in their own process group: end the orphaned postinst
    # too, as a power cut would (it holds the dpkg lock through an inherited descriptor)
    import psutil

    for p in psutil.process_iter():
        try:
            if p.environ().get("DPKG_ROOT") == str(apt.root):
                p.kill()
                p.wait(10)
        except psutil.Error:
            pass
    assert "slow" in apt.audit()  # unpacked, not configured
    apt.repair()
    assert apt.audit() == ""
    assert apt.installed() == {"slow": "1.0"}
