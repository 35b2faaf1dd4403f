"""Sandboxed commands end to end: a real coordinator and a real provider process.

One job carries every escape attempt (the provider's key file, a socket, a
fork bomb, memory, file size, CPU and wall-clock limits); each is contained
and comes back as that command's error naming the limit, the provider is paid
for the CPU time it metered, and it goes on to run a good job afterwards.
A second job tries what the sealed sandbox stops: reading bubblewrap's own
environment (pid 1), filling ``/tmp``, 20,000 empty files, filling the work
folder, and a result whose manifest is over ``output_mb``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deai.core.kinds import command as cmd
from deai.provider import sandbox
from deai.workloads import command as wl
from deai.workloads import sandbox as impl
from tests.helpers import check_books
from tests.netutil import Network

pytestmark = pytest.mark.slow
SPEC = {"kind": "command", "model": "bwrap-sandbox", "max_price": 500, "deadline": 600,
        "cpu_seconds": 1, "wall_seconds": 6, "memory_mb": 128, "file_size_mb": 1,
        "max_processes": 16}
# slow disks spend seconds of kernel CPU on many files: the disk limits must stop these
SEALED = {**SPEC, "cpu_seconds": 30, "wall_seconds": 60, "output_mb": 1}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    ok, why = sandbox.available()
    if not ok:
        pytest.fail(f"bubblewrap is required: {why}; `make test` installs it")
    # Checking results (replicas, canaries) is the verifier's; its tests cover it.
    n = Network(tmp_path, heartbeat_timeout=4.0, lease_ttl=60.0, challenge_window=1.0,
                extra=("--no-verify",))
    # Hardware challenges have their own tests; on a loaded machine running these
    # commands they come in slow, and three in a row would slash the provider's stake
    # below what a job needs, which is not what this test is about.
    n.env["DEAI_HW_SLASH_AFTER"] = "1000000"
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def jsonl(*objs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def results(net: Network, job_id: str, c: Any) -> dict[str, dict[str, Any]]:
    assert net.wait_job(c, job_id) == "completed", net.logs()
    return {o["custom_id"]: o for o in map(json.loads, c.results(job_id).splitlines())}


def test_escapes_are_contained_and_the_provider_keeps_working(net: Network) -> None:
    net.start_provider("sandboxer", 400, "--models", "bwrap-sandbox")
    net.wait_providers(1)
    key = Path(net.env["DEAI_HOME"]) / "keys" / "sandboxer.key"
    assert key.is_file()
    c = net.client("client")
    c.faucet(1_000_000_000)
    py = "/usr/bin/python3"
    bad = jsonl(
        {"custom_id": "key", "script": f"cat {key} || echo hidden"},
        {"custom_id": "socket", "argv": [py, "-c", "import socket; socket.create_connection("
                                          "('127.0.0.1', 1), timeout=1)"]},
        # its shell stays up a second: if it exited first, bwrap's pid 1 would end and
        # the kernel kill the bomb before it reached the cap (exit 0, nothing refused)
        {"custom_id": "forkbomb", "script": "f(){ f | f & }; f; sleep 1"},
        {"custom_id": "memory", "argv": [py, "-c", "x = bytearray(400 * 2**20)"]},
        {"custom_id": "filesize", "script": "head -c 3000000 /dev/zero > out/big"},
        {"custom_id": "cpu", "script": "while :; do :; done"},
        {"custom_id": "wall", "script": "sleep 60"},
    )
    job = c.submit_job(SPEC, c.upload(bad).digest)
    assert job.units == 7 * 1000  # CPU-milliseconds escrowed: cpu_seconds per command
    out = results(net, job.id, c)
    assert out["key"]["status"] == "ok" and out["key"]["stdout_tail"] == "hidden\n"
    assert key.read_text().strip() not in json.dumps(out)
    assert out["socket"]["status"] == "error" and out["socket"]["limit"] is None
    assert "Connection refused" in out["socket"]["stderr_tail"] \
        or "unreachable" in out["socket"]["stderr_tail"]
    limits = {k: (o["limit"], o["error"]) for k, o in out.items() if o["limit"]}
    assert limits == {
        "forkbomb": ("processes", limits["forkbomb"][1]),
        "memory": ("memory", limits["memory"][1]),
        "filesize": ("file_size", limits["filesize"][1]),
        "cpu": ("cpu", limits["cpu"][1]),
        "wall": ("wall", limits["wall"][1]),
    }
    assert "process limit reached (16 processes)" in limits["forkbomb"][1]
    assert "memory limit reached (128 MB" in limits["memory"][1]
    assert "file-size limit exceeded (1 MB" in limits["filesize"][1]
    assert "CPU-time limit exceeded (1 s)" in limits["cpu"][1]
    assert "wall-clock limit exceeded (6 s)" in limits["wall"][1]
    final = c.job(job.id)
    assert 0 < final.cost <= final.escrow
    check_books(c, job.id)

    sealed = jsonl(
        {"custom_id": "environ", "script": "tr '\\0' '\\n' </proc/1/environ"},
        {"custom_id": "tmp", "script": "i=0; while :; do i=$((i+1)); "
                                       "head -c 1000000 /dev/zero > /tmp/$i || exit 1; done"},
        {"custom_id": "files", "argv": [py, "-c", "import time\nfor i in range(20000): "
                                        "open(f'/tmp/{i}', 'w').close()\ntime.sleep(60)"]},
        {"custom_id": "work", "script": "i=0; while :; do i=$((i+1)); "
                                        "head -c 1000000 /dev/zero > $i || exit 1; done"},
        {"custom_id": "manifest", "script": "head -c 1000000 /dev/zero > out/data && cd out "
                                            "&& for i in $(seq 300); do : > "
                                            "$(printf '%0200d' $i); done"},
    )
    job1 = c.submit_job(SEALED, c.upload(sealed).digest)
    out = results(net, job1.id, c)
    env = out["environ"]
    assert env["status"] == "ok", env
    assert sorted(env["stdout_tail"].split()) == sorted(f"{k}={v}"
                                                        for k, v in impl.BWRAP_ENV.items())
    assert (out["tmp"]["limit"], out["tmp"]["exit_code"]) == (wl.DISK_LIMIT, 1), out["tmp"]
    assert "no space left on a device (/tmp holds 64 MB" in out["tmp"]["error"]
    assert out["files"]["limit"] == wl.DISK_LIMIT, out["files"]
    assert out["files"]["error"].startswith("file-count quota exceeded (more than 10000")
    assert out["work"]["limit"] == wl.DISK_LIMIT, out["work"]
    assert "work-folder quota exceeded (more than 64 MB" in out["work"]["error"]
    m = out["manifest"]
    assert (m["limit"], m["files"]) == ("output", []), m
    assert len(c.results(job1.id)) < 64 * 1024  # not megabytes of manifest for output_mb=1
    check_books(c, job1.id)

    # the same provider, still up, runs a good job after all of that
    assert net.providers["sandboxer"].alive()
    good = jsonl({"custom_id": "sort", "script": "sort words > out/sorted && echo sorted",
                  "files": {"words": {"text": "pear\napple\nfig\n"}}})
    job2 = c.submit_job(SPEC, c.upload(good).digest)
    res = results(net, job2.id, c)["sort"]
    assert res["status"] == "ok" and res["stdout_tail"] == "sorted\n", res
    [f] = res["files"]
    assert (f["path"], base64.b64decode(f["base64"])) == ("sorted", b"apple\nfig\npear\n")
    assert res["manifest_sha256"] == cmd.manifest_sha256(res["files"])
    check_books(c, job2.id)
