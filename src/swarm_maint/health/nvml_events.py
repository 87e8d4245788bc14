"""XIDs from NVML events, as a kernel log source; and a source that reads several at once.

``NvmlXidSource`` implements ``xid.KernelLogSource``: it registers every GPU for
``nvmlEventTypeXidCriticalError`` and turns each event into a synthetic kernel-log line

    NVRM: Xid (PCI:00000000:17:00.0): 79, reported by NVML event

that ``xid.parse_xid`` understands, so ``XidTracker`` consumes it unchanged. NVML events
are not replayable (an event is delivered once, to the sets registered when it happened),
so the position is only a counter of the events read; each line's key is
``<counter>:<time_ns>``, unique across restarts.

``MultiSource`` reads several sources (the kernel log and NVML) as one. An XID reaches
both: the driver logs it and NVML raises an event. So an XID of the same GPU and code seen
by two different sources within ``dedup_window`` seconds (2 s) is recorded once: the first
one read is kept, the other dropped. Each line of one source is a distinct occurrence
(two ``Xid 13`` lines are two errors), and each dropped line cancels exactly one line of
another source, so two XIDs logged twice in the kernel log and raised twice by NVML still
count twice. Where the kernel log cannot be read at all, use ``NvmlXidSource`` alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from ..clock import Clock, SystemClock
from .xid import (
    MAX_LINES_PER_READ,
    KernelLogError,
    KernelLogSource,
    normalize_pci_bus_id,
    parse_xid,
)

__all__ = [
    "DEDUP_WINDOW",
    "NOT_SUPPORTED_MESSAGE",
    "MultiSource",
    "NvmlXidSource",
    "nvml_xid_line",
]

log = logging.getLogger(__name__)

NOT_SUPPORTED_MESSAGE = "NVML XID events not supported on this GPU/driver"
DEDUP_WINDOW = 2.0
"""Seconds within which one XID (GPU, code) read from two sources counts once."""


def nvml_xid_line(pci_bus_id: str, code: int) -> str:
    """The kernel-log-style line for an XID event from NVML."""
    return f"NVRM: Xid (PCI:{pci_bus_id}): {code}, reported by NVML event"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _handle_key(handle: Any) -> int | None:
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return None


class NvmlXidSource:
    """XID critical-error events of every GPU that supports them, through pynvml.

    ``library_path``: a libnvidia-ml.so.1 loaded with ``ctypes.CDLL`` before ``nvmlInit``
    (pynvml's own load then finds it by its soname), like the GPU collector's
    ``monitoring.nvml_library``. ``timeout_ms``: how long ``read_new`` waits for an event
    when none is queued (it returns after the first wait that times out).

    Raises ``KernelLogError`` when NVML cannot be initialised or no GPU supports XID
    events (``NOT_SUPPORTED_MESSAGE``).
    """

    def __init__(self, library_path: str | None = None, timeout_ms: int = 100,
                 max_events: int = MAX_LINES_PER_READ) -> None:
        self.name = "nvml"
        self.timeout_ms = timeout_ms
        self.max_events = max_events
        self._preloaded: ctypes.CDLL | None = None
        self._initialized = False
        self._event_set: Any = None
        self._pci: dict[int, str] = {}  # device handle address -> PCI bus id
        self._counter = 0
        if library_path:
            try:
                self._preloaded = ctypes.CDLL(library_path)
            except OSError as exc:
                why = "not found" if not os.path.exists(library_path) else \
                    f"cannot be loaded: {exc}"
                raise KernelLogError(f"NVML XID events: {library_path} {why}") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            raise KernelLogError(
                "NVML XID events: no NVIDIA driver (libnvidia-ml.so.1 not found)") from None
        except pynvml.NVMLError as exc:
            raise KernelLogError(f"NVML XID events: NVML init failed: {exc}") from None
        self._initialized = True
        try:
            self._register()
        except BaseException:
            self.close()
            raise

    def _register(self) -> None:
        try:
            self._event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            if exc.value in (pynvml.NVML_ERROR_NOT_SUPPORTED,
                             pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                raise KernelLogError(NOT_SUPPORTED_MESSAGE) from None
            raise KernelLogError(f"NVML XID events: cannot create an event set: {exc}") \
                from None
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            raise KernelLogError(f"NVML XID events: cannot count the GPUs: {exc}") from None
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                pci = self._query_pci(handle)
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
            except pynvml.NVMLError as exc:
                if exc.value != pynvml.NVML_ERROR_NOT_SUPPORTED:
                    log.warning("NVML XID events: GPU %d not watched: %s", index, exc)
                continue
            key = _handle_key(handle)
            if key is not None:
                self._pci[key] = pci
        if not self._pci:
            what = "no NVIDIA GPU found" if count == 0 else f"none of {count} GPU(s)"
            raise KernelLogError(f"{NOT_SUPPORTED_MESSAGE} ({what})")

    @staticmethod
    def _query_pci(handle: Any) -> str:
        info = pynvml.nvmlDeviceGetPciInfo(handle)
        with contextlib.suppress(ValueError):
            return normalize_pci_bus_id(_text(info.busId))
        return f"{int(info.domain):08X}:{int(info.bus):02X}:{int(info.device):02X}.0"

    def _pci_of(self, handle: Any) -> str | None:
        key = _handle_key(handle)
        if key is not None and key in self._pci:
            return self._pci[key]
        try:
            pci = self._query_pci(handle)
        except pynvml.NVMLError as exc:
            log.warning("NVML XID event from an unknown GPU: %s", exc)
            return None
        if key is not None:
            self._pci[key] = pci
        return pci

    def read_new(self) -> list[tuple[str, str]]:
        if self._event_set is None:
            raise KernelLogError("NVML XID events: the source is closed")
        out: list[tuple[str, str]] = []
        while len(out) < self.max_events:
            try:
                data = pynvml.nvmlEventSetWait_v2(self._event_set, self.timeout_ms)
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_TIMEOUT:
                    break
                if out:
                    break  # keep what was read; the error comes back on the next call
                raise KernelLogError(f"NVML event wait failed: {exc}") from None
            if not int(data.eventType) & pynvml.nvmlEventTypeXidCriticalError:
                continue
            pci = self._pci_of(data.device)
            if pci is None:
                continue
            self._counter += 1
            out.append((f"{self._counter}:{time.time_ns()}",
                         nvml_xid_line(pci, int(data.eventData))))
        return out

    def position(self) -> str:
        return str(self._counter)

    def seek(self, position: str) -> None:
        with contextlib.suppress(ValueError):
            self._counter = max(self._counter, int(position))

    def close(self) -> None:
        if self._event_set is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        if self._initialized:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
            self._initialized = False


@dataclass
class _Seen:
    at: float
    pci_bus_id: str
    code: int
    source: int
    matched: bool = False


class MultiSource:
    """Several kernel log sources read as one (e.g. ``FileSource`` + ``NvmlXidSource``).

    Keys are ``<source name>:<key>``; the position is a JSON object of each source's
    position. The same XID (GPU, code) read from two different sources within
    ``dedup_window`` seconds of ``clock.monotonic()`` is returned once (the first read);
    each line cancels at most one line of another source.

    A source that fails does not stop the others: its lines are missing until it works
    again, and ``read_new`` raises ``KernelLogError`` only when it has no line to return
    (so what the other sources read is never lost). ``errors`` holds the last error of
    each failing source.
    """

    def __init__(self, sources: Sequence[KernelLogSource], clock: Clock | None = None,
                 dedup_window: float = DEDUP_WINDOW, name: str | None = None) -> None:
        if not sources:
            raise ValueError("MultiSource needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be distinct: {names}")
        self.sources = list(sources)
        self.name = name or "multi[" + ",".join(names) + "]"
        self.clock: Clock = clock or SystemClock()
        self.dedup_window = dedup_window
        self.errors: dict[str, str] = {}
        self.duplicates = 0
        self._seen: list[_Seen] = []

    def _is_duplicate(self, source: int, pci: str, code: int, now: float) -> bool:
        self._seen = [s for s in self._seen if now - s.at <= self.dedup_window]
        for seen in self._seen:
            if not seen.matched and seen.source != source and seen.pci_bus_id == pci \
                    and seen.code == code:
                seen.matched = True
                return True
        self._seen.append(_Seen(now, pci, code, source))
        return False

    def read_new(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for index, source in enumerate(self.sources):
            try:
                lines = source.read_new()
            except (KernelLogError, OSError) as exc:
                msg = str(exc)
                if self.errors.get(source.name) != msg:
                    log.warning("kernel log %s: %s", source.name, msg)
                self.errors[source.name] = msg
                continue
            self.errors.pop(source.name, None)
            now = self.clock.monotonic()
            for key, line in lines:
                xid = parse_xid(line)
                if xid is not None and self._is_duplicate(index, xid[0], xid[1], now):
                    self.duplicates += 1
                    continue
                out.append((f"{source.name}:{key}", line))
        if not out and self.errors:
            raise KernelLogError("; ".join(f"{n}: {m}" for n, m in self.errors.items()))
        return out

    def position(self) -> str:
        return json.dumps({s.name: s.position() for s in self.sources}, sort_keys=True)

    def seek(self, position: str) -> None:
        try:
            positions = json.loads(position)
        except ValueError:
            return
        if not isinstance(positions, dict):
            return
        for source in self.sources:
            value = positions.get(source.name)
            if isinstance(value, str):
                source.seek(value)

    def close(self) -> None:
        for source in self.sources:
            try:
                source.close()
            except (KernelLogError, OSError) as exc:
                log.warning("kernel log %s: close failed: %s", source.name, exc)
