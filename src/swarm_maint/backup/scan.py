"""The tree to back up, scanned with ``os.scandir`` + lstat: no repository and none of
the engine's native modules are needed, so the CLI scans while the key is derived and
the engine's modules load."""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from ..errors import UsageError

__all__ = ["Entry", "NullProgress", "Progress", "Scan", "is_excluded", "normalize_paths"]


class Progress(Protocol):
    """Progress callbacks; ``on_file``/``on_bytes`` may come from worker threads."""

    def on_start(self, total_files: int, total_bytes: int) -> None: ...

    def on_file(self, path: str) -> None: ...

    def on_bytes(self, n: int) -> None: ...

    def on_error(self, path: str, msg: str) -> None: ...


class NullProgress:
    def on_start(self, total_files: int, total_bytes: int) -> None:
        pass

    def on_file(self, path: str) -> None:
        pass

    def on_bytes(self, n: int) -> None:
        pass

    def on_error(self, path: str, msg: str) -> None:
        pass


class Entry:
    """A scanned file, directory, symlink or fifo (compared by identity)."""

    __slots__ = ("children", "content", "kind", "name", "path", "size", "st", "subtree",
                 "target")

    def __init__(self, name: str, path: str, st: os.stat_result, kind: str,
                 children: dict[str, Entry] | None = None, target: str = "",
                 content: list[bytes] | None = None, size: int = 0,
                 subtree: str = "") -> None:
        self.name = name
        self.path = path
        self.st = st
        self.kind = kind  # file, dir, symlink, fifo
        self.children = children
        self.target = target
        self.content = content
        self.size = size
        self.subtree = subtree


def normalize_paths(paths: Iterable[str | bytes | os.PathLike[str]]) -> list[str]:
    """Absolute, normalized, unique paths, dropping those inside another given path."""
    norm = sorted({os.path.normpath(os.path.abspath(os.fsdecode(p))) for p in paths},
                  key=os.fsencode)
    out: list[str] = []
    for p in norm:
        if any(p == q or q == "/" or p.startswith(q + "/") for q in out):
            continue
        out.append(p)
    return out


def is_excluded(path: str, patterns: Sequence[str]) -> bool:
    """fnmatch globs against the full path and the basename (``*`` also spans '/')."""
    base = os.path.basename(path)
    return any(fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(base, pat)
               for pat in patterns)


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return None


def _type_name(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"file type {stat.S_IFMT(mode):o}"


class Scan:
    """The tree to back up, as ``os.scandir`` + lstat saw it: entries, the regular files,
    and what could not be read. Needs no repository, so the CLI runs it while the key is
    being derived."""

    def __init__(self, paths: Iterable[str | bytes | os.PathLike[str]], *,
                 excludes: Sequence[str] = (), one_file_system: bool = False,
                 progress: Progress | None = None) -> None:
        self.tops = normalize_paths(paths)
        self.excludes = list(excludes)
        self.one_fs = one_file_system
        self.progress: Progress = progress or NullProgress()
        self.errors: list[dict[str, str]] = []
        self.sockets: list[str] = []  # skipped found below a path, not errors
        self.files: list[Entry] = []
        self.started_ns = time.time_ns()
        self.root = self.build_root(self.tops)
        if self.tops and not self.root.children and not self.errors:
            # an empty snapshot would count toward keep-last like a real one
            raise UsageError(f"--exclude {' '.join(self.excludes)}: every path to back up "
                             "is excluded; nothing to back up")

    def error(self, path: str, msg: str) -> None:
        self.errors.append({"path": path, "error": msg})
        self.progress.on_error(path, msg)

    def _entry(self, name: str, path: str, st: os.stat_result, *,
               named: bool = False) -> Entry | None:
        kind = _kind(st.st_mode)
        if kind is None:
            if stat.S_ISSOCK(st.st_mode) and not named:
                # no data: the program listening on it makes it again when it starts
                # (Ray keeps its sockets in its session directories)
                self.sockets.append(path)
                return None
            self.error(path, f"skipped: unsupported {_type_name(st.st_mode)}")
            return None
        e = Entry(name, path, st, kind)
        if kind == "dir":
            e.children = {}
        elif kind == "file":
            e.size = st.st_size
            self.files.append(e)
        elif kind == "symlink":
            try:
                e.target = os.readlink(path)
            except OSError as exc:
                self.error(path, f"cannot read symlink: {exc.strerror or exc}")
                return None
        return e

    def scan(self, top: Entry) -> None:
        if top.kind != "dir":
            return
        dev = top.st.st_dev
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d.path) as it:
                    listing = list(it)
            except OSError as exc:
                self.error(d.path, f"cannot list directory: {exc.strerror or exc}")
                continue
            assert d.children is not None
            for de in listing:
                path = de.path
                if self.excludes and is_excluded(path, self.excludes):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError as exc:
                    self.error(path, f"cannot stat: {exc.strerror or exc}")
                    continue
                child = self._entry(de.name, path, st)
                if child is None:
                    continue
                d.children[de.name] = child
                if child.kind == "dir" and not (self.one_fs and st.st_dev != dev):
                    stack.append(child)

    def build_root(self, tops: list[str]) -> Entry:
        root = Entry("", "/", os.stat("/"), "dir", children={})
        for top in tops:
            if top == "/":
                root = Entry("", "/", os.lstat("/"), "dir", children={})
                self.scan(root)
                break
            if self.excludes and is_excluded(top, self.excludes):
                continue
            comps = top.strip("/").split("/")
            parent: Entry | None = root
            for i, comp in enumerate(comps[:-1]):
                assert parent is not None and parent.children is not None
                kids = parent.children
                child = kids.get(comp)
                if child is None:
                    path = "/" + "/".join(comps[:i + 1])
                    try:
                        st = os.stat(path)
                    except OSError as exc:
                        self.error(path, f"cannot stat: {exc.strerror or exc}")
                        parent = None
                        break
                    if not stat.S_ISDIR(st.st_mode):
                        self.error(path, "not a directory")
                        parent = None
                        break
                    child = Entry(comp, path, st, "dir", children={})
                    kids[comp] = child
                parent = child
            if parent is None:
                continue
            try:
                st = os.lstat(top)
            except OSError as exc:
                self.error(top, f"cannot stat: {exc.strerror or exc}")
                continue
            entry = self._entry(comps[-1], top, st, named=True)
            if entry is None:
                continue
            assert parent.children is not None
            parent.children[comps[-1]] = entry
            self.scan(entry)
        return root
