"""Build and drive the fake NVML library (tests/fixtures/fake_nvml/fake_nvml.c).

``build_fake_nvml()`` compiles the C file with gcc into
``tests/fixtures/build/fake_nvml/libnvidia-ml.so.1`` (git-ignored), once per session and
again only when the source is newer than the library. A missing gcc fails the test
loudly: the GPU collector must never go untested because of the build machine.

``FakeNvmlState`` writes the state file the library re-reads on every call; the keys are
documented at the top of the C file. Point the library at it with the environment
variable ``FAKE_NVML_STATE`` (the ``fake_nvml`` fixture in tests/monitoring/conftest.py
does that).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

__all__ = [
    "BUILD_DIR",
    "LIBRARY_NAME",
    "SOURCE",
    "FakeNvmlState",
    "build_fake_nvml",
    "call_count",
    "event_set_count",
    "init_refcount",
    "reset_call_counts",
    "reset_events",
]

SOURCE = Path(__file__).parent / "fixtures" / "fake_nvml" / "fake_nvml.c"
BUILD_DIR = Path(__file__).parent / "fixtures" / "build" / "fake_nvml"
LIBRARY_NAME = "libnvidia-ml.so.1"

GpuState = Mapping[str, object]

_lock = threading.Lock()
_built: Path | None = None


def build_fake_nvml() -> Path:
    """The path of the compiled fake ``libnvidia-ml.so.1``; compiles it when needed."""
    global _built
    with _lock:
        if _built is not None:
            return _built
        lib = BUILD_DIR / LIBRARY_NAME
        if not lib.exists() or lib.stat().st_mtime < SOURCE.stat().st_mtime:
            _compile(lib)
        _built = lib
        return lib


def _compile(lib: Path) -> None:
    cc = os.environ.get("CC") or "gcc"
    compiler = shutil.which(cc)
    if compiler is None:
        pytest.fail(
            f"cannot build the fake NVML library: C compiler {cc!r} not found on PATH "
            "(install gcc; the GPU collector tests need it)",
            pytrace=False,
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename, so parallel sessions never load half a file.
    fd, tmp = tempfile.mkstemp(prefix=".libnvidia-ml.", suffix=".so", dir=lib.parent)
    os.close(fd)
    cmd = [
        compiler, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra",
        f"-Wl,-soname,{LIBRARY_NAME}", "-o", tmp, str(SOURCE),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.fail(
                f"cannot build the fake NVML library: {' '.join(cmd)} exited "
                f"{proc.returncode}:\n{proc.stderr}",
                pytrace=False,
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"state values must be single-line: {text!r}")
    return text


class FakeNvmlState:
    """Writes the fake library's state file from Python values.

    ``write(gpus, **node)``: ``gpus`` is a list of per-GPU dicts (index = position) or a
    dict {index: dict}; keys are the per-GPU keys of the C file without the ``gpuN.``
    prefix (``{"util_gpu": 55, "error.nvmlDeviceGetFanSpeed": 3, "lost": True}``).
    ``node`` holds node-level keys (``init_error=9``, ``driver_version="550.54.15"``,
    ``**{"error.nvmlDeviceGetCount_v2": 999}``). ``device_count`` defaults to the number
    of GPUs given (highest index + 1 for a dict).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gpus: dict[int, dict[str, object]] = {}
        self.node: dict[str, object] = {}

    def write(
        self,
        gpus: Sequence[GpuState] | Mapping[int, GpuState] = (),
        **node: object,
    ) -> None:
        if isinstance(gpus, Mapping):
            self.gpus = {int(i): dict(g) for i, g in gpus.items()}
        else:
            self.gpus = {i: dict(g) for i, g in enumerate(gpus)}
        self.node = dict(node)
        self.flush()

    def update_gpu(self, index: int, **values: object) -> None:
        """Change some keys of one GPU and rewrite the file (``lost=True``, ...)."""
        self.gpus.setdefault(index, {}).update(values)
        self.flush()

    def remove_gpu_key(self, index: int, key: str) -> None:
        self.gpus.get(index, {}).pop(key, None)
        self.flush()

    def update_node(self, **values: object) -> None:
        self.node.update(values)
        self.flush()

    def render(self) -> str:
        node = dict(self.node)
        node.setdefault("device_count", max(self.gpus, default=-1) + 1)
        lines = [f"{key}={_format(value)}" for key, value in node.items()]
        for index in sorted(self.gpus):
            lines.extend(
                f"gpu{index}.{key}={_format(value)}" for key, value in self.gpus[index].items()
            )
        return "\n".join(lines) + "\n"

    def flush(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.render())
        os.replace(tmp, self.path)


def _library(path: Path) -> ctypes.CDLL:
    # Same object as the one pynvml loaded (same file, same soname): no second copy.
    return ctypes.CDLL(str(path))


def call_count(path: Path, function: str) -> int:
    """How often the fake library's ``function`` was called in this process."""
    fn = _library(path).fakeNvmlCallCount
    fn.restype = ctypes.c_uint
    fn.argtypes = [ctypes.c_char_p]
    return int(fn(function.encode()))


def reset_call_counts(path: Path) -> None:
    _library(path).fakeNvmlResetCounters()


def init_refcount(path: Path) -> int:
    """nvmlInit calls not yet matched by nvmlShutdown, in this process."""
    fn = _library(path).fakeNvmlInitRefcount
    fn.restype = ctypes.c_int
    return int(fn())


def reset_events(path: Path) -> None:
    """Forget which ``gpuN.xid_events`` codes were delivered (the per-process counters)."""
    _library(path).fakeNvmlResetEvents()


def event_set_count(path: Path) -> int:
    """NVML event sets created and not yet freed, in this process."""
    fn = _library(path).fakeNvmlEventSetCount
    fn.restype = ctypes.c_int
    return int(fn())
