"""Snapshots of system and workload configuration, with readable diffs and a safe restore.

They live in their own repository (local to the node by default, with a generated
password kept in the state dir) and carry the tag ``config-snapshot`` plus
``reason:<why>`` (``manual``, ``pre-update``, ``pre-restore``, ``periodic``…).
Restoring in place first snapshots what it is about to overwrite, then writes each file
through a temporary name and a rename, leaving existing directories' metadata alone.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fnmatch
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError, UsageError
from .backup import BackupResult, run_backup
from .direct_io import pwrite_all
from .passwords import generated_password, read_password_file
from .repository import Repository
from .restore import restore
from .snapshots import diff_snapshots, find_snapshot, list_files, list_snapshots
from .storage import Storage, open_storage

__all__ = [
    "TAG",
    "ConfigDiff",
    "ConfigRestoreResult",
    "config_diff",
    "create_config_snapshot",
    "existing_config_repo",
    "list_config_snapshots",
    "open_config_repo",
    "restore_config_snapshot",
    "snapshot_paths",
    "unified_diff",
]

TAG = "config-snapshot"
_MAX_DIFF_BYTES = 1 << 20


def _password(cfg: Config, storage: Storage) -> str:
    cs = cfg.backup.config_snapshots
    if cs.password_file:
        return read_password_file(Path(cs.password_file).expanduser(),
                                  "backup.config_snapshots.password_file", ConfigError)
    return generated_password(cfg.agent.resolved_state_dir() / "config-snapshots.pass",
                              repository_exists=storage.exists("config"))


def _config_storage(cfg: Config) -> Storage:
    cs = cfg.backup.config_snapshots
    return open_storage(cs.repo or str(cfg.agent.resolved_state_dir() / "config-snapshots"))


def open_config_repo(cfg: Config) -> Repository:
    """The configuration-snapshot repository, created on first use."""
    storage = _config_storage(cfg)
    if not storage.exists("config"):
        return Repository.init(storage, _password(cfg, storage))
    return Repository.open(storage, _password(cfg, storage))


def existing_config_repo(cfg: Config) -> Repository | None:
    """That repository, or None while there is none (nothing to list, diff or restore):
    reading must not create one."""
    storage = _config_storage(cfg)
    if not storage.exists("config"):
        return None
    return Repository.open(storage, _password(cfg, storage))


def snapshot_paths(cfg: Config, config_file: Path | None = None,
                   only: Sequence[str] | None = None, *, given: bool = False) -> list[str]:
    """The configured paths (or ``only``) that exist, plus the agent's config file.
    Missing ones are skipped, unless ``given`` (a user named them on the command line):
    then an empty or missing one is a UsageError."""
    wanted = list(only) if only is not None else list(cfg.backup.config_snapshots.paths)
    if config_file is not None:
        wanted.append(str(config_file))
    out = []
    for p in wanted:
        if given and not p.strip():
            # abspath("") is the working directory: / for the agent, everything
            raise UsageError("--path: empty path")
        full = os.path.abspath(os.path.expanduser(p))
        if not os.path.lexists(full):
            if given:
                raise UsageError(f"--path: no such file or directory: {full}")
            continue
        if full not in out:
            out.append(full)
    return out


def create_config_snapshot(repo: Repository, paths: Sequence[str], *,
                           reason: str = "manual") -> BackupResult:
    return run_backup(repo, list(paths), tags=[TAG, f"reason:{reason}"])


def list_config_snapshots(repo: Repository) -> list[tuple[str, dict[str, Any]]]:
    return [(sid, obj) for sid, obj in list_snapshots(repo) if TAG in obj.get("tags", [])]


_KINDS = {"file": "regular file", "dir": "directory", "symlink": "symlink", "fifo": "fifo"}


def _kind(node: dict[str, Any] | None) -> str:
    return "nothing" if node is None else _KINDS.get(node["type"], node["type"])


def _text_of(repo: Repository, node: dict[str, Any] | None) -> list[str] | str:
    """The lines of a file or symlink node (none for an absent one); otherwise why it
    cannot be shown: ``"binary"`` or ``"large"``."""
    if node is None:
        return []
    if node["type"] == "symlink":
        return [f"-> {node['target']}\n"]
    if node.get("size", 0) > _MAX_DIFF_BYTES:
        return "large"
    data = b"".join(repo.load_blob(bytes.fromhex(c)) for c in node.get("content", []))
    if b"\0" in data:
        return "binary"
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return "binary"


@dataclass
class ConfigDiff:
    a: str
    b: str
    changes: list[dict[str, str]]  # status (+ - M), path, and the kind on each side
    text: str  # unified diff, with a line for each change it cannot show as one


def config_diff(repo: Repository, a: str, b: str) -> ConfigDiff:
    """What changed from snapshot ``a`` to ``b``, as a unified diff of the text files and
    one line for each other change (type, mode, binary or very large content)."""
    a_id, _ = find_snapshot(repo, a)
    b_id, _ = find_snapshot(repo, b)
    changes = diff_snapshots(repo, a_id, b_id)
    changed = {path for _, path in changes}
    old = {p: n for p, n in list_files(repo, a_id) if p in changed} if changes else {}
    new = {p: n for p, n in list_files(repo, b_id) if p in changed} if changes else {}
    out: list[str] = []
    listed: list[dict[str, str]] = []
    for status, path in changes:
        o, n = old.get(path), new.get(path)
        listed.append({"status": status, "path": path, "a": _kind(o), "b": _kind(n)})
        dirs = [x for x in (o, n) if x is not None and x["type"] == "dir"]
        if o is not None and n is not None and o["type"] != n["type"] and (
                dirs or not {o["type"], n["type"]} <= {"file", "symlink"}):
            out.append(f"{path}: {_kind(o)} -> {_kind(n)}\n")
            continue
        if dirs:
            if status != "M":
                side = b_id[:12] if status == "+" else a_id[:12]
                out.append(f"Only in {side}: {path}/\n")
            continue
        if any(x is not None and x["type"] not in ("file", "symlink") for x in (o, n)):
            out.append(f"{path}: {_kind(o)} -> {_kind(n)}\n")
            continue
        lo, ln = _text_of(repo, o), _text_of(repo, n)
        if isinstance(lo, str) or isinstance(ln, str):
            if "large" in (lo, ln):
                out.append(f"{path}: contents differ (larger than {_MAX_DIFF_BYTES >> 20} MiB: "
                           "not shown)\n")
            else:
                out.append(f"Binary files a{path} and b{path} differ\n")
            continue
        if lo == ln:
            if o and n and o.get("mode") != n.get("mode"):
                out.append(f"mode of {path}: {o['mode']:o} -> {n['mode']:o}\n")
            continue
        out.extend(difflib.unified_diff(lo, ln, f"a{path}" if o else "/dev/null",
                                        f"b{path}" if n else "/dev/null"))
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n\\ No newline at end of file\n"
    return ConfigDiff(a_id, b_id, listed, "".join(out))


def unified_diff(repo: Repository, a: str, b: str) -> str:
    """The text of ``config_diff``."""
    return config_diff(repo, a, b).text


@dataclass
class ConfigRestoreResult:
    snapshot_id: str
    safety_snapshot: str | None
    written: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    unsaved: list[str] = field(default_factory=list)  # what the safety snapshot missed


def _matches(path: str, includes: Sequence[str]) -> bool:
    if not includes:
        return True
    return any(fnmatch.fnmatchcase(path, g) or path.startswith(g.rstrip("/") + "/")
               for g in includes)


def _top_of(path: str, tops: Sequence[str]) -> str | None:
    """The snapshotted path (one of the snapshot's ``paths``) that holds ``path``."""
    inside = [t for t in tops if path == t or path.startswith(t.rstrip("/") + "/")]
    return max(inside, key=len, default=None)


def restore_config_snapshot(repo: Repository, ref: str, *, includes: Sequence[str] = (),
                            staging_dir: str | None = None) -> ConfigRestoreResult:
    """Put the files of snapshot ``ref`` back in place, after a safety snapshot of what
    is there now. A path the safety snapshot could not save is left alone (an error)."""
    sid, snap = find_snapshot(repo, ref)
    files = list(list_files(repo, sid))
    entries = [(p, n) for p, n in files
               if n["type"] in ("file", "symlink") and _matches(p, includes)]
    if includes and not entries:
        raise UsageError(f"--include {' '.join(includes)}: matches no file of snapshot "
                         f"{sid[:16]} (give absolute paths or globs, e.g. '/etc/ssh/*')")
    dirs = {p: n for p, n in files if n["type"] == "dir"}
    tops = [os.path.normpath(t) for t in snap.get("paths", [])]
    existing = [p for p, _ in entries if os.path.lexists(p)]
    result = ConfigRestoreResult(sid, None)
    unsaved: dict[str, str] = {}
    if existing:
        safety = create_config_snapshot(repo, existing, reason="pre-restore")
        result.safety_snapshot = safety.snapshot_id
        unsaved = {e["path"]: e["error"] for e in safety.errors}
        result.unsaved = sorted(unsaved)
    stage = tempfile.mkdtemp(prefix="swarm-maint-restore-", dir=staging_dir)
    try:
        res = restore(repo, sid, stage, includes=[p for p, _ in entries] or ["/nonexistent"])
        result.errors.extend(res.errors)
        for path, node in entries:
            if path in unsaved:
                result.errors.append({"path": path, "error": "left as it is: the safety "
                                      f"snapshot could not save it ({unsaved[path]})"})
                continue
            src = os.path.join(stage, path.lstrip("/"))
            try:
                _put_in_place(src, path, node, _top_of(path, tops), dirs)
                result.written.append(path)
            except OSError as exc:
                result.errors.append({"path": path, "error": exc.strerror or str(exc)})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _open_parent(dest: str, top: str | None, dirs: dict[str, dict[str, Any]]) -> int:
    """A descriptor of ``dest``'s directory. Above the snapshotted path it is reached as
    configured (system symlinks such as /etc/alternatives are fine there); inside it no
    symlink is followed, so a directory since replaced by a link to elsewhere cannot
    send the restore there. Missing directories are created as the snapshot had them."""
    parent = os.path.dirname(dest)
    if top is None or top == dest:
        base, inner = parent, []
    else:
        base = os.path.dirname(top)
        inner = os.path.relpath(parent, base).split(os.sep)
    os.makedirs(base, exist_ok=True)
    fd = os.open(base, _DIR_FLAGS)
    here = base
    try:
        for name in inner:
            here = os.path.join(here, name)
            try:
                nfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                node = dirs.get(here, {})
                os.mkdir(name, 0o700, dir_fd=fd)
                nfd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                if os.geteuid() == 0:
                    os.fchown(nfd, node.get("uid", 0), node.get("gid", 0))
                os.fchmod(nfd, node.get("mode", 0o755))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, f"{here} is no longer a directory (a symlink "
                                  "or file now): not followed") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _put_in_place(src: str, dest: str, node: dict[str, Any], top: str | None,
                  dirs: dict[str, dict[str, Any]]) -> None:
    """Write the staged ``src`` to ``dest`` through a temporary name in its directory.
    The temporary file is private (0600) until it holds the whole content and has its
    final owner and mode, then renamed over ``dest``."""
    dfd = _open_parent(dest, top, dirs)
    try:
        name = os.path.basename(dest)
        tmp = f".swarm-maint-{secrets.token_hex(4)}"
        st = os.lstat(src)
        root = os.geteuid() == 0
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), tmp, dir_fd=dfd)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                with open(src, "rb") as inp:
                    offset = 0
                    while chunk := inp.read(1 << 20):
                        pwrite_all(fd, memoryview(chunk), offset)
                        offset += len(chunk)
                if root:
                    os.fchown(fd, node.get("uid", 0), node.get("gid", 0))
                os.fchmod(fd, node.get("mode", 0o644))  # after chown, which clears set-id
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.close(fd)
        try:
            if root and stat.S_ISLNK(st.st_mode):
                os.chown(tmp, node.get("uid", 0), node.get("gid", 0), dir_fd=dfd,
                         follow_symlinks=False)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)  # the rename durable before we say it is done
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)
