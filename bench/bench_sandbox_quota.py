"""How far past its disk quota a sandboxed job gets before the watcher stops it.

The work-folder quota is a sample, not a kernel quota (``deai.workloads.quota``):
this runs real sandboxes that write as fast as they can against a 64 MB,
10,000-file quota and reports what the work folder held once each was
stopped, and how long that took, plus the cost of one walk over 10,000 files.

    .venv/bin/python bench/bench_sandbox_quota.py   # needs bubblewrap
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from deai.workloads import quota
from deai.workloads import sandbox as impl
from deai.workloads.command import _rmtree

CASES = {
    "shell loop, 1 MB files": "i=0; while :; do i=$((i+1)); head -c 1000000 /dev/zero > f$i; "
                              "done",
    "one stream (dd)": "dd if=/dev/zero of=big bs=1M count=2000 2>/dev/null; sleep 60",
    "8 parallel streams": "for j in 1 2 3 4 5 6 7 8; do (dd if=/dev/zero of=b$j bs=1M "
                          "count=2000 2>/dev/null) & done; wait",
    "empty files (python)": "python3 -c \"\nfor i in range(10**6): open(str(i), 'w').close()\"",
}


def main() -> None:
    ok, why = impl.available()
    if not ok:
        raise SystemExit(f"no sandbox here: {why}")
    limits = impl.Limits(cpu_seconds=120, wall_seconds=120, memory_mb=256, file_size_mb=2000,
                         max_processes=32, disk_mb=64)
    print(f"quota: {limits.work_mb} MB, {limits.max_files} files")
    for name, script in CASES.items():
        base = Path(tempfile.mkdtemp(prefix="deai-cmd-bench-"))
        try:
            os.chmod(base, 0o711)
            (base / "work").mkdir()
            res = impl.run(["/bin/sh", "-c", script], base / "work", limits,
                           stdout=base / "o", stderr=base / "e")
            used, names = quota.measure(base / "work", 1 << 62)
            print(f"{name:24} {res.limit} after {res.wall_ms:6d} ms: "
                  f"{used / quota.MB:6.1f} MB, {names:6d} files left")
        finally:
            _rmtree(base)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(10_000):
            Path(tmp, str(i)).touch()
        t = time.perf_counter()
        quota.measure(Path(tmp), 1 << 62)
        print(f"one walk over 10,000 files: {(time.perf_counter() - t) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
