"""Start deriving a repository's key as the process starts, before the command runs.

``backup run`` and ``backup restore`` derive the key-encryption key from the password
(scrypt, ~0.1 s) in one thread while another imports the engine (cli.backup_ops), but
that thread could start only once the command's own modules had loaded: ~0.09 s into the
process from a cold page cache, and the derivation then ended the start-up. ``start``
begins it at once, from what the command line and the environment name, with the
standard library only. ``kdf.derive_first_key`` takes the result (``take``) only when it
was derived from the very password and key object bytes it would use itself, so an early
derivation of anything else (another repository, a key object changed since) is simply
not used. Nothing here is visible: any failure only means the usual derivation runs.
"""

from __future__ import annotations

import os
import re
import threading

__all__ = ["start", "take"]

_COMMANDS = (["backup", "run"], ["backup", "restore"])
_KEY_NAME = re.compile(r"[0-9a-f]{64}")


class _Derivation:
    def __init__(self, repo: str, password: str) -> None:
        self.repo = repo
        self.password = password
        self.done = threading.Event()
        self.result: tuple[bytes, bytes] | None = None  # (key object bytes, its KEK)

    def run(self) -> None:
        try:
            from .kdf import derive, parse_key_object  # light: base64, hashlib, json

            # the first key object, as LocalStorage lists them (directory order); any
            # other is not taken
            with os.scandir(os.path.join(self.repo, "keys")) as it:
                first = next((e.path for e in it if _KEY_NAME.fullmatch(e.name)
                              and e.is_file(follow_symlinks=False)), None)
            if first is not None:
                with open(first, "rb") as f:
                    raw = f.read(1 << 16)
                obj = parse_key_object(raw)
                self.result = (raw, derive(self.password, obj.salt, obj.n, obj.r, obj.p))
        except Exception:  # the usual derivation runs, and reports what went wrong
            self.result = None
        finally:
            self.done.set()


_pending: _Derivation | None = None
_lock = threading.Lock()


def _repo_option(argv: list[str]) -> str | None:
    repo = None
    for i, arg in enumerate(argv):
        if arg in ("--repo", "-r") and i + 1 < len(argv):
            repo = argv[i + 1]
        elif arg.startswith("--repo="):
            repo = arg[len("--repo="):]
    return repo


def start(argv: list[str]) -> None:
    """Derive in a thread, for a ``backup run`` or ``backup restore`` command line with a
    local ``--repo`` and the password in SWARM_MAINT_PASSWORD; otherwise do nothing."""
    global _pending
    if argv[:2] not in _COMMANDS:
        return
    password = os.environ.get("SWARM_MAINT_PASSWORD")
    repo = _repo_option(argv)
    if (not password or not repo or any(a.startswith("--password-file") for a in argv)
            or not os.path.isdir(os.path.join(repo, "keys"))):
        return
    job = _Derivation(repo, password)
    with _lock:
        _pending = job
    threading.Thread(target=job.run, name="early-kdf", daemon=True).start()


def take(password: str, key_object: bytes) -> bytes | None:
    """The key-encryption key derived early from ``password`` and exactly the key object
    bytes ``key_object``, waiting for it when it is still being derived; None when none
    was, or from anything else. A derivation is taken once."""
    global _pending
    with _lock:
        job, _pending = _pending, None
    if job is None or job.password != password:
        return None
    job.done.wait()
    if job.result is None or job.result[0] != key_object:
        return None
    return job.result[1]
