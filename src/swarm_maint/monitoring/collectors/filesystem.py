"""Size, free space and inodes of mounted filesystems: <proc>/self/mounts plus statvfs.

statvfs on a mount whose NFS server died blocks in the kernel, possibly forever, and
no signal or timeout can interrupt it. Every call therefore runs on a daemon worker
thread and the collector waits for the batch only up to ``filesystem.statvfs_timeout``.
A mount whose call did not answer is reported as stuck and is not asked again while
that call is still pending, so a dead server costs one blocked thread, not one more
per collection, and never holds up the collector.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus
from ._procfs import non_empty, read_text

__all__ = ["FilesystemCollector", "Mount", "create", "parse_mounts"]

StatvfsFn = Callable[[str], os.statvfs_result]

_OCTAL = re.compile(r"\\([0-7]{3})")
_LABELS = ["device", "mountpoint", "fstype"]
_MAX_WORKERS = 256  # one outstanding call per mount point, so this is only a backstop
# Disk and memory filesystems answer statfs from in-memory counters and cannot hang on a
# remote server, so they are read inline; every other type (NFS, CIFS, FUSE, Ceph,
# Lustre, and anything unknown) goes through a worker thread with the timeout.
LOCAL_FSTYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "exfat", "ntfs3",
    "tmpfs", "ramfs", "devtmpfs", "jfs", "reiserfs", "bcachefs",
})


def _unescape(field: str) -> str:
    """Undo the kernel's octal escapes of space, tab, newline and backslash (\\040...)."""
    if "\\" not in field:
        return field
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    readonly: bool  # "ro" among the mount options

    @property
    def labels(self) -> list[str]:
        return [self.device, self.mountpoint, self.fstype]


def parse_mounts(
    text: str, exclude_fstypes: frozenset[str], exclude_mountpoints: re.Pattern[str]
) -> dict[str, Mount]:
    """{mount point: Mount} for the mounts to report; a mount point listed twice (one
    mount stacked on another) keeps the last, which is the one visible."""
    out: dict[str, Mount] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        device, mountpoint, fstype, options = parts[:4]
        if fstype in exclude_fstypes:
            continue
        mountpoint = _unescape(mountpoint)
        if exclude_mountpoints.search(mountpoint):
            continue
        out[mountpoint] = Mount(
            _unescape(device), mountpoint, fstype, "ro" in options.split(",")
        )
    return out


class _Call:
    """One statvfs call handed to a worker thread."""

    __slots__ = ("done", "error", "path", "result")

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = threading.Event()
        self.result: os.statvfs_result | None = None
        self.error: OSError | None = None


class _Workers:
    """Daemon threads that run statvfs calls; a thread stuck in the kernel is simply
    left behind and a new one started for the next call (daemon threads never hold
    up interpreter exit, unlike a ThreadPoolExecutor's)."""

    def __init__(self, statvfs: StatvfsFn) -> None:
        self._statvfs = statvfs
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._closed = False

    def submit(self, call: _Call) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # that idle worker will take this call
            elif self._threads < _MAX_WORKERS:
                self._threads += 1
                threading.Thread(
                    target=self._run, name="swarm-statvfs", daemon=True
                ).start()
        self._queue.put(call)

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            try:
                call.result = self._statvfs(call.path)
            except OSError as exc:
                call.error = exc
            except Exception as exc:  # an injected function gone wrong; report, keep going
                call.error = OSError(f"statvfs failed: {exc!r}")
            call.done.set()
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._idle
        for _ in range(idle):
            self._queue.put(None)


class FilesystemCollector:
    name = "filesystem"

    def __init__(self, ctx: CollectorContext, statvfs: StatvfsFn = os.statvfs) -> None:
        cfg = ctx.config.filesystem
        self._path = ctx.proc_root / "self" / "mounts"
        self._exclude_fstypes = frozenset(cfg.exclude_fstypes)
        self._exclude_mountpoints = re.compile(cfg.exclude_mountpoints)
        self._timeout = cfg.statvfs_timeout
        self._statvfs = statvfs
        self._workers = _Workers(statvfs)
        self._pending: dict[str, _Call] = {}  # mount point -> call that has not answered
        self._status = CollectorStatus()

    def collect(self) -> list[Metric]:
        try:
            text = read_text(self._path)
        except OSError as exc:
            self._status = CollectorStatus("unavailable", f"cannot read {self._path}: {exc}")
            return []
        mounts = parse_mounts(text, self._exclude_fstypes, self._exclude_mountpoints)

        # A mount that left the table is forgotten, even if its call never returns.
        for mp in [mp for mp in self._pending if mp not in mounts]:
            del self._pending[mp]

        calls: dict[str, _Call] = {}
        for mp in mounts:
            old = self._pending.get(mp)
            if old is not None:
                if not old.done.is_set():
                    continue  # still blocked: do not pile up another call
                del self._pending[mp]
            call = _Call(mp)
            calls[mp] = call
            if mounts[mp].fstype in LOCAL_FSTYPES:
                try:
                    call.result = self._statvfs(mp)
                except OSError as exc:
                    call.error = exc
                call.done.set()
            else:
                self._workers.submit(call)

        deadline = time.monotonic() + self._timeout
        for call in calls.values():
            call.done.wait(max(0.0, deadline - time.monotonic()))

        fams = {
            name: GaugeMetricFamily(name, help_text, labels=_LABELS)
            for name, help_text in (
                ("swarm_filesystem_size_bytes", "Size of the filesystem."),
                ("swarm_filesystem_free_bytes", "Free space, including root-reserved blocks."),
                ("swarm_filesystem_avail_bytes", "Space available to unprivileged users."),
                ("swarm_filesystem_files", "Inodes in the filesystem."),
                ("swarm_filesystem_files_free", "Free inodes."),
                ("swarm_filesystem_readonly", "1 when the filesystem is mounted read-only."),
                ("swarm_filesystem_stuck",
                 "1 when statvfs did not answer within the timeout (a dead network server)."),
            )
        }
        size = fams["swarm_filesystem_size_bytes"]
        free = fams["swarm_filesystem_free_bytes"]
        avail = fams["swarm_filesystem_avail_bytes"]
        files = fams["swarm_filesystem_files"]
        files_free = fams["swarm_filesystem_files_free"]
        readonly = fams["swarm_filesystem_readonly"]
        stuck = fams["swarm_filesystem_stuck"]

        stuck_names: list[str] = []
        errors: list[str] = []
        for mp, mount in mounts.items():
            labels = mount.labels
            answer = calls.get(mp)
            if answer is None or not answer.done.is_set():
                if answer is not None:
                    self._pending[mp] = answer
                stuck.add_metric(labels, 1.0)
                stuck_names.append(f"{mp} ({mount.fstype} {mount.device})")
                continue
            if answer.error is not None:
                if isinstance(answer.error, FileNotFoundError | PermissionError):
                    continue  # unmounted meanwhile, or not ours to look at
                stuck.add_metric(labels, 0.0)
                errors.append(f"statvfs {mp}: {answer.error}")
                continue
            st = answer.result
            assert st is not None
            frsize = st.f_frsize or st.f_bsize
            size.add_metric(labels, st.f_blocks * frsize)
            free.add_metric(labels, st.f_bfree * frsize)
            avail.add_metric(labels, st.f_bavail * frsize)
            files.add_metric(labels, st.f_files)
            files_free.add_metric(labels, st.f_ffree)
            ro = mount.readonly or bool(st.f_flag & os.ST_RDONLY)
            readonly.add_metric(labels, 1.0 if ro else 0.0)
            stuck.add_metric(labels, 0.0)

        problems = []
        if stuck_names:
            problems.append(
                f"statvfs did not answer within {self._timeout:g}s on "
                + ", ".join(stuck_names)
            )
        problems.extend(errors)
        self._status = (
            CollectorStatus("degraded", "; ".join(problems)) if problems else CollectorStatus()
        )
        return non_empty(list(fams.values()))

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        self._workers.close()


def create(ctx: CollectorContext) -> FilesystemCollector:
    return FilesystemCollector(ctx)
