"""The ``gpu_xid`` check: NVIDIA XID errors in the kernel log within ``health.xid_window``.

The XID tracker (``ctx.xids``) reads the kernel log continuously; this check judges what
it recorded in the window: per GPU, the most severe XID (from the catalogue) decides the
status and the recommended action. XIDs older than the window no longer count.
"""

from __future__ import annotations

from typing import Any

from ..check import CheckResult, FrameSamples, HealthCheck, HealthContext, Status, worst
from ..xid_catalog import ACTION_PHRASES, classify

__all__ = ["XidCheck", "create"]

_SEVERITY = {"WARNING": 1, "CRITICAL": 2}
_ACTION_RANK = {a: i for i, a in enumerate(
    ("none", "investigate", "restart_workload", "reset_gpu", "drain_node", "reboot",
     "replace_hardware"))}


def _human_window(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


class XidCheck:
    name = "gpu_xid"
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self.ctx = ctx
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def _unavailable(self) -> CheckResult:
        err = self.ctx.extras.get("kernel_log_error")
        if not err:
            return CheckResult(self.name, "UNKNOWN", "no kernel log source configured",
                               "investigate")
        text = str(err)
        prefix = f"{self.ctx.config.kernel_log}: "
        if text.startswith(prefix) and text[len(prefix):].startswith("cannot"):
            text = text[len(prefix):]  # the source's own message already names the path
        elif not text.startswith("cannot"):
            text = f"cannot read {text}"
        return CheckResult(self.name, "UNKNOWN", text, "investigate",
                           {"kernel_log": self.ctx.config.kernel_log})

    def _gpu_indexes(self) -> dict[str, str]:
        """PCI bus id (upper case) -> GPU index, from the latest metrics frame."""
        try:
            frame: FrameSamples = self.ctx.frame()
        except Exception:  # no frame yet: name GPUs by PCI address only
            return {}
        out: dict[str, str] = {}
        for labels, _v in frame.get("swarm_gpu_lost"):
            if labels.get("pci_bus_id"):
                out[labels["pci_bus_id"].upper()] = labels.get("gpu", "")
        return out

    def run(self) -> CheckResult:
        tracker: Any = self.ctx.xids
        if tracker is None:
            return self._unavailable()
        window = float(tracker.window)
        events = tracker.recent()
        if not events:
            err = getattr(tracker, "last_error", None)
            if err:
                return CheckResult(self.name, "UNKNOWN", f"cannot read the kernel log: {err}",
                                   "investigate")
            return CheckResult(self.name, "OK",
                               f"no XID in the last {_human_window(window)}",
                               details={"window": window, "xids": []})
        groups: dict[tuple[str, int], dict[str, Any]] = {}
        for ev in events:
            g = groups.setdefault((ev.pci_bus_id, ev.code),
                                  {"count": 0, "last_seen": ev.ts, "line": ev.line})
            g["count"] += 1
            if ev.ts >= g["last_seen"]:
                g["last_seen"] = ev.ts
                g["line"] = ev.line
        indexes = self._gpu_indexes()
        rows: list[dict[str, Any]] = []
        per_gpu: dict[str, list[dict[str, Any]]] = {}
        for (pci, code), g in sorted(groups.items()):
            info = classify(code, g["line"])
            row = {"pci_bus_id": pci, "gpu": indexes.get(pci.upper()), "code": code,
                   "count": g["count"], "last_seen": g["last_seen"], "title": info.title,
                   "description": info.description, "action": info.action,
                   "severity": info.severity}
            rows.append(row)
            per_gpu.setdefault(pci, []).append(row)
        findings: list[tuple[Status, str, str | None]] = []
        for pci, gpu_rows in per_gpu.items():
            top = max(gpu_rows, key=lambda r: (_SEVERITY[r["severity"]],
                                               _ACTION_RANK.get(r["action"], 0), r["count"]))
            index = top["gpu"]
            who = f"GPU {index} ({pci})" if index else f"GPU {pci}"
            phrase = ACTION_PHRASES.get(top["action"], top["action"])
            if top["code"] in (48, 95, 140):
                phrase = "drain the node and reset the GPU"
            msg = (f"{who}: Xid {top['code']} ({top['title']}) x{top['count']} in the last "
                   f"{_human_window(window)}: {phrase}")
            others = len(gpu_rows) - 1
            if others:
                msg += f" (+{others} other XID code{'s' if others > 1 else ''})"
            action = None if top["action"] == "none" else top["action"]
            findings.append((top["severity"], msg, action))
        status, message, action = worst(findings)
        return CheckResult(self.name, status, message, action,
                           {"window": window, "xids": rows})


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [XidCheck(ctx)]
