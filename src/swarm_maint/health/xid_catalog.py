"""What each NVIDIA XID code means for the node: a short title, a description, the
recommended action (from ``check.ACTIONS``) and the severity of one occurrence.

Sources: NVIDIA's XID error catalogue and the GPU deployment/debug guides; the texts
below are our own summaries. Codes not listed are ``investigate``/WARNING.

XID 154 ("GPU recovery action changed") carries the action the driver wants in the line
itself; ``classify()`` reads it from there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .check import ACTIONS, Status

__all__ = ["ACTION_PHRASES", "CATALOG", "XidInfo", "classify", "lookup"]


@dataclass(frozen=True)
class XidInfo:
    code: int
    title: str  # a few words, for one-line messages
    description: str
    action: str  # one of check.ACTIONS
    severity: Status  # "WARNING" or "CRITICAL"


def _x(code: int, title: str, description: str, action: str, severity: Status) -> XidInfo:
    assert action in ACTIONS, action
    return XidInfo(code, title, description, action, severity)


_W: Status = "WARNING"
_C: Status = "CRITICAL"

CATALOG: dict[int, XidInfo] = {x.code: x for x in (
    _x(8, "GPU stopped responding to a channel",
       "A channel timed out: usually a hung or misbehaving application, sometimes the "
       "driver. Restart the job; investigate if it repeats.", "restart_workload", _W),
    _x(13, "graphics engine exception",
       "A kernel hit an exception in the graphics/compute engine (illegal instruction or "
       "address, warp error). Almost always an application bug; restart the workload.",
       "restart_workload", _W),
    _x(31, "GPU memory page fault",
       "The memory management unit caught an access to an invalid address. Normally an "
       "application bug (out-of-bounds access); restart the workload.",
       "restart_workload", _W),
    _x(32, "corrupted push buffer stream",
       "The driver received an invalid command stream: the application, the driver or a "
       "PCIe problem. Investigate, especially together with PCIe replays.",
       "investigate", _W),
    _x(38, "driver firmware error",
       "The driver detected an error in the GPU firmware. Reset the GPU; if it comes "
       "back, update the driver or service the board.", "reset_gpu", _W),
    _x(43, "GPU stopped processing",
       "The GPU stopped the channel of a faulting application; other work is not "
       "affected. Restart the workload.", "restart_workload", _W),
    _x(45, "preemptive channel cleanup",
       "The driver tore down a channel after an earlier error or because the process "
       "was killed. Usually a follow-up of another XID; restart the workload.",
       "restart_workload", _W),
    _x(48, "double-bit ECC error",
       "An uncorrectable (double-bit) ECC error in device memory. Data on the GPU may be "
       "corrupt: drain the node, then reset the GPU so the page is retired or the row "
       "remapped.", "reset_gpu", _C),
    _x(61, "internal micro-controller breakpoint",
       "An on-board micro-controller reported an internal warning. Reset the GPU when it "
       "is idle; report to the vendor if it repeats.", "reset_gpu", _W),
    _x(62, "internal micro-controller halt",
       "An on-board micro-controller halted; the GPU is not reliable until it is reset.",
       "reset_gpu", _C),
    _x(63, "ECC page retirement or row remap recorded",
       "The GPU recorded a memory page retirement or a row remapping after ECC errors. "
       "It takes effect at the next GPU reset: reset the GPU when it is idle.",
       "reset_gpu", _W),
    _x(64, "ECC page retirement or row remap failed",
       "The GPU could not record a page retirement or row remapping. Reset the GPU; if "
       "the failure repeats the board needs service.", "reset_gpu", _C),
    _x(68, "video decoder exception",
       "The NVDEC video decoder raised an exception, normally caused by the "
       "application's input. Restart the workload.", "restart_workload", _W),
    _x(69, "graphics engine class error",
       "The graphics engine rejected a method of the running application. Restart the "
       "workload.", "restart_workload", _W),
    _x(74, "NVLink error",
       "An NVLink link reported a fatal error; peer-to-peer traffic over it is broken. "
       "Reset the GPUs on that link; service the link if it repeats.", "reset_gpu", _C),
    _x(79, "GPU fell off the bus",
       "The GPU no longer answers on PCIe. Nothing short of a node reboot recovers it; "
       "if it repeats, check power, cooling and the riser/baseboard.", "reboot", _C),
    _x(92, "high single-bit ECC error rate",
       "Correctable ECC errors arrive at an unusual rate. The data is still correct, "
       "but watch the board: it may be degrading.", "investigate", _W),
    _x(94, "contained ECC error",
       "An uncorrectable ECC error was contained to the applications using the affected "
       "memory; those were stopped. Restart the workload; the GPU keeps working.",
       "restart_workload", _W),
    _x(95, "uncontained ECC error",
       "An uncorrectable ECC error could not be contained: every application on the GPU "
       "is affected. Drain the node and reset the GPU.", "reset_gpu", _C),
    _x(109, "context switch timeout",
       "A context switch did not finish in time: usually a hung application, sometimes "
       "a driver issue. Restart the workload.", "restart_workload", _W),
    _x(119, "GSP RPC timeout",
       "The GPU System Processor stopped answering the driver. The GPU is unusable "
       "until the node is rebooted (a GPU reset is not always enough).", "reboot", _C),
    _x(120, "GSP error",
       "The GPU System Processor reported an internal error. Reboot the node; update "
       "the driver if it repeats.", "reboot", _C),
    _x(121, "C2C link error",
       "The chip-to-chip link between CPU and GPU (Grace Hopper) reported an error. "
       "Reset the GPU; service the module if it repeats.", "reset_gpu", _C),
    _x(140, "unrecovered ECC error",
       "The driver found an ECC error it could not recover from in GPU memory. Drain "
       "the node and reset the GPU.", "reset_gpu", _C),
    _x(143, "GPU initialization failure",
       "The GPU failed to initialise. Reboot the node; if it fails again the board "
       "needs service.", "reboot", _C),
    _x(154, "GPU recovery action changed",
       "The driver announced the recovery the GPU now needs (reset, reboot, or drain); "
       "the action is taken from the message.", "investigate", _W),
)}

ACTION_PHRASES: dict[str, str] = {
    "none": "no action needed",
    "investigate": "investigate",
    "restart_workload": "restart the workload",
    "reset_gpu": "reset the GPU",
    "drain_node": "drain the node",
    "reboot": "reboot the node",
    "replace_hardware": "replace the GPU",
}

# XID 154: "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"
_RECOVERY = re.compile(r"recovery action changed from .*? to (0x[0-9a-fA-F]+)\s*\(([^)]*)\)",
                       re.IGNORECASE)
_RECOVERY_ACTIONS: tuple[tuple[str, str, Status], ...] = (
    ("none", "none", "WARNING"),
    ("reboot", "reboot", "CRITICAL"),
    ("drain and reset", "reset_gpu", "CRITICAL"),
    ("reset", "reset_gpu", "CRITICAL"),
    ("drain", "drain_node", "CRITICAL"),
)


def lookup(code: int) -> XidInfo:
    """The catalogue entry of ``code``; unknown codes are investigate/WARNING."""
    info = CATALOG.get(code)
    if info is not None:
        return info
    return XidInfo(code, "unknown XID",
                   f"XID {code} is not in the catalogue: look it up in NVIDIA's XID "
                   "documentation and investigate.", "investigate", "WARNING")


def classify(code: int, line: str = "") -> XidInfo:
    """Like ``lookup`` but, for XID 154, with the action the driver asks for in ``line``."""
    info = lookup(code)
    if code != 154:
        return info
    m = _RECOVERY.search(line)
    if not m:
        return info
    wanted = m.group(2).strip().lower()
    for key, action, severity in _RECOVERY_ACTIONS:
        if key in wanted:
            if action == "none":
                return XidInfo(code, f"{info.title}: {m.group(2).strip()}",
                               info.description, "none", "WARNING")
            return XidInfo(code, f"{info.title}: {m.group(2).strip()}", info.description,
                           action, severity)
    return info
