"""XID tracking: read the kernel log, record NVIDIA XID errors once each, count OOM kills.

Sources (``open_source(spec)``):

* ``/dev/kmsg`` (``KmsgSource``): the kernel ring buffer, record by record, non-blocking.
  Position = ``<boot_id>:<seq>``, so a restart skips what it already recorded and a
  reboot (new boot id, sequence numbers start again) does not skip the new boot's lines.
* ``journal`` (``JournalSource``): ``journalctl -k -o json --after-cursor=...``.
  Position = the journal cursor.
* any other path (``FileSource``): the file is followed like ``tail -F`` (appends,
  truncation, rotation by rename). Position = ``<inode>:<offset>``.

Every line carries a position key that is stable when the same record is read again;
``XidTracker`` stores each XID with ``source_key = <source name>:<position key>`` under a
UNIQUE constraint, together with the source position in one transaction, so an XID is
counted exactly once however often the agent restarts.

A record's time is when the agent read it (the table's ``ts``): on the first start the
whole ring buffer of the current boot is read, and XIDs from earlier in this boot count
as recent; they happened since the last reboot, which is what a reboot would clear.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric

from ..clock import Clock
from ..monitoring.collector import CollectorStatus
from ..store import Store

__all__ = [
    "FileSource",
    "JournalSource",
    "KernelLogError",
    "KernelLogSource",
    "KmsgSource",
    "OomKill",
    "XidCollector",
    "XidEvent",
    "XidTracker",
    "normalize_pci_bus_id",
    "open_source",
    "parse_kmsg_record",
    "parse_oom",
    "parse_xid",
]

log = logging.getLogger(__name__)

MAX_LINES_PER_READ = 10000
"""A source returns at most this many lines per read_new(); the rest come next poll."""


class KernelLogError(Exception):
    """A kernel log source cannot be opened or read; the message says why and what to do."""


class KernelLogSource(Protocol):
    """Where kernel log lines come from. ``read_new`` never blocks for long."""

    name: str

    def read_new(self) -> list[tuple[str, str]]:
        """The lines since the last call, as (position key, line)."""
        ...

    def position(self) -> str:
        """How far the source has been read, to persist."""
        ...

    def seek(self, position: str) -> None:
        """Continue after a position that ``position()`` returned (maybe in an earlier
        process); a position that no longer applies is ignored."""
        ...

    def close(self) -> None:
        ...


# -- parsing ----------------------------------------------------------------------------

_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{1,8}:[0-9a-fA-F]{1,2}:[0-9a-fA-F]{1,2}"
    r"(?:\.[0-7])?)\):\s*(?P<code>\d+)\b"
)
_OOM_KILLED = re.compile(r"(?:Out of memory|out of memory): Kill(?:ed)? process (\d+) \(([^)]*)\)")
_OOM_KILL = re.compile(r"\boom-kill:.*?\btask=([^,]*),pid=(\d+)")


def normalize_pci_bus_id(address: str) -> str:
    """``0000:3b:00`` / ``PCI:0000:3b:00`` / ``3b:00.0`` -> NVML's ``00000000:3B:00.0``."""
    text = address.strip().removeprefix("PCI:")
    func = "0"
    if "." in text:
        text, func = text.rsplit(".", 1)
    parts = text.split(":")
    if len(parts) == 2:
        parts.insert(0, "0")
    if len(parts) != 3:
        raise ValueError(f"not a PCI address: {address!r}")
    domain, bus, dev = (int(p, 16) for p in parts)
    return f"{domain:08X}:{bus:02X}:{dev:02X}.{int(func, 16):X}"


def parse_xid(line: str) -> tuple[str, int] | None:
    """(normalised PCI bus id, XID code) of an ``NVRM: Xid`` line, else None."""
    m = _XID.search(line)
    if not m:
        return None
    return normalize_pci_bus_id(m.group("pci")), int(m.group("code"))


@dataclass(frozen=True)
class OomKill:
    pid: int
    process: str


def parse_oom(line: str) -> OomKill | None:
    """The OOM killer's victim named in ``line`` (either of the two lines the kernel
    logs for one kill: ``oom-kill:...task=X,pid=N`` and ``Out of memory: Killed process
    N (X)``), else None. The tracker counts a pid once when both lines are present."""
    m = _OOM_KILLED.search(line)
    if m:
        return OomKill(int(m.group(1)), m.group(2))
    m = _OOM_KILL.search(line)
    if m:
        return OomKill(int(m.group(2)), m.group(1))
    return None


def parse_kmsg_record(record: str) -> tuple[int, int, str] | None:
    """``"pri,seq,ts_usec,flags[,...];message\\n KEY=value..."`` -> (seq, ts_usec,
    message) or None for something that is not a record. Continuation lines (starting
    with a space: device properties) are dropped."""
    head, sep, rest = record.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        seq = int(fields[1])
        ts = int(fields[2])
    except ValueError:
        return None
    return seq, ts, rest.split("\n", 1)[0]


# -- sources ----------------------------------------------------------------------------

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _permission_hint(path: str) -> str:
    return (f"cannot read {path}: permission denied (run the agent as root, give it "
            "CAP_SYSLOG, or set health.kernel_log to a readable file or 'journal')")


class KmsgSource:
    """``/dev/kmsg``, read record by record without blocking."""

    def __init__(self, path: str = "/dev/kmsg", boot_id: str | None = None) -> None:
        self.path = path
        self.name = "kmsg" if path == "/dev/kmsg" else f"kmsg:{path}"
        self._boot = boot_id if boot_id is not None else _boot_id()
        self._after = -1  # highest seq already handled in this boot
        self._fd: int | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise KernelLogError(_permission_hint(self.path)) from None
        except FileNotFoundError:
            raise KernelLogError(f"cannot read {self.path}: no such device") from None
        except OSError as exc:
            raise KernelLogError(f"cannot read {self.path}: {exc.strerror}") from None

    def read_new(self) -> list[tuple[str, str]]:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        out: list[tuple[str, str]] = []
        while len(out) < MAX_LINES_PER_READ:
            try:
                data = os.read(self._fd, 16384)
            except BlockingIOError:
                break  # EAGAIN: nothing more for now
            except BrokenPipeError:
                continue  # EPIPE: records were overwritten before we read them; go on
            except PermissionError:
                raise KernelLogError(_permission_hint(self.path)) from None
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise KernelLogError(f"cannot read {self.path}: {exc.strerror}") from None
            if not data:
                break
            rec = parse_kmsg_record(data.decode("utf-8", "replace"))
            if rec is None:
                continue
            seq, _ts, message = rec
            if seq <= self._after:
                continue  # read by an earlier process (see seek)
            self._after = seq
            out.append((f"{self._boot}:{seq}", message))
        return out

    def position(self) -> str:
        return f"{self._boot}:{self._after}"

    def seek(self, position: str) -> None:
        boot, _, seq = position.rpartition(":")
        if boot == self._boot:
            with contextlib.suppress(ValueError):
                self._after = max(self._after, int(seq))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileSource:
    """A text file followed like ``tail -F``: appends, truncation, rotation by rename.

    A missing file is waited for. Only complete lines are returned; a partial last line
    is read again once its newline arrives. With ``start_at_end`` a file with no saved
    position is read from its current end instead of its beginning.
    """

    MAX_BYTES_PER_READ = 4 << 20

    def __init__(self, path: str | os.PathLike[str], start_at_end: bool = False) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self._file: int | None = None
        self._inode = 0
        self._offset = 0
        self._pending_seek: tuple[int, int] | None = None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise KernelLogError(f"cannot read {self.path}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise KernelLogError(f"cannot read {self.path}: is a directory")
        self._open_current()
        if start_at_end and self._file is not None:
            self._offset = os.fstat(self._file).st_size

    def _open_current(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except PermissionError:
            raise KernelLogError(_permission_hint(str(self.path))) from None
        except OSError as exc:
            raise KernelLogError(f"cannot read {self.path}: {exc.strerror}") from None
        self._close_fd()
        self._file = fd
        self._inode = os.fstat(fd).st_ino
        self._offset = 0
        if self._pending_seek is not None:
            inode, offset = self._pending_seek
            self._pending_seek = None
            if inode == self._inode and offset <= os.fstat(fd).st_size:
                self._offset = offset
        return True

    def _close_fd(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def _read_lines(self, budget: int) -> list[tuple[str, str]]:
        """Complete lines from the open file at the current offset."""
        assert self._file is not None
        size = os.fstat(self._file).st_size
        if size < self._offset:  # truncated (copytruncate rotation, or `> file`)
            self._offset = 0
        if size == self._offset:
            return []
        data = os.pread(self._file, min(size - self._offset, budget), self._offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []  # a partial line; wait for its end
        out: list[tuple[str, str]] = []
        pos = 0
        for raw in data[: end + 1].split(b"\n")[:-1]:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            key = f"{self._inode}:{self._offset + pos}:{zlib.crc32(raw):08x}"
            out.append((key, line))
            pos += len(raw) + 1
        self._offset += end + 1
        return out

    def read_new(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self._file is None and not self._open_current():
            return out
        out.extend(self._read_lines(self.MAX_BYTES_PER_READ))
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return out  # rotated away and not yet recreated: keep the old one open
        except OSError as exc:
            raise KernelLogError(f"cannot read {self.path}: {exc.strerror}") from None
        if st.st_ino != self._inode:
            # rotated: finish the old file (done above, unless over budget), then the new
            if out and self._file is not None and \
                    os.fstat(self._file).st_size > self._offset:
                return out  # more of the old file left; next call
            if self._open_current():
                out.extend(self._read_lines(self.MAX_BYTES_PER_READ))
        return out

    def position(self) -> str:
        return f"{self._inode}:{self._offset}"

    def seek(self, position: str) -> None:
        try:
            inode_s, offset_s = position.split(":")
            inode, offset = int(inode_s), int(offset_s)
        except ValueError:
            return
        if self._file is None:
            self._pending_seek = (inode, offset)
            return
        if inode == self._inode and offset <= os.fstat(self._file).st_size:
            self._offset = offset

    def close(self) -> None:
        if self._file is not None:
            self._pending_seek = (self._inode, self._offset)  # a later read goes on here
        self._close_fd()


class JournalSource:
    """Kernel messages from the systemd journal (``journalctl -k -o json``)."""

    def __init__(self, journalctl: str | None = None, timeout: float = 10.0) -> None:
        self.name = "journal"
        found = journalctl or shutil.which("journalctl")
        if found is None:
            raise KernelLogError(
                "journalctl not found on PATH: install systemd's journalctl or set "
                "health.kernel_log to /dev/kmsg or the path of a kernel log file")
        self._journalctl = found
        self._timeout = timeout
        self._cursor = ""

    def read_new(self) -> list[tuple[str, str]]:
        cmd = [self._journalctl, "-k", "-o", "json", "--no-pager", "-q"]
        if self._cursor:
            cmd.append(f"--after-cursor={self._cursor}")
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=self._timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise KernelLogError(f"journalctl did not answer within {self._timeout:g}s") \
                from None
        except OSError as exc:
            raise KernelLogError(f"cannot run {self._journalctl}: {exc.strerror}") from None
        if proc.returncode != 0:
            why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise KernelLogError(
                f"journalctl exited {proc.returncode}: {why[-1] if why else 'no message'}")
        out: list[tuple[str, str]] = []
        for raw in proc.stdout.splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            cursor = entry.get("__CURSOR")
            msg = entry.get("MESSAGE")
            if not isinstance(cursor, str):
                continue
            self._cursor = cursor
            if isinstance(msg, list):  # binary-safe form: a list of byte values
                msg = bytes(b for b in msg if isinstance(b, int) and 0 <= b < 256).decode(
                    "utf-8", "replace")
            if isinstance(msg, str):
                out.append((cursor, msg))
        return out

    def position(self) -> str:
        return self._cursor

    def seek(self, position: str) -> None:
        self._cursor = position

    def close(self) -> None:
        pass


def open_source(spec: str) -> KernelLogSource:
    """``"/dev/kmsg"`` -> KmsgSource, ``"journal"`` -> JournalSource, else FileSource.
    Raises KernelLogError when the source cannot be used."""
    if spec == "journal":
        return JournalSource()
    if spec == "/dev/kmsg":
        return KmsgSource(spec)
    try:
        if stat.S_ISCHR(os.stat(spec).st_mode):
            return KmsgSource(spec)
    except OSError:
        pass
    return FileSource(spec)


# -- the tracker ------------------------------------------------------------------------

@dataclass(frozen=True)
class XidEvent:
    ts: float
    pci_bus_id: str
    code: int
    line: str
    source_key: str


class XidTracker:
    """Reads a kernel log source, records XIDs once each in the store, counts OOM kills."""

    def __init__(self, store: Store, source: KernelLogSource, clock: Clock,
                 window: float) -> None:
        self.store = store
        self.source = source
        self.clock = clock
        self.window = window
        self.oom_kills = 0
        self.last_error: str | None = None
        self.on_events: Callable[[list[XidEvent]], None] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_oom_pid: int | None = None
        rows = store.query("SELECT position FROM xid_sources WHERE source = ?", (source.name,))
        self._position = str(rows[0][0]) if rows else None
        if self._position is not None:
            source.seek(self._position)
        self._totals: dict[tuple[str, int], int] = {
            (str(pci), int(code)): int(n) for pci, code, n in store.query(
                "SELECT pci_bus_id, code, COUNT(*) FROM xid_events GROUP BY pci_bus_id, code")
        }
        since = clock.time() - window
        self._recent: list[XidEvent] = [
            XidEvent(float(ts), str(pci), int(code), str(line), str(key))
            for ts, pci, code, line, key in store.query(
                "SELECT ts, pci_bus_id, code, line, source_key FROM xid_events "
                "WHERE ts >= ? ORDER BY ts, id", (since,))
        ]

    # -- reading --------------------------------------------------------------------------

    def poll(self) -> list[XidEvent]:
        """Read what the source has now; return the XIDs recorded for the first time."""
        with self._lock:
            try:
                lines = self.source.read_new()
            except (KernelLogError, OSError) as exc:
                msg = str(exc)
                if msg != self.last_error:
                    log.warning("kernel log %s: %s", self.source.name, msg)
                self.last_error = msg
                return []
            self.last_error = None
            now = self.clock.time()
            candidates: list[XidEvent] = []
            for key, line in lines:
                xid = parse_xid(line)
                if xid is not None:
                    candidates.append(XidEvent(now, xid[0], xid[1], line,
                                               f"{self.source.name}:{key}"))
                    continue
                oom = parse_oom(line)
                if oom is not None and oom.pid != self._last_oom_pid:
                    self._last_oom_pid = oom.pid
                    self.oom_kills += 1
            position = self.source.position()
            new: list[XidEvent] = []
            if candidates or position != self._position:
                with self.store.transaction() as conn:
                    for ev in candidates:
                        cur = conn.execute(
                            "INSERT OR IGNORE INTO xid_events "
                            "(ts, pci_bus_id, code, line, source_key) VALUES (?, ?, ?, ?, ?)",
                            (ev.ts, ev.pci_bus_id, ev.code, ev.line, ev.source_key))
                        if cur.rowcount == 1:
                            new.append(ev)
                    conn.execute(
                        "INSERT INTO xid_sources (source, position) VALUES (?, ?) "
                        "ON CONFLICT(source) DO UPDATE SET position = excluded.position",
                        (self.source.name, position))
                self._position = position
            for ev in new:
                k = (ev.pci_bus_id, ev.code)
                self._totals[k] = self._totals.get(k, 0) + 1
                self._recent.append(ev)
                log.info("XID %d on GPU %s: %s", ev.code, ev.pci_bus_id, ev.line)
        if new and self.on_events is not None:
            self.on_events(new)
        return new

    def start(self, interval: float = 0.5) -> None:
        """Poll on a daemon thread until stop()."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,),
                                        name="xid-tracker", daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the store may be locked or full; keep tracking
                log.exception("XID tracking failed")
            self._stop.wait(interval)

    def stop(self) -> None:
        """Stop the thread (within a second) and close the source."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        with self._lock:
            self.source.close()

    # -- reading the state ----------------------------------------------------------------

    def totals(self) -> dict[tuple[str, int], int]:
        """All-time XID counts per (PCI bus id, code), including earlier runs."""
        with self._lock:
            return dict(self._totals)

    def recent(self) -> list[XidEvent]:
        """The XIDs recorded within ``window`` of now, oldest first."""
        since = self.clock.time() - self.window
        with self._lock:
            self._recent = [e for e in self._recent if e.ts >= since]
            return list(self._recent)

    def collector(self) -> XidCollector:
        return XidCollector(self)


class XidCollector:
    """Exports the tracker's counts as metrics (the monitoring Collector protocol)."""

    name = "xid"

    def __init__(self, tracker: XidTracker) -> None:
        self._tracker = tracker

    def collect(self) -> list[Metric]:
        xids = CounterMetricFamily(
            "swarm_gpu_xid_errors_total",
            "NVIDIA XID errors seen in the kernel log, by GPU and code (kept across restarts).",
            labels=["pci_bus_id", "code"])
        for (pci, code), n in sorted(self._tracker.totals().items()):
            xids.add_metric([pci, str(code)], n)
        oom = CounterMetricFamily(
            "swarm_kernel_oom_kills_logged_total",
            "OOM-killer kills seen in the kernel log since the agent started.",
            value=self._tracker.oom_kills)
        return [xids, oom]

    def status(self) -> CollectorStatus:
        err = self._tracker.last_error
        if err:
            return CollectorStatus("degraded", f"kernel log {self._tracker.source.name}: {err}")
        return CollectorStatus("ok", f"reading {self._tracker.source.name}")

    def close(self) -> None:
        pass
