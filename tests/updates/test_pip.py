"""pip in a real throwaway virtualenv against a directory of real wheels; no network is
used and the project's own environment is untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_maint.updates.errors import PackageError
from swarm_maint.updates.packages.base import PackageManager
from swarm_maint.updates.packages.pip import PipManager, canonicalize_name
from tests.updates.wheels import build_wheel

pytestmark = pytest.mark.slow

# where any attempt to reach the network goes: nothing listens on the discard port
_DEAD_PROXY = "http://127.0.0.1:9"


def _isolated_env() -> dict[str, str]:
    """The environment minus pip's configuration (files and PIP_* variables), with proxies
    that fail at once should anything try the network."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PIP_", "PYTHON")) and k.upper() != "NO_PROXY"
           and not k.upper().endswith("_PROXY")}
    env.update(PIP_CONFIG_FILE=os.devnull, HTTP_PROXY=_DEAD_PROXY, HTTPS_PROXY=_DEAD_PROXY,
               http_proxy=_DEAD_PROXY, https_proxy=_DEAD_PROXY)
    return env


def project_pip_list() -> str:
    """``pip list`` of the environment running the tests (the project's .venv)."""
    return subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"],
                          env=_isolated_env(), capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def template_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real virtualenv (``python -m venv``; pip comes from ensurepip's bundled wheel)."""
    venv = tmp_path_factory.mktemp("template") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=_isolated_env(),
                   check=True, capture_output=True, timeout=120)
    return venv


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    build_wheel(d, "swarmtool", "1.0")
    build_wheel(d, "swarmtool", "1.1")
    build_wheel(d, "swarmlib", "1.0")
    build_wheel(d, "swarmlib", "2.0")
    build_wheel(d, "swarmapp", "1.0", requires=["swarmlib>=1.0"])
    build_wheel(d, "Swarm_Odd.Name", "0.3")
    return d


@pytest.fixture
def venv(tmp_path: Path, template_venv: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A virtualenv of this test's own: a copy of the template (links kept, so its python
    is still the venv's python, and ``python -m pip`` works in the copy)."""
    isolated = _isolated_env()
    for k in list(os.environ):
        if k not in isolated:
            monkeypatch.delenv(k)
    for k, v in isolated.items():
        monkeypatch.setenv(k, v)
    dst = tmp_path / "venv"
    shutil.copytree(template_venv, dst, symlinks=True)
    return dst


@pytest.fixture
def pip(venv: Path, wheelhouse: Path) -> Iterator[PipManager]:
    before = project_pip_list()
    mgr = PipManager(venv, find_links=[str(wheelhouse)])
    mgr.refresh()
    yield mgr
    assert project_pip_list() == before, "the project's own environment was changed"


def module_version(venv: Path, module: str) -> str:
    proc = subprocess.run([str(venv / "bin/python"), "-c",
                           f"import {module}; print({module}.VERSION)"],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else "(not importable)"


def test_index_options_never_reach_the_network(pip: PipManager, wheelhouse: Path) -> None:
    manager: PackageManager = pip  # the protocol, checked by mypy
    assert manager.name == "pip"
    assert pip.python == pip.python.absolute() and pip.python.name == "python"
    assert pip.index_args() == ["--find-links", str(wheelhouse), "--no-index"]
    other = PipManager(pip.python, index_url="https://mirror.example/simple",
                       find_links=["/w"])
    assert other.index_args() == ["--index-url", "https://mirror.example/simple",
                                  "--find-links", "/w"]
    assert other.index == "https://mirror.example/simple"
    assert PipManager(pip.python).index == "https://pypi.org/simple"
    assert PipManager(pip.python).index_args() == []


def test_install_exact_versions(pip: PipManager, venv: Path) -> None:
    base = pip.installed()
    assert "pip" in base  # everything is listed, pip itself too
    pip.install({})  # nothing to do
    pip.install({"swarmtool": "1.0", "swarmlib": "1.0"})
    assert pip.installed() == {**base, "swarmtool": "1.0", "swarmlib": "1.0"}
    assert module_version(venv, "swarmtool") == "1.0"
    assert module_version(venv, "swarmlib") == "1.0"


def test_candidates_are_the_newer_versions_with_the_index_origin(
        pip: PipManager, wheelhouse: Path) -> None:
    assert pip.candidates() == []
    pip.install({"swarmtool": "1.0", "swarmlib": "1.0"})
    cands = pip.candidates()
    assert [(c.name, c.current, c.candidate) for c in cands] == [
        ("swarmlib", "1.0", "2.0"), ("swarmtool", "1.0", "1.1")]
    for c in cands:
        assert c.origins == ({"index": str(wheelhouse), "o": "pip"},)
        assert c.origin == "pip"


def test_downgrade_back_to_a_recorded_version(pip: PipManager, venv: Path) -> None:
    pip.install({"swarmtool": "1.0"})
    recorded = pip.installed()
    pip.install({"swarmtool": "1.1"})
    assert pip.installed()["swarmtool"] == "1.1"
    assert module_version(venv, "swarmtool") == "1.1"
    pip.install({"swarmtool": recorded["swarmtool"]})
    assert pip.installed() == recorded
    assert module_version(venv, "swarmtool") == "1.0"


def test_remove(pip: PipManager, venv: Path) -> None:
    base = pip.installed()
    pip.install({"swarmtool": "1.1", "swarmlib": "2.0"})
    pip.remove([])  # nothing to do
    pip.remove(["swarmtool"])
    assert pip.installed() == {**base, "swarmlib": "2.0"}
    assert module_version(venv, "swarmtool") == "(not importable)"


def test_dependencies_an_install_pulls_in_show_in_installed_and_can_be_rolled_back(
        pip: PipManager, venv: Path) -> None:
    before = pip.installed()
    pip.install({"swarmapp": "1.0"})
    after = pip.installed()
    new = {n: v for n, v in after.items() if n not in before}
    assert new == {"swarmapp": "1.0", "swarmlib": "2.0"}  # the newest that satisfies >=1.0
    pip.remove(sorted(new))
    assert pip.installed() == before
    assert module_version(venv, "swarmlib") == "(not importable)"


def test_names_are_canonical(pip: PipManager, venv: Path) -> None:
    assert canonicalize_name("Swarm_Odd.Name") == "swarm-odd-name"
    assert canonicalize_name("a--b__C..d") == "a-b-c-d"
    pip.install({"SWARM-odd_name": "0.3"})  # pip takes any spelling
    assert pip.installed()["swarm-odd-name"] == "0.3"
    assert module_version(venv, "swarm_odd_name") == "0.3"
    pip.remove(["swarm.odd.name"])
    assert "swarm-odd-name" not in pip.installed()


def test_unknown_version_is_a_one_line_error_naming_the_package(pip: PipManager) -> None:
    with pytest.raises(PackageError) as err:
        pip.install({"swarmtool": "9.9"})
    msg = str(err.value)
    assert "\n" not in msg and "swarmtool==9.9" in msg
    assert msg.startswith(f"{pip.python} -m pip install failed (exit 1): ")
    assert "from versions: 1.0, 1.1" in msg  # pip's first ERROR line, the useful one
    assert "swarmtool" not in pip.installed()


def test_unknown_package_is_a_one_line_error(pip: PipManager) -> None:
    with pytest.raises(PackageError) as err:
        pip.install({"no-such-swarm-package": "1.0"})
    assert "\n" not in str(err.value) and "no-such-swarm-package" in str(err.value)


def test_missing_python_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere/bin/python"
    with pytest.raises(PackageError) as err:
        PipManager(missing)
    assert "\n" not in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(PackageError, match="bin/python does not exist"):
        PipManager(tmp_path)  # a directory that is not a virtualenv
    plain = tmp_path / "python"
    plain.write_text("")
    with pytest.raises(PackageError, match="not executable"):
        PipManager(plain)


def test_environment_without_pip_fails_at_refresh(tmp_path: Path) -> None:
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   env=_isolated_env(), check=True, capture_output=True, timeout=60)
    mgr = PipManager(venv)
    with pytest.raises(PackageError) as err:
        mgr.refresh()
    msg = str(err.value)
    assert "\n" not in msg and "No module named pip" in msg
    assert msg.startswith(f"{venv}/bin/python -m pip --version failed (exit 1): ")


def fake_python(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "fake-python"
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(0o755)
    return p


def test_garbage_from_pip_list_is_a_package_error(tmp_path: Path) -> None:
    mgr = PipManager(fake_python(tmp_path, "echo 'Traceback (most recent call last):'"))
    with pytest.raises(PackageError, match=r"^pip list: not JSON: Traceback"):
        mgr.installed()
    mgr = PipManager(fake_python(tmp_path, 'echo \'{"name": "x"}\''))
    with pytest.raises(PackageError, match="unexpected JSON"):
        mgr.candidates()


def test_a_hung_pip_times_out(tmp_path: Path) -> None:
    mgr = PipManager(fake_python(tmp_path, "exec sleep 30"), timeout=0.5)
    with pytest.raises(PackageError, match=r"-m pip install: timed out after 0.5s$"):
        mgr.install({"swarmtool": "1.0"})


def test_audit_repair_and_reboot_required_have_nothing_to_do(pip: PipManager) -> None:
    pip.install({"swarmtool": "1.1"})
    assert pip.audit() == "" and pip.reboot_required() == []
    pip.repair()
    assert pip.installed()["swarmtool"] == "1.1"


def test_pip_environment_in_the_runbook_held_updated_and_rolled_back(
        venv: Path, wheelhouse: Path, tmp_path: Path) -> None:
    """A workload environment as the runbook sees it: holds, a failing health gate rolled
    back (the dependency the update pulled in removed again), then a good run."""
    from swarm_maint.config import config_from_dict
    from swarm_maint.store import Store
    from swarm_maint.updates.service import UpdateService

    extra = tmp_path / "more-wheels"
    build_wheel(extra, "swarmtool", "1.2", requires=["swarmextra>=1.0"])
    build_wheel(extra, "swarmextra", "1.0")
    PipManager(venv, find_links=[str(wheelhouse)]).install(
        {"swarmtool": "1.0", "swarmapp": "1.0", "swarmlib": "1.0"})
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "ray.yaml").write_text("workers: 4\n")
    gate = [str(venv / "bin/python"), "-c",
            "import sys, swarmtool; sys.exit(2 if swarmtool.VERSION == '1.2' else 0)"]

    def service(with_gate: bool) -> tuple[UpdateService, Store]:
        cfg = config_from_dict({
            "agent": {"state_dir": str(tmp_path / "state")},
            "backup": {"config_snapshots": {"paths": [str(etc)]}},
            "monitoring": {"collectors": ["cpu"]},
            "health": {"families": [], "custom": [{"name": "ray-env", "command": gate}]
                       if with_gate else []},
            "updates": {"apt": False, "min_age": "0s", "gate_settle": "0s",
                        "pip": [{"name": "ray", "python": str(venv),
                                 "find_links": [str(wheelhouse), str(extra)],
                                 "holds": ["swarmlib"]}]},
        })
        store = Store(tmp_path / "state" / "state.db")
        return UpdateService(cfg, store), store

    svc, store = service(with_gate=True)
    try:
        plan = {i.name: i for i in svc.plan()}
        assert {n: (i.manager, i.candidate, i.skip_reason) for n, i in plan.items()} == {
            "swarmtool": ("ray", "1.2", None),
            "swarmlib": ("ray", "2.0", "held: pinned for the workload (updates.pip holds); "
                         "moves only in a driver update (update apply --driver)"),
        }
        run = svc.apply(list(plan.values()), "routine")
    finally:
        store.close()
    assert run.status == "failed" and run.error is not None and "ray-env CRITICAL" in run.error
    rollback = next(s for s in run.steps if s.step == "rollback")
    assert rollback.detail == "ray: swarmtool → 1.0, swarmextra removed"
    pm = PipManager(venv, find_links=[str(wheelhouse)])
    assert "swarmextra" not in pm.installed() and module_version(venv, "swarmtool") == "1.0"

    svc, store = service(with_gate=False)
    try:
        run = svc.apply(svc.plan(), "routine")
    finally:
        store.close()
    assert run.status == "succeeded", run.error
    assert module_version(venv, "swarmtool") == "1.2" and pm.installed()["swarmlib"] == "1.0"
