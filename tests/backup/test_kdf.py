"""Key derivation with the standard library: the same keys as cryptography's scrypt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_maint.backup import kdf
from swarm_maint.backup.errors import WrongPasswordError
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage import LocalStorage


@settings(max_examples=25, deadline=None)
@given(password=st.text(max_size=40), salt=st.binary(min_size=1, max_size=32),
       log_n=st.integers(1, 10), r=st.integers(1, 8), p=st.integers(1, 3))
def test_same_key_as_cryptography(password: str, salt: bytes, log_n: int, r: int,
                                  p: int) -> None:
    n = 2 ** log_n
    ours = kdf.derive(password, salt, n, r, p)
    theirs = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode("utf-8"))
    assert ours == theirs and len(ours) == 32


def test_repository_parameters_through_hashlib() -> None:
    """2**15, 8, 1 (what init writes) fits hashlib's memory bound: no fallback needed."""
    key = kdf.derive("pw", b"0123456789abcdef", 2**15, 8, 1)
    assert key == Scrypt(salt=b"0123456789abcdef", length=32, n=2**15, r=8, p=1).derive(b"pw")


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"kdf": "argon2"}', b'{"kdf": "scrypt", "n": 16}',
    b'{"kdf": "scrypt", "salt": "AAAA", "data": "AAAA", "n": 1000, "r": 8, "p": 1}',
    b'{"kdf": "scrypt", "salt": "AAAA", "data": "AAAA", "n": 1024, "r": 0, "p": 1}',
    b'{"kdf": "scrypt", "salt": "!!", "data": "AAAA", "n": 1024, "r": 8, "p": 1}',
    b'{"kdf": "scrypt", "salt": "AAAA", "data": "AAAA", "n": "x", "r": 8, "p": 1}',
])
def test_malformed_key_objects_are_value_errors(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):  # any message
        kdf.parse_key_object(raw)


def test_derive_first_key_opens_the_repository(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    repo = Repository.init(storage, "first")
    repo.add_password("second")
    first = storage.list("keys/")[0]
    derived = kdf.derive_first_key(storage, "first")
    assert list(derived) == [first]
    assert Repository.open(storage, "first", derived=derived).id == repo.id
    # a password that fits another key object: the first one's derivation does not match,
    # and open goes on to the next object as before
    other = kdf.derive_first_key(storage, "second")
    assert Repository.open(storage, "second", derived=other).id == repo.id
    with pytest.raises(WrongPasswordError):
        Repository.open(storage, "neither", derived=kdf.derive_first_key(storage, "neither"))


def test_derive_first_key_without_keys_or_with_a_damaged_one(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "empty")
    assert kdf.derive_first_key(storage, "pw") == {}
    storage = LocalStorage(tmp_path / "repo")
    Repository.init(storage, "pw")
    name = storage.list("keys/")[0]
    (tmp_path / "repo" / name).write_bytes(json.dumps({"kdf": "scrypt"}).encode())
    assert kdf.derive_first_key(storage, "pw") == {}


def test_kdf_module_loads_no_native_engine_module() -> None:
    """What lets the key be derived while the engine is imported in another thread."""
    code = ("import sys; import swarm_maint.backup.kdf, swarm_maint.backup.storage; "
            "print(sorted(m for m in ('cryptography', 'zstandard', 'blake3', 'pyfastcdc') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
