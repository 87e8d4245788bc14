"""Key objects' password-based key derivation, with the standard library only.

scrypt through ``hashlib`` (OpenSSL, the GIL released) gives the same bytes as
cryptography's, and needs none of the engine's native modules: ``backup run`` derives the
key in one thread while the other imports the engine (0.17 s from a cold page cache) and
scans the tree, so opening a repository costs the slower of the two, not their sum.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .storage.base import Storage

__all__ = ["KeyObject", "derive", "derive_first_key", "parse_key_object"]

_MAXMEM_LIMIT = 2**31 - 1  # what hashlib.scrypt accepts


class KeyObject(NamedTuple):  # not a dataclass: early_kdf loads this module first thing
    salt: bytes
    n: int
    r: int
    p: int
    sealed: bytes  # nonce + AES-256-GCM of the master key under the derived key


def parse_key_object(raw: bytes) -> KeyObject:
    """The fields of a ``keys/<id>`` object; ValueError when it is malformed."""
    try:
        d = json.loads(raw)
        if d.get("kdf") != "scrypt":
            raise ValueError(f"unknown kdf {d.get('kdf')!r}")
        obj = KeyObject(base64.b64decode(d["salt"], validate=True), int(d["n"]),
                        int(d["r"]), int(d["p"]), base64.b64decode(d["data"], validate=True))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"missing or mistyped field: {exc}") from None
    if not (2 <= obj.n <= 2**22 and obj.n & (obj.n - 1) == 0 and 1 <= obj.r <= 64
            and 1 <= obj.p <= 16):
        raise ValueError("scrypt parameters out of range")
    return obj


def derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The 32-byte key-encryption key: scrypt(password, salt, n, r, p)."""
    secret = password.encode("utf-8")
    need = 128 * r * (n + p + 2) + (1 << 20)  # OpenSSL's V and B arrays, and some slack
    if need <= _MAXMEM_LIMIT and hasattr(hashlib, "scrypt"):
        return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=need, dklen=32)
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # beyond hashlib's bound

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


def derive_first_key(storage: Storage, password: str) -> dict[str, bytes]:
    """{name: key-encryption key} for the first key object, the one ``Repository.open``
    tries first (most repositories have one); empty when there is none or it is
    malformed (``open`` then reports it)."""
    names = storage.list("keys/")
    if not names:
        return {}
    try:
        raw = storage.read(names[0])
        obj = parse_key_object(raw)
    except (ValueError, OSError):
        return {}
    from .early_kdf import take

    kek = take(password, raw)  # derived already, as the process started?
    return {names[0]: kek if kek is not None else derive(password, obj.salt, obj.n, obj.r,
                                                          obj.p)}
