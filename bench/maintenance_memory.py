"""Peak memory and time of prune, verify and repair on a repository of many chunks.

Builds a repository of ``--blobs`` tiny data chunks in two snapshots (directories of
one file of 100 chunks each), forgets one snapshot, and runs each command on a fresh
copy of it in a process of its own: the process opens the repository and loads its
index (its RSS then is reported as the base), then runs the command; its peak RSS is
``ru_maxrss``. Tiny chunks stand in for a large repository's many: the commands' cost
grows with the number of chunks, not their size.

    .venv/bin/python bench/maintenance_memory.py --blobs 200000

Runs against another source tree by putting it first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSWORD = "maintenance-memory-bench"

_BUILD = """
import os, sys, time
from swarm_maint.backup.packs import DATA
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage import LocalStorage
from swarm_maint.backup.tree import save_tree

root, n, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
repo = Repository.init(LocalStorage(root), password)
for name in ("keep", "gone"):
    dirs = []
    for d in range(n // 100):
        ids = [repo.add_blob(DATA, os.urandom(24))[0].hex() for _ in range(100)]
        node = {"name": "f", "type": "file", "mode": 0o644, "uid": 0, "gid": 0,
                "mtime_ns": 0, "size": 2400, "inode": d, "dev": 1, "nlink": 1,
                "content": ids}
        sub, _ = save_tree(repo, [node])
        dirs.append({"name": f"d{d}", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0,
                     "mtime_ns": 0, "size": 0, "inode": 10**7 + d, "dev": 1, "nlink": 2,
                     "subtree": sub})
    tree, _ = save_tree(repo, dirs)
    repo.flush()
    repo.save_object("snapshots", {"version": 1, "time": time.time(), "hostname": "h",
                                   "paths": ["/" + name], "tags": [], "tree": tree})
"""

_RUN = """
import json, resource, sys, time
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage import LocalStorage

root, command, password = sys.argv[1], sys.argv[2], sys.argv[3]
repo = Repository.open(LocalStorage(root), password)
repo.load_index()
blobs = len(repo.index)
base = int(open("/proc/self/statm").read().split()[1]) * 4096
for sid in repo.list_objects("snapshots"):
    if repo.load_object("snapshots", sid)["paths"] == ["/gone"]:
        repo.storage.delete(f"snapshots/{sid}")
start = time.perf_counter()
if command == "prune":
    from swarm_maint.backup.prune import prune
    ok = prune(repo, grace_seconds=0).packs_deleted > 0
elif command == "verify":
    from swarm_maint.backup.verify import verify
    ok = verify(repo).ok
else:
    from swarm_maint.backup.repair import repair
    ok = repair(repo).blobs_lost == 0
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"blobs": blobs, "base": base, "peak": peak,
                  "seconds": seconds, "ok": ok}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=200_000,
                        help="chunks in each of the two snapshots (default 200000)")
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temp dir)")
    args = parser.parse_args()
    if args.blobs < 100:
        parser.error("--blobs must be at least 100")
    work = Path(tempfile.mkdtemp(prefix="maintenance-memory-", dir=args.workdir))
    try:
        built = work / "built"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _BUILD, str(built), str(args.blobs), PASSWORD],
                       check=True)
        print(f"built {2 * args.blobs} chunks in {time.perf_counter() - t:.1f} s", flush=True)
        print("| command | chunks | RSS once open (index loaded) | peak RSS | seconds |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for command in ("prune", "verify", "repair"):
            copy = work / command
            shutil.copytree(built, copy)
            out = subprocess.run([sys.executable, "-c", _RUN, str(copy), command, PASSWORD],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            if not r["ok"]:
                print(f"{command}: unexpected result {r}", file=sys.stderr)
                return 1
            print(f"| {command} | {r['blobs']} | {r['base'] / 2**20:.0f} MiB | "
                  f"{r['peak'] / 2**20:.0f} MiB | {r['seconds']:.1f} |", flush=True)
            shutil.rmtree(copy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
