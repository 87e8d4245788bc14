"""Backup engine vs restic and borg on an AI-artifact data set, in one run.

The script generates a deterministic data set (``--seed``): safetensors-like checkpoint files
(8-byte little-endian header length, JSON header with BF16 tensors, shapes and data_offsets,
then the tensor data), thousands of small JSON/text shards in nested directories, and a
fine-tuned copy of the first checkpoint in which about a tenth of its big tensors (whole
tensors, spread through the file) have new contents and the layout is unchanged.
Tensor values are bf16-like: the high byte (sign + exponent) comes from a narrow range
(0x3c-0x3f, either sign) and the low byte is random, so general-purpose compressors shrink
it only slightly, as with real checkpoints.

Then swarm-maint's backup engine, restic and borg (Debian packages), with repositories,
caches, data and restores all on the filesystem of ``--workdir``, go through five steps,
one step for all tools before the next step (the order of the tools rotates from step to
step, and each measured command starts 2 s after the page cache was dropped):

1. init        create an encrypted repository
2. initial     back up the data set (checkpoints + shards)
3. unchanged   back it up again, nothing changed
4. finetuned   back up the data set directory after adding the fine-tuned copy at a new
               path (so the new file is mostly already stored: chunking and hashing dominate)
5. restore     restore the latest snapshot into an empty directory; every file is then
               compared with the original by SHA-256 (not timed)

The five steps run ``--rounds`` times (default 5), each round from empty repositories, and
the report gives the medians, each step's time in every round, and for each target how
many rounds met it: this VM's speed moves by tens of percent within an hour, so one
round's ratio says little.

Each command runs under ``/usr/bin/time -v`` while psutil samples the summed RSS of its
process tree every 50 ms; peak RSS is the larger of the two. Time is the wall time of the
command. Bytes added is the growth of the repository directory on disk (allocated blocks,
as ``du`` counts them); local caches are outside it and reported separately. Where
``/proc/sys/vm/drop_caches`` is writable the page cache is dropped (after ``sync``) before
every step of every tool; otherwise the output says caches were warm.

It also measures ceilings on this machine: chunking (FastCDC, avg 1 MiB, min 512 KiB,
max 8 MiB) + keyed BLAKE3 + AES-256-GCM over a 256 MiB in-memory buffer (1 and 2 threads);
writing 504 MiB as 8 MiB files (the engine's pack size), each fsynced then renamed; and
reading them back cold.

    .venv/bin/python bench/backup_vs_restic.py --size-gib 1 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import importlib
import itertools
import json
import math
import mmap
import os
import platform
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

import _report  # bench/_report.py: the script's folder is on sys.path
from _common import positive_int, swarm_version, version_line

BEGIN = "<!-- BEGIN backup_vs_restic -->"
END = "<!-- END backup_vs_restic -->"
COMMAND = ".venv/bin/python bench/backup_vs_restic.py --size-gib 1 --write BENCHMARKS.md"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_PARENT = REPO_ROOT / "bench" / "results"  # ignored by git
MIB = 1 << 20
GIB = 1 << 30
PASSWORD = "backup-bench-password-not-a-secret"
SETTLE_SECONDS = 2.0
LOCK_WAIT = "60"
TIME_BIN = Path("/usr/bin/time")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")

TOOLS = ("swarm", "restic", "borg")
SCENARIOS = ("init", "initial", "unchanged", "finetuned", "restore")
LABELS = {
    "init": "init",
    "initial": "initial backup",
    "unchanged": "unchanged re-run",
    "finetuned": "fine-tuned copy",
    "restore": "full restore",
}

# Targets from the issue, all against restic.
TARGET_INITIAL_SPEEDUP = 3.0  # initial backup: at least 3x restic's throughput
TARGET_FINETUNED_SPEEDUP = 4.0  # fine-tuned copy: at least 4x
TARGET_UNCHANGED_TIME = 0.5  # unchanged re-run: at most half restic's time
TARGET_RESTORE_SPEEDUP = 2.0  # restore: at least 2x
# Bytes stored and peak RSS: no more than restic's.

# Ceiling parameters.
CDC_AVG, CDC_MIN, CDC_MAX = 1 * MIB, 512 * 1024, 8 * MIB
CEILING_BUF = 256 * MIB
CPU_REPEATS = 3  # each CPU stage: best of 3
DISK_REPEATS = 2  # write and cold read: best of 2
DISK_FILE = 8 * MIB  # the engine's pack size (packs.PACK_TARGET)
DISK_TOTAL = 63 * DISK_FILE

# bf16-like high byte: sign bit kept, exponent bits squeezed into 0x3c-0x3f.
HIGH_BYTE = bytes((0x3C | (b & 0x03)) | (b & 0x80) for b in range(256))
HIDDEN = 1024
FFN = 2816


# -- helpers --------------------------------------------------------------------------------


def log(msg: str) -> None:
    sys.stderr.write(f"backup_vs_restic: {msg}\n")
    sys.stderr.flush()




def size_gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.05 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 0.05 and 64 (GiB)")
    return value


def tool_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TOOLS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(TOOLS)}; got {text!r}")
    return [t for t in TOOLS if t in names]


def fmt_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            digits = 2 if unit == "GiB" else 1
            return f"{sign}{n / scale:.{digits}f} {unit}"
    return f"{sign}{n:.0f} B"


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds if seconds > 0 else float("nan")


def du(path: Path) -> tuple[int, int]:
    """(allocated bytes as du counts them, apparent bytes) of a tree; (0, 0) if absent."""
    allocated = apparent = 0
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0, 0
    allocated += st.st_blocks * 512
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            try:
                s = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            allocated += s.st_blocks * 512
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            else:
                apparent += s.st_size
    return allocated, apparent


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes; False if not permitted."""
    os.sync()
    try:
        with DROP_CACHES.open("w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


# -- data set -------------------------------------------------------------------------------


def bf16_like(rng: random.Random, nbytes: int) -> bytearray:
    """nbytes (even) of little-endian bf16-like values: random low byte, narrow high byte."""
    out = bytearray()
    for start in range(0, nbytes, 64 * MIB):  # randbytes() is limited to < 256 MiB a call
        raw = rng.randbytes(min(64 * MIB, nbytes - start))
        piece = bytearray(raw)
        piece[1::2] = raw[1::2].translate(HIGH_BYTE)
        out += piece
    return out


@dataclass
class Tensor:
    name: str
    shape: list[int]
    nbytes: int


@dataclass
class FileInfo:
    rel: str
    size: int
    sha256: str


@dataclass
class Dataset:
    root: Path
    checkpoints: list[FileInfo]
    shards: list[FileInfo]
    finetuned: FileInfo
    tensors_per_file: int
    changed_tensors: int
    changed_bytes: int
    shard_dirs: int
    zlib_checkpoint: float  # compressed / original, zlib level 1, first 8 MiB of tensor data
    zlib_shards: float
    staging: Path  # where the fine-tuned copy waits until step 4

    @property
    def base_files(self) -> list[FileInfo]:
        return self.checkpoints + self.shards

    @property
    def base_bytes(self) -> int:
        return sum(f.size for f in self.base_files)

    @property
    def all_files(self) -> list[FileInfo]:
        return [*self.base_files, self.finetuned]

    @property
    def all_bytes(self) -> int:
        return self.base_bytes + self.finetuned.size


def layer_tensors(layer: int) -> list[Tensor]:
    p = f"model.layers.{layer}."
    shapes: list[tuple[str, list[int]]] = [
        ("input_layernorm.weight", [HIDDEN]),
        ("self_attn.q_proj.weight", [HIDDEN, HIDDEN]),
        ("self_attn.k_proj.weight", [HIDDEN // 4, HIDDEN]),
        ("self_attn.v_proj.weight", [HIDDEN // 4, HIDDEN]),
        ("self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
        ("post_attention_layernorm.weight", [HIDDEN]),
        ("mlp.gate_proj.weight", [FFN, HIDDEN]),
        ("mlp.up_proj.weight", [FFN, HIDDEN]),
        ("mlp.down_proj.weight", [HIDDEN, FFN]),
    ]
    return [Tensor(p + n, s, 2 * math.prod(s)) for n, s in shapes]


def checkpoint_layout(first_layer: int, data_bytes: int) -> tuple[list[Tensor], int]:
    """Tensors filling data_bytes (the last one shortened along dim 0); next layer index."""
    tensors: list[Tensor] = []
    remaining = data_bytes
    layer = first_layer
    while remaining >= 2 * HIDDEN:
        for t in layer_tensors(layer):
            if t.nbytes > remaining:
                row = t.nbytes // t.shape[0]
                rows = remaining // row
                if rows == 0:
                    continue
                t = Tensor(t.name, [rows, *t.shape[1:]], rows * row)
            tensors.append(t)
            remaining -= t.nbytes
            if remaining < 2 * HIDDEN:
                break
        layer += 1
    return tensors, layer


def safetensors_header(tensors: Sequence[Tensor]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "generator": "backup_vs_restic"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": "BF16", "shape": t.shape,
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header with spaces to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def write_checkpoint(path: Path, tensors: Sequence[Tensor], seed: str,
                     contents: Callable[[Tensor], bytes | bytearray] | None = None) -> FileInfo:
    h = hashlib.sha256()
    size = 0
    with path.open("wb") as f:
        head = safetensors_header(tensors)
        f.write(head)
        h.update(head)
        size += len(head)
        for t in tensors:
            data = contents(t) if contents else bf16_like(random.Random(f"{seed}/{t.name}"),
                                                          t.nbytes)
            f.write(data)
            h.update(data)
            size += len(data)
    return FileInfo("", size, h.hexdigest())


WORDS_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"


def write_shards(root: Path, count: int, seed: str) -> tuple[list[FileInfo], int, float]:
    """count JSON/text files of 200 B - 20 KiB (log-uniform) in two levels of directories."""
    rng = random.Random(f"{seed}/shards")
    vocab = ["".join(rng.choices(WORDS_LETTERS, k=rng.randint(2, 10))) for _ in range(5000)]
    cum = list(itertools.accumulate(1.0 / (k + 1) for k in range(len(vocab))))  # Zipf-like
    infos: list[FileInfo] = []
    dirs: set[Path] = set()
    sample = bytearray()
    for i in range(count):
        size = int(math.exp(rng.uniform(math.log(200), math.log(20 * 1024))))
        text = " ".join(rng.choices(vocab, cum_weights=cum, k=size // 5 + 8))
        d = root / f"{i % 16:02x}" / f"{(i // 16) % 16:02x}"
        if i % 3 == 2:
            rel = d / f"part-{i:05d}.txt"
            body = text[:size].encode()
        else:
            rel = d / f"part-{i:05d}.json"
            doc = {"id": f"doc-{i:06d}", "source": "crawl-2024-10", "lang": "en",
                   "quality": round(rng.random(), 4), "text": ""}
            doc["text"] = text[: max(16, size - len(json.dumps(doc)))]
            body = (json.dumps(doc) + "\n").encode()
        if d not in dirs:
            d.mkdir(parents=True, exist_ok=True)
            dirs.add(d)
        rel.write_bytes(body)
        if len(sample) < 4 * MIB:
            sample += body
        infos.append(FileInfo(str(rel), len(body), hashlib.sha256(body).hexdigest()))
    ratio = len(zlib.compress(bytes(sample), 1)) / max(1, len(sample))
    return infos, len(dirs), ratio


def make_dataset(work: Path, total_gib: float, small_files: int, seed: int) -> Dataset:
    root = work / "data"
    ckpt_dir = root / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    n_files = 4 if total_gib <= 2 else math.ceil(total_gib / 0.5)
    per_file = int(total_gib * GIB / n_files) // MIB * MIB
    s = str(seed)
    checkpoints: list[FileInfo] = []
    layouts: list[list[Tensor]] = []
    layer = 0
    for i in range(n_files):
        tensors, layer = checkpoint_layout(layer, per_file)
        name = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
        info = write_checkpoint(ckpt_dir / name, tensors, s)
        info.rel = f"checkpoints/{name}"
        checkpoints.append(info)
        layouts.append(tensors)
        log(f"wrote {info.rel} ({fmt_bytes(info.size)}, {len(tensors)} tensors)")

    first = layouts[0]
    sample = bf16_like(random.Random(f"{s}/{first[1].name}"), min(8 * MIB, first[1].nbytes))
    zlib_ckpt = len(zlib.compress(bytes(sample), 1)) / len(sample)

    shard_infos, n_dirs, zlib_shards = write_shards(root / "shards", small_files, s)
    for f in shard_infos:
        f.rel = str(Path(f.rel).relative_to(root))
    log(f"wrote {len(shard_infos)} shards ({fmt_bytes(sum(f.size for f in shard_infos))}) "
        f"in {n_dirs} directories")

    # Fine-tuned copy of the first checkpoint: ~10 % of its big tensors, evenly spread,
    # get new contents; everything else is copied byte for byte from the original.
    big = [k for k, t in enumerate(first) if t.nbytes >= MIB // 2]
    m = max(1, round(len(big) / 10))
    changed = {big[int((k + 0.5) * len(big) / m)] for k in range(m)}
    changed_names = {first[k].name for k in changed}
    staging = work / "staging"
    staging.mkdir()
    orig = (root / checkpoints[0].rel).open("rb")
    orig.seek(len(safetensors_header(first)))

    def ft_contents(t: Tensor) -> bytes | bytearray:
        data = orig.read(t.nbytes)
        if t.name in changed_names:
            return bf16_like(random.Random(f"{s}/finetuned/{t.name}"), t.nbytes)
        return data

    ft_name = Path(checkpoints[0].rel).name
    with orig:
        ft = write_checkpoint(staging / ft_name, first, s, ft_contents)
    ft.rel = f"finetuned/{ft_name}"
    changed_bytes = sum(first[k].nbytes for k in changed)
    log(f"wrote the fine-tuned copy ({len(changed)} of {len(first)} tensors changed, "
        f"{fmt_bytes(changed_bytes)})")
    return Dataset(root, checkpoints, shard_infos, ft, len(first), len(changed),
                   changed_bytes, n_dirs, zlib_ckpt, zlib_shards, staging)


def add_finetuned(ds: Dataset) -> None:
    dest = ds.root / ds.finetuned.rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(ds.staging / dest.name, dest)


def remove_finetuned(ds: Dataset) -> None:
    """Undo add_finetuned (between rounds), leaving the data set as generated."""
    dest = ds.root / ds.finetuned.rel
    if dest.exists():
        os.rename(dest, ds.staging / dest.name)
        with contextlib.suppress(OSError):
            dest.parent.rmdir()  # only if add_finetuned made it and it is empty


def find_restored_root(target: Path, data_root: Path) -> Path | None:
    candidates = [target / data_root.relative_to(data_root.anchor), target / data_root.name,
                  target]
    for c in candidates:
        if (c / "checkpoints").is_dir():
            return c
    for p in sorted(target.rglob("checkpoints")):
        if p.is_dir():
            return p.parent
    return None


def verify_restore(target: Path, ds: Dataset) -> tuple[bool, str]:
    root = find_restored_root(target, ds.root)
    if root is None:
        return False, "restored tree has no checkpoints/ directory"
    bad: list[str] = []
    for f in ds.all_files:
        p = root / f.rel
        try:
            ok = p.stat().st_size == f.size and sha256_file(p) == f.sha256
        except OSError:
            ok = False
        if not ok:
            bad.append(f.rel)
    n = len(ds.all_files)
    if bad:
        return False, f"{len(bad)} of {n} files missing or different (first: {bad[0]})"
    return True, f"all {n} files byte-identical (SHA-256)"


# -- running the tools ----------------------------------------------------------------------


@dataclass
class Exec:
    rc: int
    seconds: float
    cpu_s: float
    peak_rss: int
    stdout: str
    stderr: str
    timed_out: bool = False


def _tree_rss(root: psutil.Process, include_root: bool) -> int:
    procs = root.children(recursive=True)
    if include_root:
        procs.append(root)
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def execute(argv: list[str], cwd: Path, env: dict[str, str], logbase: Path,
            timeout: float) -> Exec:
    """Run argv under /usr/bin/time -v (when present) and a 50 ms psutil RSS sampler."""
    tfile = logbase.with_suffix(".time")
    out_path, err_path = logbase.with_suffix(".out"), logbase.with_suffix(".err")
    wrapped = TIME_BIN.exists()
    full = [str(TIME_BIN), "-v", "-o", str(tfile), *argv] if wrapped else argv
    peak = 0
    stop = threading.Event()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)

        def sample() -> None:
            nonlocal peak
            try:
                ps = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, _tree_rss(ps, include_root=not wrapped))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            _kill_group(proc)

        # a blocking wait returns as the process ends; wait(timeout) would poll in steps
        # of up to 50 ms, adding 25 ms on average to every time measured
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            seconds = time.perf_counter() - t0
            timer.cancel()
            stop.set()
            sampler.join()
    cpu_s = 0.0
    if wrapped and tfile.exists():
        text = tfile.read_text(errors="replace")
        if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
            peak = max(peak, int(m.group(1)) * 1024)
        user = re.search(r"User time \(seconds\): ([\d.]+)", text)
        system = re.search(r"System time \(seconds\): ([\d.]+)", text)
        cpu_s = (float(user.group(1)) if user else 0.0) + (float(system.group(1))
                                                           if system else 0.0)
    return Exec(proc.returncode if not timed_out else -1, seconds, cpu_s, peak,
                out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                timed_out)


def first_error_line(stderr: str) -> str:
    """First line of stderr; for a Python traceback, its last line (the exception)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "no message on stderr"
    if lines[0].startswith("Traceback"):
        return lines[-1]
    return lines[0]


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a command printed: the whole output, else its last line."""
    text = text.strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return None


@dataclass
class Paths:
    work: Path
    data: Path
    bins: dict[str, str]

    def repo(self, tool: str) -> Path:
        return self.work / "repos" / tool

    def cache(self, tool: str) -> Path:
        return self.work / "cache" / tool

    def restore(self, tool: str) -> Path:
        return self.work / "restore" / tool


def tool_env(tool: str, paths: Paths) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RESTIC_", "BORG_"))
           and k not in ("SWARM_MAINT_PASSWORD", "XDG_STATE_HOME")}
    env["XDG_CACHE_HOME"] = str(paths.cache(tool))
    if tool == "restic":
        env["RESTIC_PASSWORD"] = PASSWORD
    elif tool == "borg":
        env.update({
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(paths.cache(tool)),  # borg's cache, keys and security dirs
            "BORG_DISPLAY_PASSPHRASE": "no",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        })
    else:
        env["SWARM_MAINT_PASSWORD"] = PASSWORD
        # swarm-maint keeps its files cache (and the lease) in its state directory
        env["XDG_STATE_HOME"] = str(paths.cache(tool))
    return env


def command(tool: str, scenario: str, paths: Paths) -> tuple[list[str], Path]:
    """argv and working directory of one step; backups run in the workdir."""
    b = paths.bins[tool]
    repo, data, work = str(paths.repo(tool)), str(paths.data), paths.work
    target = paths.restore(tool)
    if tool == "restic":
        base = [b, "-r", repo, "--cache-dir", str(paths.cache(tool))]
        if scenario == "init":
            return [*base, "init"], work
        if scenario == "restore":
            return [*base, "restore", "latest", "--target", str(target)], work
        return [*base, "backup", data], work
    if tool == "borg":
        if scenario == "init":
            return [b, "init", "--lock-wait", LOCK_WAIT, "--encryption=repokey-blake2", repo], work
        if scenario == "restore":  # borg has no "latest": the archive of the last backup step
            return [b, "extract", "--lock-wait", LOCK_WAIT, f"{repo}::finetuned"], target
        return [b, "create", "--lock-wait", LOCK_WAIT, f"{repo}::{scenario}",
                paths.data.name], work
    if scenario == "init":
        return [b, "backup", "init", "--repo", repo], work
    if scenario == "restore":
        return [b, "backup", "restore", "--repo", repo, "latest", "--target", str(target)], work
    return [b, "backup", "run", "--repo", repo, "--json", data], work


def symbolic_commands(tools: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """(command, where it runs) with placeholders, for the report."""
    sym = Paths(Path("WORK"), Path("WORK/data"), {t: t for t in TOOLS})
    sym.bins["swarm"] = ".venv/bin/swarm-maint"
    out: dict[str, list[tuple[str, str]]] = {}
    for tool in tools:
        lines: list[tuple[str, str]] = []
        for sc in ("init", "initial", "restore"):
            argv, cwd = command(tool, sc, sym)
            text = " ".join(argv)
            text = (text.replace(f"WORK/repos/{tool}", "REPO")
                    .replace(f"WORK/cache/{tool}", "CACHE")
                    .replace(f"WORK/restore/{tool}", "TARGET").replace("WORK/data", "DATA"))
            lines.append((text, "" if cwd == sym.work else " (run in TARGET)"))
        out[tool] = lines
    return out


@dataclass
class Run:
    tool: str
    scenario: str
    ok: bool
    error: str = ""
    seconds: float = float("nan")
    cpu_s: float = float("nan")
    peak_rss: int = 0
    repo_before: int = 0
    repo_after: int = 0
    basis_bytes: int = 0
    cold_cache: bool = False
    note: str = ""
    verified: bool | None = None
    tool_json: dict[str, Any] | None = None

    @property
    def added(self) -> int:
        return self.repo_after - self.repo_before

    @property
    def throughput(self) -> float:
        return mib_s(self.basis_bytes, self.seconds) if self.basis_bytes else float("nan")


def median_run(runs: Sequence[Run]) -> Run:
    """One step's runs over the rounds as one: the first failure if any failed, else the
    median time, CPU time and peak RSS (the lower middle one for an even count, so each
    figure is one that was measured); bytes added are those of the median-time run."""
    failed = [r for r in runs if not r.ok]
    if failed:
        return failed[0]
    by_time = sorted(runs, key=lambda r: r.seconds)
    mid = by_time[(len(by_time) - 1) // 2]

    def med(values: Sequence[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2]

    return Run(mid.tool, mid.scenario, True, seconds=mid.seconds,
               cpu_s=med([r.cpu_s for r in runs]),
               peak_rss=int(med([r.peak_rss for r in runs])),
               repo_before=mid.repo_before, repo_after=mid.repo_after,
               basis_bytes=mid.basis_bytes, cold_cache=all(r.cold_cache for r in runs),
               note=mid.note, verified=(None if any(r.verified is None for r in runs)
                                        else all(r.verified for r in runs)),
               tool_json=mid.tool_json)


def basis_bytes(scenario: str, ds: Dataset) -> int:
    return {"init": 0, "initial": ds.base_bytes, "unchanged": ds.base_bytes,
            "finetuned": ds.finetuned.size, "restore": ds.all_bytes}[scenario]


def run_step(tool: str, scenario: str, paths: Paths, ds: Dataset, timeout: float) -> Run:
    repo = paths.repo(tool)
    before = du(repo)[0]
    if scenario == "restore":
        target = paths.restore(tool)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
    if tool != "swarm" or Path(paths.bins[tool]).exists():
        argv, cwd = command(tool, scenario, paths)
    else:
        return Run(tool, scenario, False, f"{paths.bins[tool]} not found",
                   basis_bytes=basis_bytes(scenario, ds))
    cold = drop_caches()
    time.sleep(SETTLE_SECONDS)  # let the disk finish what the previous step left
    log(f"{tool}: {LABELS[scenario]}: {shlex.join(argv)}")
    ex = execute(argv, cwd, tool_env(tool, paths), paths.work / "logs" / f"{tool}-{scenario}",
                 timeout)
    run = Run(tool, scenario, ex.rc == 0, seconds=ex.seconds, cpu_s=ex.cpu_s,
              peak_rss=ex.peak_rss, repo_before=before, repo_after=du(repo)[0],
              basis_bytes=basis_bytes(scenario, ds), cold_cache=cold)
    if tool == "borg" and ex.rc == 1:  # borg: 1 is a warning, the archive is complete
        run.ok = True
        run.note = f"borg warning: {first_error_line(ex.stderr)}"
    if ex.timed_out:
        run.ok, run.error = False, f"timed out after {timeout:g} s"
    elif not run.ok:
        run.error = f"rc {ex.rc}: {first_error_line(ex.stderr)}"
    if run.ok and tool == "swarm" and scenario in ("initial", "unchanged", "finetuned"):
        run.tool_json = parse_json_object(ex.stdout)
        if run.tool_json and run.tool_json.get("partial"):
            run.note = f"partial snapshot: {run.tool_json.get('errors')}"
    if scenario == "restore":
        if run.ok:
            run.verified, msg = verify_restore(paths.restore(tool), ds)
            run.note = msg if not run.note else f"{run.note}; {msg}"
        shutil.rmtree(paths.restore(tool), ignore_errors=True)
    status = (f"{run.seconds:.2f} s, +{fmt_bytes(run.added)}, peak RSS "
              f"{run.peak_rss / MIB:.0f} MiB" if run.ok else f"FAILED {run.error}")
    log(f"{tool}: {LABELS[scenario]}: {status}{'; ' + run.note if run.note else ''}")
    return run


# -- ceilings -------------------------------------------------------------------------------


@dataclass
class Ceilings:
    cpu: dict[str, dict[int, float]] = field(default_factory=dict)  # stage -> threads -> MiB/s
    avg_chunk: float = 0.0
    cpu_note: str = ""
    write: float = float("nan")
    read: float = float("nan")
    write_direct: float = float("nan")  # O_DIRECT from an aligned buffer, as the engine does
    read_direct: float = float("nan")
    read_note: str = ""

    @property
    def disk_write(self) -> float:
        """The faster of the two ways to write fsynced packs on this disk."""
        return max(self.write, self.write_direct)

    @property
    def disk_read(self) -> float:
        return max(self.read, self.read_direct)

    def best(self, stage: str) -> float:
        vals = list(self.cpu.get(stage, {}).values())
        return max(vals) if vals else float("nan")

    def for_scenario(self, scenario: str) -> tuple[float, str]:
        """The ceiling a step is compared with, and what it is made of."""
        def low(parts: list[tuple[str, float]]) -> tuple[float, str]:
            vals = [(v, n) for n, v in parts if not math.isnan(v)]
            if not vals:
                return float("nan"), ""
            v, n = min(vals)
            return v, n
        if scenario == "initial":
            return low([("chunk+hash+encrypt", self.best("chunk+hash+encrypt")),
                        ("disk read", self.disk_read), ("fsynced write", self.disk_write)])
        if scenario == "finetuned":
            return low([("chunk+hash", self.best("chunk+hash")), ("disk read", self.disk_read)])
        if scenario == "restore":
            return low([("decrypt+hash", self.best("decrypt+hash")),
                        ("disk read", self.disk_read)])
        return float("nan"), ""


def _split(buf: bytearray, parts: int) -> list[memoryview]:
    view = memoryview(buf)
    step = len(buf) // parts
    return [view[i * step:(i + 1) * step if i < parts - 1 else len(buf)] for i in range(parts)]


def cpu_ceilings(buf: bytearray) -> Ceilings:
    c = Ceilings()
    try:
        fastcdc: Any = importlib.import_module("pyfastcdc")
        blake3: Any = importlib.import_module("blake3")
        aead: Any = importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
    except ImportError as exc:
        c.cpu_note = f"CPU ceiling not measured: {exc}"
        return c
    hkey, ekey = bytes(range(32)), bytes(range(32, 64))

    def chunker() -> Any:
        return fastcdc.FastCDC(CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)

    def chunk(part: memoryview) -> int:
        return sum(1 for _ in chunker().cut_buf(part))

    def chunk_hash(part: memoryview) -> int:
        n = 0
        for ch in chunker().cut_buf(part):
            blake3.blake3(ch.data, key=hkey).digest()
            n += 1
        return n

    def chunk_hash_encrypt(part: memoryview, keep: bool = False) -> list[Any]:
        """Ciphertexts are dropped as they are made, unless kept for the decrypt stage."""
        aes = aead.AESGCM(ekey)
        out: list[Any] = []
        for i, ch in enumerate(chunker().cut_buf(part)):
            digest = blake3.blake3(ch.data, key=hkey).digest()
            nonce = i.to_bytes(12, "little")
            ct = aes.encrypt(nonce, ch.data, None)
            out.append((nonce, ct, digest) if keep else len(ct))
        return out

    def decrypt_hash(items: list[tuple[bytes, bytes, bytes]]) -> int:
        aes = aead.AESGCM(ekey)
        for nonce, ct, digest in items:
            if blake3.blake3(aes.decrypt(nonce, ct, None), key=hkey).digest() != digest:
                raise RuntimeError("decrypt+hash ceiling: digest mismatch")
        return len(items)

    def timed(fn: Callable[[Any], Any], parts: Sequence[Any]) -> tuple[float, list[Any]]:
        """Best of CPU_REPEATS: a ceiling is what the machine can do, not its noise."""
        best, results = math.inf, []
        with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
            for _ in range(CPU_REPEATS):
                t0 = time.perf_counter()
                results = list(pool.map(fn, parts))
                best = min(best, time.perf_counter() - t0)
        return best, results

    size = len(buf)
    s, res = timed(chunk, _split(buf, 1))
    c.cpu["chunk"] = {1: mib_s(size, s)}
    c.avg_chunk = size / max(1, res[0])
    for stage, fn in (("chunk+hash", chunk_hash), ("chunk+hash+encrypt", chunk_hash_encrypt)):
        c.cpu[stage] = {}
        for threads in (1, 2):
            s, _ = timed(fn, _split(buf, threads))
            c.cpu[stage][threads] = mib_s(size, s)
    items: list[tuple[bytes, bytes, bytes]] = chunk_hash_encrypt(memoryview(buf), keep=True)
    c.cpu["decrypt+hash"] = {}
    for threads in (1, 2):
        half = len(items) // 2
        groups = [items] if threads == 1 else [items[:half], items[half:]]
        s, _ = timed(decrypt_hash, groups)
        c.cpu["decrypt+hash"][threads] = mib_s(size, s)
    del items
    return c


def _evict(c: Ceilings, names: list[Path]) -> None:
    if drop_caches():
        c.read_note = "the page cache dropped before reading"
        return
    for final in names:  # evict just these files; works without root
        fd = os.open(final, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    c.read_note = "the files evicted with posix_fadvise(DONTNEED) before reading"


def _write_packs(where: Path, names: list[Path], source: memoryview, direct: bool) -> float:
    slots = max(1, len(source) // DISK_FILE)
    t0 = time.perf_counter()
    for i, final in enumerate(names):
        tmp = final.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if direct else 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            chunk = source[(i % slots) * DISK_FILE:(i % slots + 1) * DISK_FILE]
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    dfd = os.open(where, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return time.perf_counter() - t0


def _read_packs(names: list[Path], dest: memoryview, direct: bool) -> float:
    t0 = time.perf_counter()
    for final in names:
        fd = os.open(final, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            while os.readv(fd, [dest]):
                pass
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def disk_ceilings(c: Ceilings, where: Path, buf: bytearray) -> None:
    """Write DISK_TOTAL as DISK_FILE files (write tmp, fsync, rename), then read them back
    cold; through the page cache and with O_DIRECT from page-aligned buffers (the
    engine's way); best of DISK_REPEATS rounds for each."""
    n = DISK_TOTAL // DISK_FILE
    aligned = mmap.mmap(-1, min(len(buf), 4 * DISK_FILE) // DISK_FILE * DISK_FILE
                        or DISK_FILE)
    aligned[:] = bytes(buf[:len(aligned)]).ljust(len(aligned), b"\0")
    rbuf = mmap.mmap(-1, DISK_FILE)
    aligned_view, rview, buf_view = memoryview(aligned), memoryview(rbuf), memoryview(buf)
    best = {"write": math.inf, "read": math.inf, "write_direct": math.inf,
            "read_direct": math.inf}
    try:
        for _ in range(DISK_REPEATS):
            for direct in (False, True):
                where.mkdir(parents=True)
                names = [where / f"pack-{i:04d}" for i in range(n)]
                w = _write_packs(where, names, aligned_view if direct else buf_view, direct)
                _evict(c, names)
                r = _read_packs(names, rview, direct)
                key = "_direct" if direct else ""
                best["write" + key] = min(best["write" + key], w)
                best["read" + key] = min(best["read" + key], r)
                shutil.rmtree(where)
    finally:
        for v in (aligned_view, rview, buf_view):
            v.release()
        aligned.close()
        rbuf.close()
    c.write = mib_s(DISK_TOTAL, best["write"])
    c.read = mib_s(DISK_TOTAL, best["read"])
    c.write_direct = mib_s(DISK_TOTAL, best["write_direct"])
    c.read_direct = mib_s(DISK_TOTAL, best["read_direct"])


# -- report ---------------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    best, desc = "", "unknown filesystem"
    p = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, *_ = line.split()
            if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, desc = mnt, f"{fstype} on {dev} (mounted at {mnt})"
    except (OSError, ValueError):
        pass
    return desc






def environment(paths: Paths, tools: Sequence[str]) -> dict[str, str]:
    env = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": _report.cpu_model(),
        "memory": fmt_bytes(psutil.virtual_memory().total),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "filesystem": filesystem_of(paths.work),
        "swarm": f"swarm-maint {swarm_version()}",
    }
    if "restic" in tools:
        env["restic"] = version_line([paths.bins["restic"], "version"])
    if "borg" in tools:
        env["borg"] = version_line([paths.bins["borg"], "--version"])
    return env


def restic_repo_version(paths: Paths) -> str:
    argv = [paths.bins["restic"], "-r", str(paths.repo("restic")), "--cache-dir",
            str(paths.cache("restic")), "cat", "config"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             env=tool_env("restic", paths))
        return str(json.loads(out.stdout)["version"])
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return "unknown"


def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.0f} %"


def results_rows(runs: dict[tuple[str, str], Run], tools: Sequence[str],
                 ceil: Ceilings) -> list[list[str]]:
    rows = [["tool", "step", "seconds", "MiB/s", "added to repo", "peak RSS MiB", "CPU s",
             "of ceiling", "note"]]
    for tool in tools:
        for sc in SCENARIOS:
            r = runs.get((tool, sc))
            if r is None:
                continue
            if not r.ok:
                rows.append([tool, LABELS[sc], "-", "-", "-", "-", "-", "-",
                             f"failed: {r.error}"])
                continue
            limit, _ = ceil.for_scenario(sc)
            tput = r.throughput
            rows.append([
                tool, LABELS[sc], f"{r.seconds:.2f}",
                "-" if math.isnan(tput) else f"{tput:.1f}",
                fmt_bytes(r.added), f"{r.peak_rss / MIB:.0f}",
                "-" if math.isnan(r.cpu_s) else f"{r.cpu_s:.1f}",
                pct(tput / limit) if not math.isnan(tput) else "-",
                r.note,
            ])
    return rows


def ratio_rows(runs: dict[tuple[str, str], Run], tools: Sequence[str]) -> list[list[str]]:
    peers = [p for p in ("restic", "borg") if p in tools]
    if "swarm" not in tools or not peers:
        return []
    head = ["step"]
    for p in peers:
        head += [f"speed vs {p}", f"added vs {p}", f"RSS vs {p}"]
    rows = [head]
    for sc in SCENARIOS:
        s = runs[("swarm", sc)]
        row = [LABELS[sc]]
        for p in peers:
            r = runs[(p, sc)]
            if not (s.ok and r.ok):
                row += ["-", "-", "-"]
                continue
            row += [f"{r.seconds / s.seconds:.2f}x",
                    f"{s.added / r.added:.2f}" if r.added > 0 else "-",
                    f"{s.peak_rss / r.peak_rss:.2f}" if r.peak_rss else "-"]
        rows.append(row)
    return rows


def stored(runs: dict[tuple[str, str], Run], tool: str) -> int | None:
    r = runs.get((tool, "finetuned"))
    return r.repo_after if r is not None and r.ok else None


def targets_check(runs: dict[tuple[str, str], Run],
                  tools: Sequence[str]) -> list[tuple[str, str, str]]:
    """(target, PASS/MISS/n/a, figure) against restic."""
    names = [
        f"initial backup >= {TARGET_INITIAL_SPEEDUP:g}x restic's throughput",
        f"fine-tuned copy >= {TARGET_FINETUNED_SPEEDUP:g}x restic's throughput",
        f"unchanged re-run <= {TARGET_UNCHANGED_TIME:g}x restic's time",
        f"restore >= {TARGET_RESTORE_SPEEDUP:g}x restic's throughput",
        "bytes stored <= restic's",
        "peak RSS <= restic's (highest of all steps)",
    ]
    if "swarm" not in tools or "restic" not in tools:
        return [(n, "n/a", "needs --tools with swarm and restic") for n in names]
    out: list[tuple[str, str, str]] = []

    def speed(sc: str, goal: float) -> tuple[str, str]:
        s, r = runs[("swarm", sc)], runs[("restic", sc)]
        if not r.ok:
            return "n/a", f"restic failed: {r.error}"
        if not s.ok:
            return "MISS", f"swarm failed: {s.error}"
        if sc == "restore" and s.verified is False:
            return "MISS", f"restore not identical: {s.note}"
        x = r.seconds / s.seconds
        return ("PASS" if x >= goal else "MISS"), (
            f"{x:.2f}x ({s.seconds:.2f} s vs {r.seconds:.2f} s)")

    for name, sc, goal in ((names[0], "initial", TARGET_INITIAL_SPEEDUP),
                           (names[1], "finetuned", TARGET_FINETUNED_SPEEDUP)):
        out.append((name, *speed(sc, goal)))
    s, r = runs[("swarm", "unchanged")], runs[("restic", "unchanged")]
    if not r.ok:
        out.append((names[2], "n/a", f"restic failed: {r.error}"))
    elif not s.ok:
        out.append((names[2], "MISS", f"swarm failed: {s.error}"))
    else:
        x = s.seconds / r.seconds
        out.append((names[2], "PASS" if x <= TARGET_UNCHANGED_TIME else "MISS",
                    f"{x:.2f}x ({s.seconds:.2f} s vs {r.seconds:.2f} s)"))
    out.append((names[3], *speed("restore", TARGET_RESTORE_SPEEDUP)))
    sv, rv = stored(runs, "swarm"), stored(runs, "restic")
    if rv is None:
        out.append((names[4], "n/a", "restic failed"))
    elif sv is None:
        out.append((names[4], "MISS", "swarm failed"))
    else:
        out.append((names[4], "PASS" if sv <= rv else "MISS",
                    f"{fmt_bytes(sv)} vs {fmt_bytes(rv)}"))
    # Peak RSS over the steps both completed; a failed swarm step is a MISS regardless.
    both = [sc for sc in SCENARIOS if runs[("swarm", sc)].ok and runs[("restic", sc)].ok]
    failed = [LABELS[sc] for sc in SCENARIOS if not runs[("swarm", sc)].ok]
    if not both:
        out.append((names[5], "MISS" if failed else "n/a", "no step completed by both"))
    else:
        sp = max(runs[("swarm", sc)].peak_rss for sc in both)
        rp = max(runs[("restic", sc)].peak_rss for sc in both)
        fig = f"{sp / MIB:.0f} MiB vs {rp / MIB:.0f} MiB"
        if failed:
            fig += f" (over the steps both completed; swarm failed: {', '.join(failed)})"
        out.append((names[5], "PASS" if sp <= rp and not failed else "MISS", fig))
    return out


def ceiling_rows(c: Ceilings) -> list[list[str]]:
    rows = [["ceiling", "1 thread MiB/s", "2 threads MiB/s"]]
    for stage, vals in c.cpu.items():
        rows.append([stage, f"{vals[1]:.0f}" if 1 in vals else "-",
                     f"{vals[2]:.0f}" if 2 in vals else "-"])
    rows.append([f"fsynced {DISK_FILE // MIB} MiB pack writes", f"{c.write:.0f}", "-"])
    rows.append(["cold read of those packs", f"{c.read:.0f}", "-"])
    rows.append([f"fsynced {DISK_FILE // MIB} MiB pack writes, O_DIRECT",
                 f"{c.write_direct:.0f}", "-"])
    rows.append(["cold O_DIRECT read of those packs", f"{c.read_direct:.0f}", "-"])
    return rows


def text_table(rows: list[list[str]], left: int = 2) -> str:
    """First `left` columns and the last one left-aligned, the others right-aligned."""
    if not rows:
        return ""
    ncol = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(ncol)]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i < left or rows[0][i] == "note" else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]], left: int = 2) -> str:
    if not rows:
        return ""
    head, *body = rows
    align = ["---" if i < left or h == "note" else "---:" for i, h in enumerate(head)]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(out)


@dataclass
class Report:
    env: dict[str, str]
    ds: Dataset
    ceil: Ceilings
    runs: dict[tuple[str, str], Run]
    tools: list[str]
    cache_note: str
    restic_repo: str
    caches: dict[str, int]
    command: str
    rounds: list[dict[tuple[str, str], Run]]

    def targets(self) -> list[tuple[str, str, str, str]]:
        """targets_check on the medians, with how many rounds met each target alone."""
        per_round = [targets_check(runs, self.tools) for runs in self.rounds]
        out = []
        for i, (name, verdict, fig) in enumerate(targets_check(self.runs, self.tools)):
            held = sum(1 for checks in per_round if checks[i][1] == "PASS")
            out.append((name, verdict, fig, f"{held} of {len(per_round)}"
                        if verdict != "n/a" else "-"))
        return out

    def round_rows(self) -> list[list[str]]:
        """Each step's seconds in every round, and swarm's speed-up over restic in each."""
        head = ["step", "tool", "median s", "range s", "seconds in each round"]
        rows = [head]
        for sc in SCENARIOS:
            for tool in self.tools:
                runs = [r[(tool, sc)] for r in self.rounds if (tool, sc) in r]
                ok = [r.seconds for r in runs if r.ok]
                if not ok:
                    continue
                rows.append([LABELS[sc], tool, f"{self.runs[(tool, sc)].seconds:.2f}",
                             f"{min(ok):.2f}-{max(ok):.2f}",
                             " ".join(f"{r.seconds:.2f}" if r.ok else "failed"
                                      for r in runs)])
            if "swarm" in self.tools and "restic" in self.tools:
                pairs = [(r[("swarm", sc)], r[("restic", sc)]) for r in self.rounds]
                ratios = [(p.seconds / q.seconds if sc == "unchanged" else
                           q.seconds / p.seconds) for p, q in pairs if p.ok and q.ok]
                if ratios:
                    what = "swarm/restic time" if sc == "unchanged" else "restic/swarm time"
                    rows.append([LABELS[sc], what, "", f"{min(ratios):.2f}-{max(ratios):.2f}",
                                 " ".join(f"{x:.2f}" for x in ratios)])
        return rows

    def rounds_note(self) -> str:
        n = len(self.rounds)
        return (f"Figures above are medians over {n} round{'s' if n > 1 else ''} (each round: "
                "every step from an empty repository; the median run's bytes added); "
                "ratios are between medians. Each target's verdict is on the medians, "
                "beside the number of rounds that met it on their own figures.")

    def dataset_line(self) -> str:
        ds = self.ds
        ck = ds.checkpoints[0]
        return (
            f"{len(ds.checkpoints)} safetensors checkpoints of {fmt_bytes(ck.size)} "
            f"(bf16-like, {ds.tensors_per_file} tensors each, 2 KiB to 5.5 MiB; zlib -1 keeps "
            f"{100 * ds.zlib_checkpoint:.0f} % of tensor bytes), {len(ds.shards)} JSON/text "
            f"shards of 200 B to 20 KiB in {ds.shard_dirs} directories "
            f"({fmt_bytes(sum(f.size for f in ds.shards))}; zlib -1 keeps "
            f"{100 * ds.zlib_shards:.0f} %), {fmt_bytes(ds.base_bytes)} in all; then a "
            f"fine-tuned copy of {Path(ck.rel).name} at {ds.finetuned.rel} with "
            f"{ds.changed_tensors} of {ds.tensors_per_file} tensors "
            f"({fmt_bytes(ds.changed_bytes)}) replaced"
        )

    def versions_line(self) -> str:
        parts = [f"{self.env['swarm']} (Python {self.env['python']})"]
        if "restic" in self.env:
            parts.append(f"{self.env['restic']} (repository format v{self.restic_repo}, "
                         "compression auto: the default)")
        if "borg" in self.env:
            parts.append(f"{self.env['borg']} (repokey-blake2, compression lz4: the default)")
        return "; ".join(parts)

    def basis_lines(self) -> list[str]:
        ds = self.ds
        lines = [
            f"MiB/s: initial backup and unchanged re-run over the data set "
            f"({fmt_bytes(ds.base_bytes)}), fine-tuned copy over the new file "
            f"({fmt_bytes(ds.finetuned.size)}), restore over everything restored "
            f"({fmt_bytes(ds.all_bytes)}).",
            "Of ceiling: MiB/s over the lowest relevant ceiling below; initial backup: "
            "chunk+hash+encrypt, cold read, fsynced write; fine-tuned copy: chunk+hash, cold "
            "read; restore: decrypt+hash, cold read (restores are not fsynced by the tools).",
            "Added to repo: growth of the repository directory (du); local caches are not "
            "in it: after the run " + ", ".join(f"{t} {fmt_bytes(b)}"
                                                for t, b in self.caches.items()) + ".",
            "Peak RSS: the larger of /usr/bin/time -v's maximum RSS and the summed RSS of "
            "the process tree sampled every 50 ms.",
        ]
        return lines

    def ceiling_note(self) -> str:
        c = self.ceil
        note = (f"Best of {CPU_REPEATS} (CPU) and {DISK_REPEATS} (disk) rounds. CPU: FastCDC "
                f"(avg {CDC_AVG // MIB} MiB, min {CDC_MIN // 1024} KiB, max "
                f"{CDC_MAX // MIB} MiB; mean chunk {fmt_bytes(c.avg_chunk)}), keyed BLAKE3, "
                f"AES-256-GCM, in-process over a {CEILING_BUF // MIB} MiB bf16-like buffer, "
                "threads on separate halves. Disk: "
                f"{DISK_TOTAL // MIB} MiB as {DISK_FILE // MIB} MiB files, each written, "
                f"fsynced and renamed; read back with {c.read_note}; once through the page "
                "cache and once with O_DIRECT from page-aligned buffers, the way the engine "
                "reads data and writes packs (the faster of the two is the ceiling).")
        full = c.cpu.get("chunk+hash+encrypt", {})
        if 1 in full and 2 in full:
            note += (f" Two threads ran chunk+hash+encrypt {full[2] / full[1]:.2f}x as fast as "
                     "one on this machine.")
        return f"{note} {c.cpu_note}".strip()

    def text(self) -> str:
        e = self.env
        out = [
            f"{e['date']}  {e['cores']} cores ({e['cpu']}), {e['memory']} RAM, {e['kernel']}",
            f"filesystem: {e['filesystem']}",
            f"versions: {self.versions_line()}",
            f"data set: {self.dataset_line()}",
            f"page cache: {self.cache_note}",
            "",
            "commands:",
            *(f"  {t}: {cmd}{where}" for t, lines in symbolic_commands(self.tools).items()
              for cmd, where in lines),
            "",
            text_table(results_rows(self.runs, self.tools, self.ceil)),
            "",
        ]
        ratios = ratio_rows(self.runs, self.tools)
        if ratios:
            out += ["swarm vs peers (speed = peer seconds / swarm seconds; added and RSS = "
                    "swarm / peer):", text_table(ratios, left=1), ""]
        out += [f"{st:4}  {name}: {fig} (rounds met: {held})"
                for name, st, fig, held in self.targets()]
        out += ["", text_table(self.round_rows(), left=2), self.rounds_note()]
        out += ["", text_table(ceiling_rows(self.ceil), left=1), self.ceiling_note(), "",
                *self.basis_lines()]
        return "\n".join(out) + "\n"

    def section(self) -> str:
        e = self.env
        cmds = symbolic_commands(self.tools)
        lines = [
            BEGIN,
            "## Backup engine vs restic and borg",
            "",
            f"- Date: {e['date']}",
            f"- Machine: {e['cores']} cores ({e['cpu']}), {e['memory']} RAM, kernel "
            f"{e['kernel']}; repositories, caches, data set and restores on one filesystem: "
            f"{e['filesystem']}",
            f"- Versions: {self.versions_line()}",
            f"- Data set: {self.dataset_line()}",
            f"- Page cache: {self.cache_note}",
            "- swarm-maint's modules are byte-compiled before the steps, as pip does when it "
            "installs the package.",
            "- Steps, one step for all tools before the next (the tools' order rotates from "
            "step to step; each command starts 2 s after the page cache was dropped): init; "
            "initial backup; unchanged re-run; fine-tuned copy (the data set directory after "
            "adding the fine-tuned file); full restore of the latest snapshot into an empty "
            "directory, then every file compared by SHA-256. All five steps run "
            f"{len(self.rounds)} times (rounds), each round from empty repositories.",
            "",
            "```",
            self.command,
            "```",
            "",
            "Commands (REPO, CACHE, DATA and TARGET are directories in the work directory; "
            "backup steps run the middle command):",
            "",
            *(f"- {t}: " + "; ".join(f"`{c}`{w}" for c, w in lines) for t, lines in cmds.items()),
            "",
            markdown_table(results_rows(self.runs, self.tools, self.ceil)),
            "",
        ]
        ratios = ratio_rows(self.runs, self.tools)
        if ratios:
            lines += ["swarm against each peer (speed = peer seconds / swarm seconds; added and "
                      "RSS = swarm / peer):", "", markdown_table(ratios, left=1), ""]
        lines += ["| target (against restic) | result (medians) | figure | rounds met |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {n} | {st} | {fig.replace('|', '/')} | {held} |"
                  for n, st, fig, held in self.targets()]
        lines += ["", self.rounds_note(), "", markdown_table(self.round_rows(), left=2)]
        lines += ["", "Ceilings measured on this machine in the same run:", "",
                  markdown_table(ceiling_rows(self.ceil), left=1), "", self.ceiling_note(), ""]
        lines += [f"- {line}" for line in self.basis_lines()]
        lines.append(END)
        return "\n".join(lines) + "\n"

    def payload(self) -> dict[str, Any]:
        ds = self.ds
        return {
            "environment": self.env,
            "command": self.command,
            "page_cache": self.cache_note,
            "restic_repository_version": self.restic_repo,
            "dataset": {
                "checkpoints": [asdict(f) for f in ds.checkpoints],
                "shards": {"count": len(ds.shards), "bytes": sum(f.size for f in ds.shards),
                           "directories": ds.shard_dirs},
                "finetuned": asdict(ds.finetuned),
                "tensors_per_file": ds.tensors_per_file,
                "changed_tensors": ds.changed_tensors,
                "changed_bytes": ds.changed_bytes,
                "base_bytes": ds.base_bytes,
                "zlib1_ratio_checkpoint": ds.zlib_checkpoint,
                "zlib1_ratio_shards": ds.zlib_shards,
            },
            "ceilings_mib_s": {
                "cpu": {k: {str(t): v for t, v in d.items()} for k, d in self.ceil.cpu.items()},
                "mean_chunk_bytes": self.ceil.avg_chunk,
                "fsynced_write": self.ceil.write,
                "cold_read": self.ceil.read,
                "fsynced_write_direct": self.ceil.write_direct,
                "cold_read_direct": self.ceil.read_direct,
                "notes": [self.ceil.cpu_note, self.ceil.read_note],
            },
            "commands": symbolic_commands(self.tools),
            "medians": [{**asdict(r), "added": r.added, "mib_s": r.throughput,
                      "of_ceiling": r.throughput / self.ceil.for_scenario(r.scenario)[0]
                      if r.ok and r.basis_bytes else None}
                     for r in self.runs.values()],
            "local_cache_bytes": self.caches,
            "targets": [{"target": n, "result": st, "figure": f, "rounds_met": held}
                        for n, st, f, held in self.targets()],
            "rounds": [[{**asdict(r), "added": r.added} for r in runs.values()]
                       for runs in self.rounds],
        }


def json_safe(value: Any) -> Any:
    """NaN and infinities become null, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_section(path: Path, text: str) -> None:
    _report.write_section(path, BEGIN, END, text)


# -- main -----------------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def find_binaries(tools: Sequence[str], swarm: str) -> tuple[dict[str, str], list[str]]:
    bins: dict[str, str] = {}
    missing: list[str] = []
    for tool in tools:
        if tool == "swarm":
            bins[tool] = swarm  # a missing engine is reported in its rows, not fatal
            continue
        found = shutil.which(tool) or (f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists()
                                       else None)
        if found is None:
            missing.append({"restic": "restic", "borg": "borgbackup"}[tool])
        else:
            bins[tool] = found
    return bins, missing


@contextlib.contextmanager
def workdir(parent: Path | None, keep: bool) -> Iterator[Path]:
    base = parent if parent is not None else DEFAULT_WORK_PARENT
    created = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="backup_vs_restic-", dir=base)).resolve()
    try:
        yield work
    finally:
        if keep:
            log(f"kept the work directory {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    base.rmdir()  # only if empty


def byte_compile_swarm() -> None:
    """Write swarm-maint's .pyc files, as pip does when it installs the package; an
    editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module
    from source at every start (about 25 ms)."""
    import swarm_maint

    pkg = Path(swarm_maint.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True,
                   stdout=subprocess.DEVNULL)
    log(f"byte-compiled {pkg}")


def run_benchmark(args: argparse.Namespace, work: Path, bins: dict[str, str]) -> Report:
    tools: list[str] = args.tools
    need = int(args.size_gib * GIB * 1.3 * (2 + len(tools)) + DISK_TOTAL + CEILING_BUF)
    free = shutil.disk_usage(work).free
    if free < need:
        raise RuntimeError(f"{work} has {fmt_bytes(free)} free; this run needs about "
                           f"{fmt_bytes(need)} (lower --size-gib)")
    for d in ("logs", "repos", "cache", "restore"):
        (work / d).mkdir()
    log(f"generating the data set in {work / 'data'}")
    t0 = time.perf_counter()
    ds = make_dataset(work, args.size_gib, args.small_files, args.seed)
    log(f"data set ready in {time.perf_counter() - t0:.1f} s")
    paths = Paths(work, ds.root, bins)

    log("measuring ceilings")
    buf = bf16_like(random.Random(f"{args.seed}/ceiling"), CEILING_BUF)
    ceil = cpu_ceilings(buf)
    disk_ceilings(ceil, work / "ceiling", buf)
    del buf
    log("ceilings: " + ", ".join(f"{k} {max(v.values()):.0f}" for k, v in ceil.cpu.items())
        + f", fsynced write {ceil.write:.0f} (direct {ceil.write_direct:.0f}), cold read "
        f"{ceil.read:.0f} (direct {ceil.read_direct:.0f}) MiB/s")

    if "swarm" in tools:
        byte_compile_swarm()
    rounds: list[dict[tuple[str, str], Run]] = []
    restic_repo = "unknown"
    for rnd in range(args.rounds):
        if rnd:  # every round starts from empty repositories and the data set alone
            remove_finetuned(ds)
            for d in ("repos", "cache", "restore"):
                shutil.rmtree(work / d)
                (work / d).mkdir()
        log(f"round {rnd + 1} of {args.rounds}")
        runs: dict[tuple[str, str], Run] = {}
        for k, sc in enumerate(SCENARIOS):
            if sc == "finetuned":
                add_finetuned(ds)
            # each tool goes first in some steps: the first one after the data set and
            # the ceilings were written may find the disk still busy
            shift = (k + rnd) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                runs[(tool, sc)] = run_step(tool, sc, paths, ds, args.timeout)
                if tool == "restic" and sc == "init" and runs[(tool, sc)].ok:
                    restic_repo = restic_repo_version(paths)
        rounds.append(runs)
    cold = [r.cold_cache for runs in rounds for r in runs.values()
            if not math.isnan(r.seconds)]
    if cold and all(cold):
        cache_note = ("cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every step of "
                      "every tool")
    elif any(cold):
        cache_note = "mixed: the page cache could be dropped before some steps only"
    else:
        cache_note = ("warm: /proc/sys/vm/drop_caches is not writable here, so each step "
                      "found whatever the previous one left in the page cache")
    caches = {t: du(paths.cache(t))[0] for t in tools}
    medians = {key: median_run([runs[key] for runs in rounds]) for key in rounds[0]}
    return Report(environment(paths, tools), ds, ceil, medians, tools, cache_note, restic_repo,
                  caches, args.command, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-gib", type=size_gib, default=1.0,
                        help="total size of the checkpoints in GiB (default 1: 4 x 256 MiB; "
                             "0.25 gives 4 x 64 MiB)")
    parser.add_argument("--small-files", type=positive_int, default=3000,
                        help="number of small JSON/text shards (default 3000)")
    parser.add_argument("--tools", type=tool_list, default=list(TOOLS),
                        help="comma-separated subset of swarm,restic,borg (default: all)")
    parser.add_argument("--workdir", type=Path,
                        help="parent of the run's work directory (default bench/results/, "
                             "on the repository's filesystem)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (data, repositories, logs)")
    parser.add_argument("--seed", type=int, default=1, help="data set seed (default 1)")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="rounds of all steps from empty repositories; figures are "
                             "medians (default 5)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="limit for one tool command in seconds (default 3600)")
    parser.add_argument("--swarm", default=str(Path(sys.executable).parent / "swarm-maint"),
                        help="swarm-maint executable (default: next to this Python)")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="replace or insert the backup_vs_restic section of FILE")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args(argv)
    args.command = " ".join(
        [".venv/bin/python bench/backup_vs_restic.py",
         *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]
    )

    bins, missing = find_binaries(args.tools, args.swarm)
    if missing:
        log(f"missing Debian packages: {' '.join(missing)}; run scripts/system-deps.sh "
            f"(or apt-get install {' '.join(missing)})")
        return 2
    if not TIME_BIN.exists():
        log(f"{TIME_BIN} not found (Debian package time); peak RSS comes from psutil only")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with workdir(args.workdir, args.keep) as work:
            report = run_benchmark(args, work, bins)
    except KeyboardInterrupt:
        log("interrupted; stopped the running tool and removed the work directory"
            if not args.keep else "interrupted")
        return 130
    except (RuntimeError, OSError) as exc:
        log(str(exc))
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if args.json:
        sys.stdout.write(json.dumps(json_safe(report.payload()), indent=2,
                                    allow_nan=False) + "\n")
    else:
        sys.stdout.write(report.text())
    if args.write:
        write_section(args.write, report.section())
        log(f"wrote the backup_vs_restic section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
