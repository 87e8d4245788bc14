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
from .backup import BackupResult, run_backup
from .errors import RepositoryNotFoundError
from .repository import Repository
from .restore import restore
from .snapshots import diff_snapshots, find_snapshot, list_files, list_snapshots
from .storage import open_storage

__all__ = [
    "TAG",
    "ConfigRestoreResult",
    "create_config_snapshot",
    "list_config_snapshots",
    "open_config_repo",
    "restore_config_snapshot",
    "snapshot_paths",
    "unified_diff",
]

TAG = "config-snapshot"
_MAX_DIFF_BYTES = 1 << 20


def _password(cfg: Config) -> str:
    cs = cfg.backup.config_snapshots
    if cs.password_file:
        return Path(cs.password_file).expanduser().read_text().splitlines()[0]
    path = cfg.agent.resolved_state_dir() / "config-snapshots.pass"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().splitlines()[0]


def open_config_repo(cfg: Config) -> Repository:
    """The configuration-snapshot repository, created on first use."""
    cs = cfg.backup.config_snapshots
    url = cs.repo or str(cfg.agent.resolved_state_dir() / "config-snapshots")
    storage = open_storage(url)
    password = _password(cfg)
    try:
        return Repository.open(storage, password)
    except RepositoryNotFoundError:
        return Repository.init(storage, password)


def snapshot_paths(cfg: Config, config_file: Path | None = None,
                   only: Sequence[str] | None = None) -> list[str]:
    """The configured paths (or ``only``) that exist, plus the agent's config file."""
    wanted = list(only) if only is not None else list(cfg.backup.config_snapshots.paths)
    if config_file is not None:
        wanted.append(str(config_file))
    out = []
    for p in wanted:
        full = os.path.abspath(os.path.expanduser(p))
        if os.path.lexists(full) and full not in out:
            out.append(full)
    return out


def create_config_snapshot(repo: Repository, paths: Sequence[str], *,
                           reason: str = "manual") -> BackupResult:
    return run_backup(repo, list(paths), tags=[TAG, f"reason:{reason}"])


def list_config_snapshots(repo: Repository) -> list[tuple[str, dict[str, Any]]]:
    return [(sid, obj) for sid, obj in list_snapshots(repo) if TAG in obj.get("tags", [])]


def _text_of(repo: Repository, node: dict[str, Any] | None) -> list[str] | None:
    """The lines of a file node, or None when it is binary or too large to diff."""
    if node is None:
        return []
    if node["type"] == "symlink":
        return [f"-> {node['target']}\n"]
    if node["type"] != "file":
        return None
    if node.get("size", 0) > _MAX_DIFF_BYTES:
        return None
    data = b"".join(repo.load_blob(bytes.fromhex(c)) for c in node.get("content", []))
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def unified_diff(repo: Repository, a: str, b: str) -> str:
    """A unified diff of every file that differs between snapshots ``a`` and ``b``."""
    a_id, _ = find_snapshot(repo, a)
    b_id, _ = find_snapshot(repo, b)
    changes = diff_snapshots(repo, a_id, b_id)
    if not changes:
        return ""
    changed = {path for _, path in changes}
    old = {p: n for p, n in list_files(repo, a_id) if p in changed}
    new = {p: n for p, n in list_files(repo, b_id) if p in changed}
    out: list[str] = []
    for status, path in changes:
        o, n = old.get(path), new.get(path)
        if (o and o["type"] == "dir") or (n and n["type"] == "dir"):
            if status != "M":
                out.append(f"{'Only in ' + b[:12] if status == '+' else 'Only in ' + a[:12]}"
                           f": {path}/\n")
            continue
        lo, ln = _text_of(repo, o), _text_of(repo, n)
        if lo is None or ln is None:
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
    return "".join(out)


@dataclass
class ConfigRestoreResult:
    snapshot_id: str
    safety_snapshot: str | None
    written: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def _matches(path: str, includes: Sequence[str]) -> bool:
    if not includes:
        return True
    return any(fnmatch.fnmatchcase(path, g) or path.startswith(g.rstrip("/") + "/")
               for g in includes)


def restore_config_snapshot(repo: Repository, ref: str, *, includes: Sequence[str] = (),
                            staging_dir: str | None = None) -> ConfigRestoreResult:
    """Put the files of snapshot ``ref`` back in place (after a safety snapshot)."""
    sid, _ = find_snapshot(repo, ref)
    entries = [(p, n) for p, n in list_files(repo, sid)
               if n["type"] in ("file", "symlink") and _matches(p, includes)]
    existing = [p for p, _ in entries if os.path.lexists(p)]
    result = ConfigRestoreResult(sid, None)
    if existing:
        safety = create_config_snapshot(repo, existing, reason="pre-restore")
        result.safety_snapshot = safety.snapshot_id
    stage = tempfile.mkdtemp(prefix="swarm-maint-restore-", dir=staging_dir)
    try:
        res = restore(repo, sid, stage, includes=[p for p, _ in entries] or ["/nonexistent"])
        result.errors.extend(res.errors)
        for path, node in entries:
            src = os.path.join(stage, path.lstrip("/"))
            try:
                _put_in_place(src, path, node)
                result.written.append(path)
            except OSError as exc:
                result.errors.append({"path": path, "error": exc.strerror or str(exc)})
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


def _put_in_place(src: str, dest: str, node: dict[str, Any]) -> None:
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".swarm-maint-{secrets.token_hex(4)}")
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), tmp)
    else:
        shutil.copy2(src, tmp, follow_symlinks=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    try:
        if os.geteuid() == 0:
            os.lchown(tmp, node.get("uid", 0), node.get("gid", 0))
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(tmp, node.get("mode", 0o644))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
