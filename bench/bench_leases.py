"""Leases: create → shell prompt, ``cp`` through the relay against a local copy, and the
latency a forwarded port adds against a direct connection, side by side in one run.

Starts a real coordinator and one warm provider agent hosting leases (bubblewrap)
as subprocesses on loopback, then, with the SDK in this process:

- prompt: create a lease, wait until it is active, open a PTY session running
  bash and read until its prompt; ``--leases`` times, p50 and p90 (and the split:
  create → active, active → prompt);
- cp: ``--mb`` MiB of random bytes into the lease (``Leases.put``) and back
  (``Leases.get``) against ``shutil.copyfile`` of the same file on this disk;
- forward: a TCP echo server inside the lease reached through the relay
  (``lease_tty.serve_forward``) against the same echo server on host loopback:
  connect + first echo, and the round trip of 64 bytes on an open connection.

    .venv/bin/python bench/bench_leases.py      # writes bench/results/leases.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the real-process harness lives with the tests

import httpx  # noqa: E402
from tests.netutil import Network  # noqa: E402

from deai.client import lease_tty  # noqa: E402
from deai.client.leases import Leases  # noqa: E402

OUT = ROOT / "bench" / "results" / "leases.json"
ECHO = ("import socket\nsrv = socket.create_server(('127.0.0.1', 7000))\nwhile True:\n"
        "    c, _ = srv.accept()\n    while d := c.recv(65536):\n        c.sendall(d)\n"
        "    c.close()\n")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def prompt_times(leases: Leases, n: int) -> dict[str, Any]:
    total, to_active, to_prompt = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        lease = leases.create(cpus=1, memory_mb=1024, hours=1, max_price_hour=10**6)
        leases.wait_active(lease.id, poll=0.02)
        t1 = time.perf_counter()
        with leases.open(lease.id, {"op": "exec", "pty": True, "argv": ["/bin/bash", "-i"]}) as s:
            buf = b""
            while b"$ " not in buf:
                m = s.recv(timeout=30)
                if isinstance(m, tuple):
                    buf += m[1]
                elif m is None or m.get("type") == "exit":
                    raise RuntimeError(f"no prompt: {buf!r}")
            t2 = time.perf_counter()
        leases.end(lease.id)
        total.append(t2 - t0)
        to_active.append(t1 - t0)
        to_prompt.append(t2 - t1)
    return {"n": n, "p50_s": pct(total, 0.5), "p90_s": pct(total, 0.9),
            "create_to_active_p50_s": pct(to_active, 0.5),
            "active_to_prompt_p50_s": pct(to_prompt, 0.5)}


def copy_rates(leases: Leases, lid: str, mb: int, reps: int) -> dict[str, Any]:
    data = os.urandom(mb * 1024 * 1024)
    up, down, local = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src.bin"), Path(tmp, "dst.bin")
        src.write_bytes(data)
        for _ in range(reps):
            t0 = time.perf_counter()
            with open(src, "rb") as f:
                leases.put(lid, f, "blob.bin")
            t1 = time.perf_counter()
            out = io.BytesIO()
            leases.get(lid, "blob.bin", out)
            t2 = time.perf_counter()
            assert out.getvalue() == data
            shutil.copyfile(src, dst)
            os.sync()
            t3 = time.perf_counter()
            up.append(mb / (t1 - t0))
            down.append(mb / (t2 - t1))
            local.append(mb / (t3 - t2))
    u, d, loc = statistics.median(up), statistics.median(down), statistics.median(local)
    return {"mb": mb, "reps": reps, "put_mb_s": u, "get_mb_s": d, "local_copy_mb_s": loc,
            "put_over_local": u / loc, "get_over_local": d / loc}


def echo_times(port: int, rounds: int) -> tuple[list[float], list[float]]:
    connects, rtts = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"x" * 64)
            got = b""
            while len(got) < 64:
                got += c.recv(64)
            connects.append(time.perf_counter() - t0)
            for _ in range(rounds):
                t1 = time.perf_counter()
                c.sendall(b"y" * 64)
                got = b""
                while len(got) < 64:
                    got += c.recv(64)
                rtts.append(time.perf_counter() - t1)
    return connects, rtts


def local_echo() -> int:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            c, _ = srv.accept()
            with c:
                while d := c.recv(65536):
                    c.sendall(d)

    threading.Thread(target=serve, daemon=True).start()
    return int(srv.getsockname()[1])


def forward_latency(leases: Leases, lid: str, rounds: int) -> dict[str, Any]:
    leases.exec(lid, ["sh", "-c", "cat > echo.py; setsid python3 echo.py >/dev/null 2>&1 "
                      "</dev/null & sleep 0.5"], stdin=ECHO.encode())
    port, stop = lease_tty.serve_forward(leases, lid, 7000)
    try:
        f_conn, f_rtt = echo_times(port, rounds)
    finally:
        stop()
    d_conn, d_rtt = echo_times(local_echo(), rounds)
    ms = 1000.0
    return {"rounds": rounds * 5,
            "direct_connect_p50_ms": pct(d_conn, 0.5) * ms,
            "forward_connect_p50_ms": pct(f_conn, 0.5) * ms,
            "direct_rtt_p50_ms": pct(d_rtt, 0.5) * ms, "direct_rtt_p99_ms": pct(d_rtt, 0.99) * ms,
            "forward_rtt_p50_ms": pct(f_rtt, 0.5) * ms,
            "forward_rtt_p99_ms": pct(f_rtt, 0.99) * ms,
            "added_rtt_p50_ms": (pct(f_rtt, 0.5) - pct(d_rtt, 0.5)) * ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leases", type=int, default=10)
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="deai-bench-leases-") as tmp:
        net = Network(Path(tmp), heartbeat_timeout=6.0, verify=False)
        net.env.update({"DEAI_LEASE_GRACE": "10", "DEAI_LEASE_TICK": "0.25"})
        net.start_coordinator()
        try:
            net.start_provider("host", 1000, "--models", "bwrap-sandbox", "--lease-prices",
                               "cpu=360000,memory_gb=36000", "--lease-memory-mb", "8192")
            end = time.time() + 180
            while not httpx.get(f"{net.url}/api/market/leases", timeout=5).json()["hosts"]:
                if time.time() > end:
                    raise TimeoutError(net.logs())
                time.sleep(0.3)
            client = net.client("bench")
            client.faucet(10**10)
            leases = Leases(client)
            prompt = prompt_times(leases, a.leases)
            lid = leases.wait_active(leases.create(cpus=1, memory_mb=2048, hours=1,
                                                   max_price_hour=10**6).id).id
            copy = copy_rates(leases, lid, a.mb, a.reps)
            fwd = forward_latency(leases, lid, a.rounds)
            leases.end(lid)
        finally:
            net.close()
    result = {"machine": platform.platform(), "cores": os.cpu_count(),
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "prompt": prompt, "cp": copy, "forward": fwd}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
