"""Keys and authenticated encryption of every repository object.

The master key (AES-256-GCM key, BLAKE3 id key, chunker seed) is random per repository
and never stored in the clear: each ``keys/<id>`` object wraps it with a key derived from
one password by scrypt, so several passwords can open the same repository.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from typing import NamedTuple

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..hostname import local_hostname
from .errors import DamagedObjectError, WrongPasswordError
from .kdf import derive, parse_key_object

__all__ = ["NONCE_SIZE", "SEAL_OVERHEAD", "TAG_SIZE", "Crypto", "MasterKey", "unwrap_key",
           "wrap_key"]

NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE  # what sealing adds to a plaintext
SCRYPT_N = 2**15  # 32 MiB of memory, ~0.1 s: costly to guess, cheap to open once
SCRYPT_R = 8
SCRYPT_P = 1


class MasterKey(NamedTuple):
    encryption: bytes  # 32 bytes, AES-256-GCM
    id_key: bytes  # 32 bytes, keyed BLAKE3 for blob ids and MACs
    chunker_seed: int  # 63 bits, alters FastCDC's gear table so cut points leak nothing

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32),
                   secrets.randbits(63) | 1)

    def to_json(self) -> bytes:
        return json.dumps({
            "encryption": base64.b64encode(self.encryption).decode(),
            "id_key": base64.b64encode(self.id_key).decode(),
            "chunker_seed": self.chunker_seed,
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MasterKey:
        d = json.loads(raw)
        return cls(base64.b64decode(d["encryption"]), base64.b64decode(d["id_key"]),
                   int(d["chunker_seed"]))


class Crypto:
    """AES-256-GCM with a random 96-bit nonce per object; ``aad`` binds the object's role."""

    def __init__(self, key: MasterKey) -> None:
        self._aead = AESGCM(key.encryption)
        self._id_key = key.id_key

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_into(self, plaintext: bytes | bytearray | memoryview, aad: bytes,
                  out: memoryview) -> None:
        """``seal`` into ``out``, which is exactly ``len(plaintext) + 28`` bytes long."""
        nonce = os.urandom(NONCE_SIZE)
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, aad, out[NONCE_SIZE:])

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """Decrypt and authenticate; DamagedObjectError naming ``what`` otherwise."""
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise DamagedObjectError(f"{what}: truncated ({len(sealed)} bytes)", what)
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DamagedObjectError(f"{what}: authentication failed (damaged or tampered)",
                                     what) from None

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE3 of plaintext: equal content, equal id, and nothing leaks."""
        return blake3.blake3(data, key=self._id_key).digest()

    def mac(self, data: bytes) -> str:
        return blake3.blake3(b"mac:" + data, key=self._id_key).hexdigest()


def wrap_key(key: MasterKey, password: str) -> bytes:
    """The JSON of a ``keys/<id>`` object holding ``key`` under ``password``."""
    salt = secrets.token_bytes(16)
    kek = derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE_SIZE)
    sealed = nonce + AESGCM(kek).encrypt(nonce, key.to_json(), b"swarm-maint key")
    return json.dumps({
        "version": 1,
        "kdf": "scrypt",
        "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(sealed).decode(),
        "created": time.time(),
        "hostname": local_hostname(),
    }, indent=1).encode()


def unwrap_key(raw: bytes, password: str, kek: bytes | None = None) -> MasterKey:
    """Open one key object; WrongPasswordError if the password does not fit. ``kek`` is
    the key derived from ``password`` for this object, when already known."""
    try:
        obj = parse_key_object(raw)
    except ValueError as exc:
        raise DamagedObjectError(f"key object is malformed: {exc}") from None
    if kek is None:
        kek = derive(password, obj.salt, obj.n, obj.r, obj.p)
    sealed = obj.sealed
    try:
        plain = AESGCM(kek).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], b"swarm-maint key")
    except InvalidTag:
        raise WrongPasswordError("wrong password") from None
    return MasterKey.from_json(plain)
