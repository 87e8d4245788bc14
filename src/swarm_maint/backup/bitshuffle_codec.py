"""Bit-shuffled zstd for tensor data (compression id 2), through c-blosc.

Model weights (bf16, fp16, fp32) compress poorly as bytes: a byte mixes predictable sign
and exponent bits with near-random mantissa bits. Bitshuffle gathers each bit position of
4-byte elements into a plane of its own, so the predictable planes become runs that zstd
stores as matches and the random ones are stored raw. On the benchmark's bf16-like data
this keeps 69 % of the bytes instead of plain zstd's 80 %, with about half the CPU to
compress and less than half to decode.

A payload is one Blosc1 chunk (c-blosc 1.x); docs/repository-format.md describes it for
an independent reader. Only the package's extension module is loaded: the ``blosc``
package's ``__init__`` also imports its own test suite (unittest, psutil, numpy when
present), 30-50 ms at every start of a command that may never compress a tensor.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import DamagedObjectError

__all__ = ["BLOCK_SIZE", "LEVEL", "TYPESIZE", "compress", "decompress"]

TYPESIZE = 4  # bf16 pairs and fp32 both shuffle well as 4-byte elements
BLOCK_SIZE = 256 << 10  # measured: 64 KiB blocks cost 30-50 % more CPU, 2 MiB lose the shuffle
LEVEL = 1  # blosc level 1 is zstd level 1
_BITSHUFFLE = 2
_HEADER = 16


def _load_extension() -> ModuleType:
    spec = importlib.util.find_spec("blosc")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the blosc package (python-blosc) is not installed")
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"blosc_extension{suffix}"
            ext_spec = importlib.util.spec_from_file_location("blosc.blosc_extension", path)
            if path.is_file() and ext_spec is not None and ext_spec.loader is not None:
                module = importlib.util.module_from_spec(ext_spec)
                ext_spec.loader.exec_module(module)
                return module
    from blosc import blosc_extension  # an unexpected layout: the slower, public way

    module_: ModuleType = blosc_extension
    return module_


_lock = threading.Lock()
_loaded: Any = None


def _extension() -> Any:
    """The extension, loaded on first use (8 ms from a cold page cache: a backup of
    unchanged data never compresses a tensor, so it need not pay that as it starts)."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                ext = _load_extension()
                ext.init()
                # Process-wide settings. Releasing the GIL makes it use c-blosc's context
                # API, safe from several threads; the threads are ours, so blosc's own pool
                # stays at one. (Importing the ``blosc`` package would reset them: nothing
                # here does.)
                ext.set_nthreads(1)
                ext.set_blocksize(BLOCK_SIZE)
                ext.set_releasegil(True)
                _loaded = ext
    return _loaded


def compress(data: bytes | memoryview) -> bytes:
    """One Blosc1 chunk: ``data`` bit-shuffled as 4-byte elements, zstd per 256 KiB block."""
    out: bytes = _extension().compress(data, TYPESIZE, LEVEL, _BITSHUFFLE, "zstd")
    return out


def decompress(payload: bytes | memoryview, raw_length: int, what: str) -> bytes:
    """The original bytes of a chunk made by :func:`compress`; the sizes its header claims
    are checked against the index before anything is allocated."""
    if len(payload) < _HEADER:
        raise DamagedObjectError(f"{what}: bit-shuffled payload is too short", what)
    ext = _extension()
    try:
        nbytes, cbytes, _ = ext.get_cbuffer_sizes(payload)
        if nbytes != raw_length or cbytes != len(payload):
            raise DamagedObjectError(
                f"{what}: bit-shuffled payload claims {nbytes} bytes in {cbytes}, "
                f"expected {raw_length} in {len(payload)}", what)
        data: bytes = ext.decompress(payload, False)
    except ext.error as exc:
        raise DamagedObjectError(f"{what}: cannot decompress: {exc}", what) from None
    return data
