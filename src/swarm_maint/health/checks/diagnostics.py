"""Active GPU diagnostics (level 2): they load the GPUs, so the runner starts them only on
demand or while the node is idle or drained.

``dcgm_diag`` runs NVIDIA DCGM's ``dcgmi diag -r 1 -j`` and reports the tests that failed;
``gpu_burn_in`` runs a short matmul and memory pattern test through PyTorch in a child
process (a hung CUDA call cannot be interrupted inside the agent, a child can be killed),
comparing GPU results with a CPU reference. Each is created only where its tool exists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..check import CheckResult, HealthCheck, HealthContext, Status, worst

__all__ = ["BURN_IN_SCRIPT", "DcgmDiagCheck", "GpuBurnInCheck", "create", "judge_dcgm",
           "parse_dcgm_diag", "run_group"]

_MAX_TIMEOUT = 600.0
# what a failed test in each DCGM category points at
_CATEGORY_ACTION = {"deployment": "investigate", "integration": "drain_node",
                    "hardware": "replace_hardware", "stress": "drain_node",
                    "performance": "drain_node"}


def run_group(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr); the command runs in its own process
    group, which is killed as a whole when it overruns."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild left the group and holds a pipe
            proc.kill()
            proc.wait()
            out, err = b"", b""
        rc = None
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


# -- dcgm_diag ----------------------------------------------------------------------------

def _find_categories(doc: Any) -> list[dict[str, Any]]:
    """The ``test_categories`` list wherever the DCGM version puts it."""
    if isinstance(doc, dict):
        cats = doc.get("test_categories")
        if isinstance(cats, list):
            return [c for c in cats if isinstance(c, dict)]
        for value in doc.values():
            found = _find_categories(value)
            if found:
                return found
    return []


def _warning_texts(result: dict[str, Any]) -> list[str]:
    out = []
    for w in result.get("warnings") or []:
        if isinstance(w, dict):
            out.append(str(w.get("warning") or w.get("message") or ""))
        elif w:
            out.append(str(w))
    return [t.strip() for t in out if t and t.strip()]


def parse_dcgm_diag(doc: Any) -> list[dict[str, Any]]:
    """One row per test result: category, test, gpu (None for node-wide tests), status
    (pass, fail, warn, skip, …, lower case) and the warnings' text."""
    rows: list[dict[str, Any]] = []
    for cat in _find_categories(doc):
        category = str(cat.get("category", ""))
        for test in cat.get("tests") or []:
            if not isinstance(test, dict):
                continue
            results = test.get("results") or []
            for res in results:
                if not isinstance(res, dict):
                    continue
                gpu = res.get("gpu_ids", res.get("gpu_id", res.get("entity_id")))
                rows.append({"category": category, "test": str(test.get("name", "?")),
                             "gpu": None if gpu in (None, "") else str(gpu),
                             "status": str(res.get("status", "")).strip().lower(),
                             "warnings": _warning_texts(res)})
    return rows


def judge_dcgm(doc: Any, name: str = "dcgm_diag") -> CheckResult:
    rows = parse_dcgm_diag(doc)
    if not rows:
        return CheckResult(name, "UNKNOWN", "dcgmi diag returned no test results", None,
                           {"raw": doc if isinstance(doc, dict) else None})
    findings: list[tuple[Status, str, str | None]] = []
    failed: list[str] = []
    for r in rows:
        if r["status"] not in {"fail", "warn"}:
            continue
        where = f"{r['test']}" + (f" (GPU {r['gpu']})" if r["gpu"] is not None else "")
        why = f": {r['warnings'][0]}" if r["warnings"] else ""
        if r["status"] == "fail":
            failed.append(where)
            findings.append(("CRITICAL", f"{where} failed{why}",
                             _CATEGORY_ACTION.get(r["category"].lower(), "drain_node")))
        else:
            findings.append(("WARNING", f"{where} warned{why}", "investigate"))
    details = {"results": rows, "failed": failed}
    status, msg, action = worst(findings)
    if status == "OK":
        return CheckResult(name, "OK", f"all {len(rows)} DCGM diagnostic result(s) passed",
                           None, details)
    advice = ("drain the node and rerun `dcgmi diag -r 3` before returning it to service"
              if status == "CRITICAL" else "review the DCGM warnings")
    return CheckResult(name, status, f"DCGM diagnostics: {msg}; {advice}", action, details)


class DcgmDiagCheck:
    name = "dcgm_diag"
    level = 2

    def __init__(self, ctx: HealthContext, dcgmi: str, run_level: int | None = None) -> None:
        self._dcgmi = dcgmi
        self._run_level = run_level if run_level is not None else ctx.config.dcgm_diag_level
        self.interval = ctx.config.full_interval
        self.timeout = min(_MAX_TIMEOUT, max(ctx.config.timeout, ctx.config.full_interval))

    def run(self) -> CheckResult:
        argv = [self._dcgmi, "diag", "-r", str(self._run_level), "-j"]
        try:
            rc, out, err = run_group(argv, max(1.0, self.timeout - 5.0))
        except OSError as exc:
            return CheckResult(self.name, "UNKNOWN", f"cannot run dcgmi: {exc}")
        if rc is None:
            return CheckResult(self.name, "UNKNOWN",
                               f"dcgmi diag timed out after {self.timeout - 5.0:g}s")
        start = out.find("{")
        try:
            doc = json.loads(out[start:]) if start >= 0 else None
        except ValueError:
            doc = None
        if doc is None:
            first = next((ln.strip() for ln in (out + "\n" + err).splitlines() if ln.strip()),
                         f"exit code {rc}")
            return CheckResult(self.name, "UNKNOWN",
                               f"dcgmi diag gave no JSON result: {first} (is nv-hostengine "
                               "running?)", None, {"exit_code": rc})
        return judge_dcgm(doc, self.name)


# -- gpu_burn_in --------------------------------------------------------------------------

BURN_IN_SCRIPT = r"""
import json, sys, time
seconds = float(sys.argv[1])
out = {"gpus": {}, "error": None}
try:
    import torch
    if not torch.cuda.is_available():
        out["error"] = "CUDA is not available to PyTorch"
        print(json.dumps(out)); sys.exit(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n_gpus = torch.cuda.device_count()
    per_gpu = max(1.0, seconds / max(1, n_gpus))
    for idx in range(n_gpus):
        dev = torch.device("cuda", idx)
        res = {"name": torch.cuda.get_device_name(idx), "problems": []}
        try:
            g = torch.Generator().manual_seed(1234 + idx)
            a = torch.randn(1024, 1024, generator=g, dtype=torch.float32)
            b = torch.randn(1024, 1024, generator=g, dtype=torch.float32)
            ref = (a.double() @ b.double())
            got = (a.to(dev) @ b.to(dev)).double().cpu()
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            res["matmul_rel_error"] = err
            if not err < 1e-4:
                res["problems"].append(f"matmul differs from the CPU reference "
                                       f"(relative error {err:.2e})")
            big_a = torch.randn(4096, 4096, device=dev)
            big_b = torch.randn(4096, 4096, device=dev)
            first = big_a @ big_b
            iters = 0
            t_end = time.monotonic() + per_gpu * 0.7
            while time.monotonic() < t_end:
                again = big_a @ big_b
                iters += 1
                if iters % 8 == 0 and not torch.allclose(again, first, rtol=1e-5, atol=1e-4):
                    res["problems"].append("repeated matmul gave different results")
                    break
            torch.cuda.synchronize(dev)
            res["matmul_iterations"] = iters
            free, _total = torch.cuda.mem_get_info(dev)
            n = int(min(1 << 30, free // 4) // 4)
            pattern = torch.arange(n, dtype=torch.int32, device=dev) * 1103515245
            for step in range(2):
                buf = pattern if step == 0 else torch.bitwise_not(pattern)
                check = buf.clone()
                torch.cuda.synchronize(dev)
                bad = int((check != buf).sum().item())
                if bad:
                    res["problems"].append(f"{bad} memory words read back wrong")
                    break
            res["memory_tested_bytes"] = n * 4
            del pattern, big_a, big_b, first
            torch.cuda.empty_cache()
        except Exception as exc:
            res["problems"].append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        out["gpus"][str(idx)] = res
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print(json.dumps(out))
"""


class GpuBurnInCheck:
    name = "gpu_burn_in"
    level = 2

    def __init__(self, ctx: HealthContext, seconds: float = 10.0,
                 python: str = sys.executable) -> None:
        self._seconds = seconds
        self._python = python
        self.interval = ctx.config.full_interval
        self.timeout = min(_MAX_TIMEOUT, seconds + 120.0)

    def run(self) -> CheckResult:
        try:
            rc, out, err = run_group([self._python, "-c", BURN_IN_SCRIPT, str(self._seconds)],
                                     self.timeout - 5.0)
        except OSError as exc:
            return CheckResult(self.name, "UNKNOWN", f"cannot start the burn-in: {exc}")
        if rc is None:
            return CheckResult(self.name, "CRITICAL",
                               f"GPU burn-in hung for {self.timeout - 5.0:g}s (a GPU stopped "
                               "answering): reset the GPUs or reboot", "reset_gpu")
        try:
            doc = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            last = (err.strip().splitlines() or [f"exit code {rc}"])[-1]
            return CheckResult(self.name, "UNKNOWN", f"GPU burn-in failed to run: {last}")
        if doc.get("error"):
            return CheckResult(self.name, "UNKNOWN", f"GPU burn-in: {doc['error']}", None,
                               doc)
        findings: list[tuple[Status, str, str | None]] = []
        for idx, res in sorted(doc.get("gpus", {}).items()):
            for problem in res.get("problems", []):
                findings.append(("CRITICAL", f"GPU {idx}: {problem}", "drain_node"))
        status, msg, action = worst(findings)
        if status == "OK":
            return CheckResult(self.name, "OK",
                               f"{len(doc.get('gpus', {}))} GPU(s) computed and stored "
                               "correctly", None, doc)
        return CheckResult(self.name, status, f"{msg}: drain the node; reset the GPU and "
                           "rerun, replace it if it fails again", action, doc)


def _torch_gpu_possible() -> bool:
    """torch is installed and the node has an NVIDIA device (checked without importing
    torch into the agent: the burn-in itself reports when CUDA is unusable)."""
    return (importlib.util.find_spec("torch") is not None
            and Path("/dev/nvidiactl").exists())


def create(ctx: HealthContext, dcgmi: str | None = None,
           torch_gpu: Callable[[], bool] = _torch_gpu_possible) -> list[HealthCheck]:
    checks: list[HealthCheck] = []
    path = dcgmi or shutil.which("dcgmi")
    if path is not None:
        checks.append(DcgmDiagCheck(ctx, path))
    if torch_gpu():
        checks.append(GpuBurnInCheck(ctx))
    return checks
