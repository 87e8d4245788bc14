"""Real pure-Python wheels written by hand with zipfile (no build backend, no network).

Each wheel holds one module, ``<name with - and . as _>/__init__.py`` with
``VERSION = "<version>"``, and a ``.dist-info`` with METADATA, WHEEL and a RECORD of
sha256 hashes and sizes, as the binary distribution format asks.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_wheel", "wheel_dist_name"]


def wheel_dist_name(name: str) -> str:
    """A project name as wheel file and .dist-info names spell it: lowercase, runs of
    ``-_.`` → ``_``."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def build_wheel(out_dir: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """Write ``<dist>-<version>-py3-none-any.whl`` into ``out_dir``; its path."""
    dist = wheel_dist_name(name)
    info = f"{dist}-{version}.dist-info"
    metadata = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                f"Summary: test package {name}\n"
                + "".join(f"Requires-Dist: {r}\n" for r in requires))
    files = {
        f"{dist}/__init__.py": f'VERSION = "{version}"\n',
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: swarm-maint-tests\n"
                          "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = [f"{path},{_record_hash(text.encode())},{len(text.encode())}"
              for path, text in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out
