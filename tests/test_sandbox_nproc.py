"""The process limit of a provider that does not run as root (``sandbox.run``).

Its sandboxes run as its own uid, and the kernel counts ``RLIMIT_NPROC`` over every
*thread* of that uid. The limit was ``max_processes`` plus the uid's *processes*, so the
agent's own threads (a lease session is one, a task slot another) ate the job's budget:
beside 40 idle threads, a job of ``max_processes=8`` stopped with ``limit: processes``
before its six children ran. Run as an unprivileged uid in a child process (this one
may be root, which the kernel exempts from the limit, and whose sandboxes get a uid
each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534

CHILD = r"""
import json, os, sys, threading
from pathlib import Path
from deai.workloads import sandbox

tmp = Path(sys.argv[1])
if os.getuid() == 0:  # the provider's uid: not root, so sandboxes share it
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
stop = threading.Event()
for _ in range(40):  # idle threads, as an agent with open lease sessions has
    threading.Thread(target=stop.wait, daemon=True).start()
res = sandbox.run(["/bin/sh", "-c", "for i in 1 2 3 4 5 6; do sleep 0.5 & done; wait; echo six"],
                  tmp / "work", sandbox.Limits(cpu_seconds=5, wall_seconds=20, memory_mb=256,
                                               file_size_mb=1, max_processes=8),
                  stdout=tmp / "o", stderr=tmp / "e")
stop.set()
print(json.dumps({"uid": os.getuid(), "error": res.error, "limit": res.limit,
                  "stdout": (tmp / "o").read_text(), "stderr": (tmp / "e").read_text()}))
""".replace("NOBODY", str(NOBODY))


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A folder the unprivileged uid can reach (pytest's own are 0700 to their owner)."""
    d = Path(tempfile.mkdtemp(prefix="deai-nproc-"))
    os.chmod(d, 0o755)
    (d / "work").mkdir()
    if os.getuid() == 0:
        for p in (d, d / "work"):
            os.chown(p, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_job_gets_its_processes_beside_many_threads_of_its_uid(tmp: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is required (apt-get install -y bubblewrap)")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    assert (out["error"], out["limit"]) == (None, None), out
    assert out["stdout"] == "six\n", out
