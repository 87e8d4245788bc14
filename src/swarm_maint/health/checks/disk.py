"""Filesystem checks judged from the latest metrics frame (the ``filesystem`` collector).

``disk_space`` and ``disk_inodes`` compare the used share with the thresholds (space is
computed like df: used / (used + available to unprivileged users), so root-reserved
blocks count as full); ``disk_readonly`` flags a disk filesystem the kernel remounted
read-only after errors; ``disk_stuck`` flags a mount whose statvfs hangs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..check import CheckResult, FrameSamples, HealthCheck, HealthContext, Status, worst

__all__ = ["DiskInodesCheck", "DiskReadonlyCheck", "DiskSpaceCheck", "DiskStuckCheck",
           "create", "format_bytes"]

# Disk filesystems that are never mounted read-only on purpose on a GPU node; the kernel
# remounts them read-only (errors=remount-ro) after I/O or metadata errors.
_REMOUNT_RO_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "bcachefs"})
# Read-only by nature.
_EXPECTED_RO_FSTYPES = frozenset({"squashfs", "iso9660", "erofs", "cramfs", "udf"})


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - the loop always returns


def _by_mount(frame: FrameSamples, name: str) -> dict[str, tuple[dict[str, str], float]]:
    return {labels.get("mountpoint", "?"): (labels, value) for labels, value in frame.get(name)}


def _no_data(check: str) -> CheckResult:
    return CheckResult(check, "UNKNOWN",
                       "no filesystem metrics in the latest collection "
                       "(is the filesystem collector enabled?)",
                       None, {})


class _FrameCheck:
    name = ""
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self._ctx = ctx
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout


class _UsageCheck(_FrameCheck, ABC):
    """Shared logic of space and inode usage."""

    what = ""
    warning = 0.0
    critical = 0.0

    @abstractmethod
    def _usage(self, frame: FrameSamples) -> dict[str, tuple[float, dict[str, float | str]]]:
        """{mount point: (used share, details)} of the filesystems in ``frame``."""

    def run(self) -> CheckResult:
        frame = self._ctx.frame()
        usage = self._usage(frame)
        if not usage and not frame.get("swarm_filesystem_stuck"):
            return _no_data(self.name)
        findings: list[tuple[Status, str, str | None]] = []
        over: list[tuple[Status, str]] = []
        details: dict[str, object] = {}
        for mp in sorted(usage):
            share, info = usage[mp]
            details[mp] = info
            if share >= self.critical:
                status: Status = "CRITICAL"
            elif share >= self.warning:
                status = "WARNING"
            else:
                continue
            findings.append((status, f"{mp} {share:.0%} of {self.what} used", "investigate"))
            over.append((status, mp))
        status, msg, action = worst(findings)
        if status == "OK":
            return CheckResult(self.name, "OK",
                               f"{len(usage)} filesystem(s) below {self.warning:.0%} "
                               f"{self.what} used", None,
                               {"filesystems": details})
        advice = ("free space: old checkpoints, logs, container images "
                  "(crictl rmi --prune / docker system prune)" if self.what == "space"
                  else "delete many small files (caches, temporary files)")
        return CheckResult(self.name, status, f"{msg}: {advice}", action,
                           {"filesystems": details,
                            "over": [mp for s, mp in over if s == status]})


class DiskSpaceCheck(_UsageCheck):
    name = "disk_space"
    what = "space"

    def __init__(self, ctx: HealthContext) -> None:
        super().__init__(ctx)
        self.warning = ctx.config.thresholds.disk_used_warning
        self.critical = ctx.config.thresholds.disk_used_critical

    def _usage(self, frame: FrameSamples) -> dict[str, tuple[float, dict[str, float | str]]]:
        size = _by_mount(frame, "swarm_filesystem_size_bytes")
        free = _by_mount(frame, "swarm_filesystem_free_bytes")
        avail = _by_mount(frame, "swarm_filesystem_avail_bytes")
        out: dict[str, tuple[float, dict[str, float | str]]] = {}
        for mp, (labels, total) in size.items():
            if total <= 0 or mp not in free or mp not in avail:
                continue
            used = total - free[mp][1]
            denom = used + avail[mp][1]
            share = used / denom if denom > 0 else 0.0
            out[mp] = (share, {"used_ratio": round(share, 4), "size_bytes": total,
                               "avail_bytes": avail[mp][1],
                               "device": labels.get("device", ""),
                               "fstype": labels.get("fstype", "")})
        return out


class DiskInodesCheck(_UsageCheck):
    name = "disk_inodes"
    what = "inodes"

    def __init__(self, ctx: HealthContext) -> None:
        super().__init__(ctx)
        self.warning = ctx.config.thresholds.inodes_used_warning
        self.critical = ctx.config.thresholds.inodes_used_critical

    def _usage(self, frame: FrameSamples) -> dict[str, tuple[float, dict[str, float | str]]]:
        files = _by_mount(frame, "swarm_filesystem_files")
        files_free = _by_mount(frame, "swarm_filesystem_files_free")
        out: dict[str, tuple[float, dict[str, float | str]]] = {}
        for mp, (labels, total) in files.items():
            # filesystems without a fixed inode table (btrfs, some FUSE) report 0
            if total <= 0 or mp not in files_free:
                continue
            share = (total - files_free[mp][1]) / total
            out[mp] = (share, {"used_ratio": round(share, 4), "files": total,
                               "files_free": files_free[mp][1],
                               "fstype": labels.get("fstype", "")})
        return out


def readonly_expected(mountpoint: str, fstype: str) -> bool:
    """Whether a read-only mount is normal (images, snaps), not a sign of errors."""
    return (fstype in _EXPECTED_RO_FSTYPES or mountpoint == "/snap"
            or mountpoint.startswith("/snap/"))


class DiskReadonlyCheck(_FrameCheck):
    name = "disk_readonly"

    def run(self) -> CheckResult:
        rows = self._ctx.frame().get("swarm_filesystem_readonly")
        if not rows:
            return _no_data(self.name)
        bad: list[str] = []
        other: list[str] = []
        for labels, value in rows:
            if value < 1:
                continue
            mp, fstype = labels.get("mountpoint", "?"), labels.get("fstype", "")
            if readonly_expected(mp, fstype):
                continue
            if fstype in _REMOUNT_RO_FSTYPES:
                bad.append(f"{mp} ({fstype} on {labels.get('device', '?')})")
            else:
                other.append(mp)
        details: dict[str, object] = {"readonly": sorted(bad), "readonly_other": sorted(other)}
        if bad:
            return CheckResult(
                self.name, "CRITICAL",
                f"mounted read-only: {', '.join(sorted(bad))}; the kernel remounts a disk "
                "filesystem read-only after I/O or metadata errors: check dmesg, then "
                "drain, fsck and reboot", "reboot", details)
        return CheckResult(self.name, "OK", "no disk filesystem is unexpectedly read-only",
                           None, details)


class DiskStuckCheck(_FrameCheck):
    name = "disk_stuck"

    def run(self) -> CheckResult:
        rows = self._ctx.frame().get("swarm_filesystem_stuck")
        if not rows:
            return _no_data(self.name)
        stuck = sorted(f"{labels.get('mountpoint', '?')} ({labels.get('fstype', '')} "
                       f"{labels.get('device', '')})" for labels, value in rows if value >= 1)
        if stuck:
            return CheckResult(
                self.name, "CRITICAL",
                f"statvfs hangs on {', '.join(stuck)}: network filesystem server "
                "unreachable; processes touching it will hang too: check the server and "
                "the network, or unmount it (umount -f -l)", "investigate",
                {"stuck": stuck})
        return CheckResult(self.name, "OK", f"all {len(rows)} filesystem(s) answer",
                           None, {"stuck": []})


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [DiskSpaceCheck(ctx), DiskInodesCheck(ctx), DiskReadonlyCheck(ctx),
            DiskStuckCheck(ctx)]
