"""The work behind ``swarm-maint backup …``, free of the command-line framework.

``backup run`` and ``backup restore`` are what the scheduler and scripts call most, and a
backup of unchanged data takes well under a second: the fast path (fast_path.py) calls
``backup_run`` and ``backup_restore`` here directly, without importing Typer, whose start-up
(pydantic adapters for every parameter) would otherwise be a third of the run. The Typer
commands in backup_cmd.py call the same functions."""

from __future__ import annotations

import contextlib
import gc
import getpass
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StateError, UsageError
from .plain import check_config, node_state, print_json, state_store

if TYPE_CHECKING:
    from ..backup.files_cache import FilesCache
    from ..backup.scan import Scan

T = TypeVar("T")
EXIT_PARTIAL = 3  # the snapshot or restore is incomplete: some files failed


def _say(msg: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(msg + "\n")
    stream.flush()


def read_password(password_file: Path | None, *, confirm: bool = False) -> str:
    if password_file is not None:
        from ..backup.passwords import read_password_file

        return read_password_file(password_file, "--password-file")
    env = os.environ.get("SWARM_MAINT_PASSWORD")
    if env:
        try:
            env.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as surrogates
            raise UsageError("SWARM_MAINT_PASSWORD is not UTF-8 text") from None
        return env
    if sys.stdin.isatty():
        pw = getpass.getpass("repository password: ")
        if confirm and getpass.getpass("again: ") != pw:
            raise UsageError("the passwords differ")
        if pw:
            return pw
    raise UsageError("no password: set SWARM_MAINT_PASSWORD or give --password-file")


def open_repo(repo: str, password_file: Path | None) -> Any:
    return open_with_password(repo, read_password(password_file))


def open_with_password(repo: str, password: str) -> Any:
    from ..backup.kdf import derive_first_key
    from ..backup.storage import open_storage

    storage = open_storage(repo)
    derived = derive_first_key(storage, password)  # before the engine's native modules load
    from ..backup.repository import Repository

    return Repository.open(storage, password, derived=derived)


def state_and_repo(config: Path | None, repo: str, password_file: Path | None,
                   *imports: str,
                   meanwhile: Callable[[tuple[Path, float], Callable[[], bool]], T]
                   | None = None,
                   ) -> tuple[tuple[Path, float], Any, T | None]:
    """((state directory, lease ttl), open repository, what ``meanwhile`` returned): the
    config is checked and ``meanwhile(state, key_ready)`` runs while one thread derives
    the key (scrypt releases the GIL) and another loads the modules named in
    ``imports``, which hides most of the 0.1 s the key takes and of the imports' time
    from a cold page cache."""
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    try:
        password = read_password(password_file)
    except UsageError:
        check_config(config)  # a bad config is reported first
        raise

    def load() -> None:
        for name in imports:
            importlib.import_module(name, __package__)

    with ThreadPoolExecutor(2, thread_name_prefix="open-repo") as pool:
        opened = pool.submit(open_with_password, repo, password)
        loaded = pool.submit(load) if imports else None
        state = node_state(config)
        extra = meanwhile(state, opened.done) if meanwhile is not None else None
        if loaded is not None:
            loaded.result()
        return state, opened.result(), extra


@contextlib.contextmanager
def locked(repo: Any, exclusive: bool, *, reading: bool = False) -> Iterator[Any]:
    """The repository locked for the block; yields the lock (None: see below).

    A command that only reads (``reading``: restore, verify) goes on without a lock where
    none can be written (a read-only mount of a backup disk, a full disk, no write
    permission): recovering data must not depend on writing. It says so, since a prune
    started meanwhile elsewhere could then make it report data as missing."""
    import errno

    from ..backup.errors import StorageFullError
    from ..backup.locks import lock_repository

    lock = None
    try:
        lock = lock_repository(repo.storage, exclusive)
    except (OSError, StorageFullError) as exc:
        unwritable = isinstance(exc, StorageFullError) or exc.errno in (
            errno.EROFS, errno.EACCES, errno.EPERM)
        if not reading or exclusive or not unwritable:
            raise
        _say(f"warning: {repo.storage.location()}: cannot write a lock "
             f"({getattr(exc, 'strerror', None) or exc}); reading without one", err=True)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def maintenance_lease(state: tuple[Path, float], owner: str, *,
                       skip: bool) -> Iterator[None]:
    if skip:
        yield
        return
    from ..clock import SystemClock
    from ..schedule.lease import Lease

    state_dir, ttl = state
    with state_store(state_dir) as store, Lease(store, SystemClock(), ttl).hold(owner):
        yield


class ProgressBar:
    """Rich progress with bytes/s and ETA on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, label: str) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._label = label
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_start(self, total_files: int, total_bytes: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total_bytes)

    def on_file(self, path: str) -> None:
        pass

    def on_bytes(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def on_error(self, path: str, msg: str) -> None:
        pass  # every error is listed once when the command ends


class PhaseProgress:
    """Rich progress of a command that works in phases (verify, prune, repair), counting
    each phase's items, on a terminal; silent otherwise. Called as (phase, done, total)."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._phase = ""
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), console=Console(stderr=True),
                                      transient=True)

    def __enter__(self) -> PhaseProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if phase != self._phase:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(phase, total=total)
            self._phase = phase
        self._progress.update(self._task, completed=done, total=total)


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """A backup or restore allocates hundreds of thousands of objects that live until it
    ends and form no cycles: the cyclic collector would only walk them again and again
    (3-5 % of a small-file backup). Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()



def backup_run(paths: Sequence[Path], repo: str, *, tag: Sequence[str] = (),
               exclude: Sequence[str] = (), one_file_system: bool = False,
               no_lease: bool = False, password_file: Path | None = None,
               config: Path | None = None, json_out: bool = False) -> int:
    """``backup run``: a new snapshot of ``paths``; the exit code (3: partial)."""
    from ..backup.memory import limit_heap_growth

    limit_heap_growth()  # backup only: restore reuses nothing big and runs faster without it
    bar = ProgressBar(not json_out, "backup")

    from ..backup.tags import check_tags

    tags = check_tags(tag)  # before any work

    def scan(state: tuple[Path, float],
             key_ready: Callable[[], bool]) -> tuple[Scan, FilesCache | None]:
        from ..backup.scan import Scan

        missing = [str(p) for p in paths if not os.path.lexists(p)]
        if missing:
            raise UsageError(f"no such file or directory: {', '.join(missing)}")
        scanned = Scan(paths, excludes=[*exclude, *_own_repository(repo, paths)],
                       one_file_system=one_file_system, progress=bar)
        return scanned, _early_files_cache(repo, state[0], scanned, key_ready)

    # the tree is scanned (backup.scan needs none of the engine's native modules) and the
    # files cache read while the key is derived and the engine loads: a re-run of
    # unchanged data is mostly these
    state, r, scanned_early = state_and_repo(config, repo, password_file,
                                             "..backup.backup", "..backup.files_cache",
                                             "..schedule.lease", meanwhile=scan)
    assert scanned_early is not None
    scanned, early = scanned_early
    from ..backup.backup import run_backup
    from ..backup.files_cache import FilesCache, cache_folder
    from ..backup.orphan_check import backup_starts

    cache_dir = cache_folder(state[0], r.id)
    if early is not None and early.path != cache_dir / "files.db":
        early.close()  # the config read before it was authenticated named another id
        early = None
    with contextlib.ExitStack() as stack:
        if early is not None:
            stack.callback(early.close)  # also when the lease or the lock is refused
        stack.enter_context(maintenance_lease(state, "cli: backup run", skip=no_lease))
        lock = stack.enter_context(locked(r, exclusive=False))
        import sqlite3  # loaded already, by the files cache

        try:
            check = backup_starts(r, lock.stale_removed, cache_dir)
            cache = early or FilesCache(cache_dir / "files.db")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot use the state directory {state[0]}: {exc}") from None
        try:
            with bar, no_cyclic_gc():
                res = run_backup(r, scanned, tags=tags, files_cache=cache, progress=bar)
        finally:
            cache.close()
        check.end()
    out = {"snapshot": res.snapshot_id, "files": res.files, "bytes": res.bytes,
           "added_bytes": res.added_bytes, "seconds": round(res.seconds, 3),
           "partial": res.partial, "errors": res.errors,
           "sockets_skipped": res.sockets_skipped,
           "files_read": res.files_read, "bytes_read": res.bytes_read}
    if json_out:
        print_json(out)
    else:
        for e in res.errors:
            _say(f"warning: {e['path']}: {e['error']}", err=True)
        partial = " (PARTIAL: some files could not be read)" if res.partial else ""
        _say(f"snapshot {res.snapshot_id[:16]} saved{partial}: {res.files} files, "
             f"{res.bytes / 2**20:.1f} MiB, {res.added_bytes / 2**20:.1f} MiB added "
             f"in {res.seconds:.1f} s")
        if res.sockets_skipped:
            _say(f"{res.sockets_skipped} socket(s) skipped: they hold no data")
    return EXIT_PARTIAL if res.partial else 0


_REPO_ID = re.compile(r"[0-9a-f]{64}")


def _early_files_cache(repo: str, state_dir: Path, scanned: Scan,
                       key_ready: Callable[[], bool]) -> FilesCache | None:
    """The repository's files cache, opened and read for the scanned files while the key
    is still being derived, so that a re-run's lookups do not wait for it (3000 files:
    about 20 ms). The repository id comes from the config before it is authenticated:
    the backup uses this cache only if the repository opens with the same id. None where
    the cache does not exist yet or cannot be read now: the backup then opens it the
    usual way, which reports what is wrong."""
    import json
    import sqlite3

    from ..backup.files_cache import FilesCache, cache_folder
    from ..backup.storage import open_storage
    from ..errors import SwarmMaintError

    try:
        repo_id = json.loads(open_storage(repo).read("config"))["id"]
        # not authenticated yet: only a repository id's form may name a path
        if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
            return None
        path = cache_folder(state_dir, repo_id) / "files.db"
        if not path.is_file():
            return None
        cache = FilesCache(path)
    except (OSError, ValueError, LookupError, TypeError, sqlite3.Error, SwarmMaintError):
        return None
    try:
        cache.prefetch([(e.path, e.st) for e in scanned.files], key_ready)
    except sqlite3.Error:
        cache.close()
        return None
    return cache


def _own_repository(repo: str, paths: Sequence[Path]) -> list[str]:
    """An exclude for a local repository inside the tree being backed up: each run would
    otherwise store the previous run's packs again."""
    if "://" in repo or not repo.strip():
        return []
    from ..backup.scan import normalize_paths

    where = os.path.normpath(os.path.abspath(os.path.expanduser(repo)))
    for top in normalize_paths(paths):  # as the scan names what it finds
        if where == top or where.startswith(top.rstrip("/") + "/"):
            # as a glob that matches only itself: [*], [?] and [[] are literal
            return ["".join(f"[{c}]" if c in "*?[" else c for c in where)]
    return []


def backup_restore(snapshot: str, repo: str, target: Path, *, include: Sequence[str] = (),
                   password_file: Path | None = None, json_out: bool = False,
                   config: Path | None = None) -> int:
    """``backup restore``: ``snapshot`` into ``target``; the exit code (3: some files
    failed)."""
    from ..backup.memory import single_arena
    from ..backup.restore import restore as do_restore
    from ..backup.snapshots import find_snapshot

    single_arena()  # before the restore's threads start
    if os.path.lexists(target) and not target.is_dir():
        raise UsageError(f"--target {target}: exists and is not a directory")

    _state, r, _ = state_and_repo(config, repo, password_file)
    sid, _ = find_snapshot(r, snapshot)
    t0 = time.monotonic()
    with locked(r, exclusive=False, reading=True), \
            ProgressBar(not json_out, "restore") as bar, \
            no_cyclic_gc():
        res = do_restore(r, sid, str(target), includes=list(include), progress=bar)
    if include and not (res.files or res.dirs or res.errors):
        raise UsageError(f"--include {' '.join(include)}: matches nothing in snapshot "
                         f"{sid[:16]} (its paths are absolute: see `swarm-maint backup ls`)")
    out = {"snapshot": sid, "files": res.files, "dirs": res.dirs, "bytes": res.bytes,
           "seconds": round(time.monotonic() - t0, 3),
           "errors": res.errors}
    if json_out:
        print_json(out)
    else:
        _say(f"restored {res.files} files ({res.bytes / 2**20:.1f} MiB) of snapshot "
             f"{sid[:16]} to {target}")
        for e in res.errors:
            _say(f"error: {e['path']}: {e['error']}", err=True)
    return EXIT_PARTIAL if res.errors else 0
