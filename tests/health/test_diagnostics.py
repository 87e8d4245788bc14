"""Active diagnostics (level 2): which are created on this machine, the dcgmi JSON
parser on captured samples, and both checks' subprocess paths through stand-in tools."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from swarm_maint.config import HealthConfig
from swarm_maint.health.check import FrameSamples, HealthContext
from swarm_maint.health.checks import diagnostics
from swarm_maint.monitoring.hub import Frame

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "health"


def make_ctx() -> HealthContext:
    return HealthContext(config=HealthConfig(),
                         frame=lambda: FrameSamples(Frame(0.0, (), 0)))


def test_created_only_where_the_tools_exist() -> None:
    made = {c.name: c for c in diagnostics.create(make_ctx())}
    has_dcgmi = shutil.which("dcgmi") is not None
    has_torch_gpu = (importlib.util.find_spec("torch") is not None
                     and Path("/dev/nvidiactl").exists())
    assert ("dcgm_diag" in made) == has_dcgmi
    assert ("gpu_burn_in" in made) == has_torch_gpu
    if not has_dcgmi and not has_torch_gpu:
        assert made == {}
    assert all(c.level == 2 for c in made.values())


def test_create_with_injected_tools(tmp_path: Path) -> None:
    made = diagnostics.create(make_ctx(), dcgmi=str(FIXTURES / "dcgmi"),
                              torch_gpu=lambda: True)
    assert [(c.name, c.level) for c in made] == [("dcgm_diag", 2), ("gpu_burn_in", 2)]
    dcgm = made[0]
    assert dcgm.interval == 3600.0
    assert dcgm.timeout == 600.0  # generous, but at most ten minutes
    names = [c.name for c in diagnostics.create(make_ctx(), torch_gpu=lambda: False)]
    assert names == (["dcgm_diag"] if shutil.which("dcgmi") else [])


def test_parse_passing_sample() -> None:
    doc = json.loads((FIXTURES / "dcgm_diag_r1_pass.json").read_text())
    rows = diagnostics.parse_dcgm_diag(doc)
    assert len(rows) == 9
    assert rows[0] == {"category": "Deployment", "test": "Denylist", "gpu": None,
                       "status": "pass", "warnings": []}
    result = diagnostics.judge_dcgm(doc)
    assert result.status == "OK"
    assert result.message == "all 9 DCGM diagnostic result(s) passed"


def test_parse_failing_sample() -> None:
    doc = json.loads((FIXTURES / "dcgm_diag_r2_fail.json").read_text())
    rows = diagnostics.parse_dcgm_diag(doc)
    assert {r["category"] for r in rows} == {"Deployment", "Integration", "Hardware", "Stress"}
    mem = [r for r in rows if r["test"] == "GPU Memory" and r["gpu"] == "3"]
    assert mem[0]["status"] == "fail"
    assert "4 memory mismatches" in mem[0]["warnings"][0]

    result = diagnostics.judge_dcgm(doc)
    assert result.status == "CRITICAL"
    assert result.action == "replace_hardware"  # a hardware-category failure
    assert result.details["failed"] == ["Page Retirement/Row Remap", "GPU Memory (GPU 3)"]
    assert "Page Retirement/Row Remap failed: GPU 3 had uncorrectable" in result.message
    assert "GPU Memory (GPU 3) failed" in result.message
    assert "PCIe" not in result.message  # a warning, below the failures


def test_parse_dcgm4_entity_results_and_garbage() -> None:
    doc = {"DCGM Diagnostic": {"test_categories": [{"category": "Integration", "tests": [
        {"name": "pcie", "results": [
            {"entity_group": "GPU", "entity_id": 1, "status": "Warn",
             "warnings": ["GPU 1 PCIe replay count 120 above the threshold"]}]}]}]}}
    result = diagnostics.judge_dcgm(doc)
    assert (result.status, result.action) == ("WARNING", "investigate")
    assert "pcie (GPU 1) warned: GPU 1 PCIe replay count 120" in result.message
    assert diagnostics.judge_dcgm({"error": "x"}).status == "UNKNOWN"
    assert diagnostics.parse_dcgm_diag(["not", "a", "dict"]) == []


@pytest.mark.parametrize(("sample", "exit_code", "status"), [
    ("dcgm_diag_r1_pass.json", 0, "OK"),
    ("dcgm_diag_r2_fail.json", 226, "CRITICAL"),
])
def test_dcgm_diag_runs_dcgmi(monkeypatch: pytest.MonkeyPatch, sample: str, exit_code: int,
                              status: str) -> None:
    monkeypatch.setenv("FAKE_DCGMI_OUTPUT", str(FIXTURES / sample))
    monkeypatch.setenv("FAKE_DCGMI_EXIT", str(exit_code))
    check = diagnostics.DcgmDiagCheck(make_ctx(), str(FIXTURES / "dcgmi"))
    assert check.run().status == status


def test_dcgm_diag_without_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.txt"
    out.write_text("Error: unable to establish a connection to the specified host: "
                   "localhost\n")
    monkeypatch.setenv("FAKE_DCGMI_OUTPUT", str(out))
    monkeypatch.setenv("FAKE_DCGMI_EXIT", "255")
    result = diagnostics.DcgmDiagCheck(make_ctx(), str(FIXTURES / "dcgmi")).run()
    assert result.status == "UNKNOWN"
    assert result.message.startswith("dcgmi diag gave no JSON result: Error: unable to "
                                     "establish a connection")


def fake_python(tmp_path: Path, doc: object) -> str:
    """An interpreter stand-in that prints a burn-in result, to exercise the parsing."""
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\necho 'progress line'\necho '{json.dumps(doc)}'\n")
    path.chmod(0o755)
    return str(path)


def test_gpu_burn_in_result_handling(tmp_path: Path) -> None:
    good = {"error": None, "gpus": {"0": {"name": "NVIDIA H100", "problems": []},
                                    "1": {"name": "NVIDIA H100", "problems": []}}}
    check = diagnostics.GpuBurnInCheck(make_ctx(), seconds=1,
                                       python=fake_python(tmp_path, good))
    r = check.run()
    assert (r.status, r.message) == ("OK", "2 GPU(s) computed and stored correctly")

    bad = {"error": None, "gpus": {"0": {"problems": []}, "1": {
        "problems": ["matmul differs from the CPU reference (relative error 3.1e-01)"]}}}
    check = diagnostics.GpuBurnInCheck(make_ctx(), seconds=1,
                                       python=fake_python(tmp_path, bad))
    r = check.run()
    assert (r.status, r.action) == ("CRITICAL", "drain_node")
    assert r.message.startswith("GPU 1: matmul differs from the CPU reference")

    nocuda = {"error": "CUDA is not available to PyTorch", "gpus": {}}
    check = diagnostics.GpuBurnInCheck(make_ctx(), seconds=1,
                                       python=fake_python(tmp_path, nocuda))
    assert check.run().status == "UNKNOWN"


def test_gpu_burn_in_script_without_torch() -> None:
    """The real script on this interpreter: without torch it reports why, as JSON."""
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: the script would load the GPUs")
    r = diagnostics.GpuBurnInCheck(make_ctx(), seconds=1).run()
    assert r.status == "UNKNOWN"
    assert r.message == "GPU burn-in: ModuleNotFoundError: No module named 'torch'"


@pytest.mark.parametrize("level", [1, 2])
def test_dcgm_diag_level_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     level: int) -> None:
    args = tmp_path / "args"
    monkeypatch.setenv("FAKE_DCGMI_OUTPUT", str(FIXTURES / "dcgm_diag_r1_pass.json"))
    monkeypatch.setenv("FAKE_DCGMI_ARGS", str(args))
    ctx = HealthContext(config=HealthConfig(dcgm_diag_level=level),
                        frame=lambda: FrameSamples(Frame(0.0, (), 0)))
    assert diagnostics.DcgmDiagCheck(ctx, str(FIXTURES / "dcgmi")).run().status == "OK"
    assert args.read_text().split() == ["diag", "-r", str(level), "-j"]
