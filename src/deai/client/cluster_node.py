"""Runs inside a cluster member's lease (copied there by ``deai cluster up``): starts or
stops this member's Ray node. Stdlib only at the top; Ray comes from the provider's
packages on ``PYTHONPATH``.

    python3 cluster_node.py addr                       # {"ip": ...}: this lease's address
    python3 cluster_node.py head IP CPUS               # {"pid": ..., "ip": ...} once GCS answers
    python3 cluster_node.py worker IP CPUS HEAD:PORT   # {"pid": ..., "ip": ...}
    python3 cluster_node.py wait HEAD:PORT N TIMEOUT   # until N nodes are alive
    python3 cluster_node.py stop PID                   # SIGTERM, then SIGKILL, to its group

The token is read from ``~/.deai/ray_token`` (written by ``up``, mode 0600); Ray's
token authentication is on for every process started here (``RAY_AUTH_MODE=token``).
``stop`` signals only the process group of the ``ray start`` it launched: never
``ray stop``, which would stop every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

HOME = os.environ.get("HOME", "/work")
STATE = os.path.join(HOME, ".deai")
TOKEN = os.path.join(STATE, "ray_token")
GCS_PORT = 6379
DASHBOARD_PORT = 8265
OBJECT_STORE = 256 * 1024 * 1024


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = os.path.join(STATE, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    py = os.path.join(bin_dir, "python")
    if not os.path.lexists(py):  # `python script.py` in a job's entrypoint
        os.symlink(sys.executable, py)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": TOKEN,
                "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": bin_dir + ":" + env.get("PATH", "/usr/bin:/bin")})
    return env


def address() -> str:
    """The first IPv4 address of this lease's network that is not loopback."""
    import psutil  # type: ignore[import-untyped]  # ships with ray[default]

    for _name, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    raise SystemExit("this lease has no network address but loopback")


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"ray start exited with {proc.returncode}; see ~/ray-node.log")
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{host}:{port} did not open within {timeout:.0f} s")


LOG = os.path.join(HOME, "ray-node.log")
STARTED = b"Ray runtime started"
ATTEMPTS = 3


def start(args: list[str], ip: str) -> subprocess.Popen[bytes]:
    log = open(LOG, "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
         "--node-ip-address", ip, "--disable-usage-stats",
         "--object-store-memory", str(OBJECT_STORE), *args],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=ray_env(), cwd=HOME,
        start_new_session=True)


def stop_group(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def start_node(args: list[str], ip: str, timeout: float = 240.0) -> subprocess.Popen[bytes]:
    """``ray start`` until it says the runtime started. Ray gives a raylet 30 s to register
    with its GCS (hard-coded); on a loaded machine that can pass, so a start that exits
    or hangs is stopped (its own process group only) and tried again."""
    why = ""
    for _ in range(ATTEMPTS):
        offset = os.path.getsize(LOG) if os.path.exists(LOG) else 0
        proc = start(args, ip)
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            with open(LOG, "rb") as f:
                f.seek(offset)
                if STARTED in f.read():
                    return proc
            time.sleep(0.5)
        why = "exited" if proc.poll() is not None else f"not up within {timeout:.0f} s"
        stop_group(proc.pid)
    raise SystemExit(f"ray start {why} {ATTEMPTS} times; see ~/ray-node.log")


def wait_nodes(head: str, n: int, timeout: float) -> None:
    def expired(signum: int, frame: object) -> None:
        raise SystemExit(f"Ray nodes not all alive after {timeout:.0f} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(timeout) + 5)  # ray.init itself may block on an unreachable GCS
    os.environ.update(ray_env())
    import ray

    end = time.monotonic() + timeout
    while True:  # the head's raylet may register with its GCS a moment after the port
        try:
            ray.init(address=head, logging_level=40, log_to_driver=False)
            break
        except (ConnectionError, RuntimeError):
            if time.monotonic() > end:
                raise
            time.sleep(1.0)
    while (alive := len([x for x in ray.nodes() if x.get("Alive")])) < n:  # type: ignore[no-untyped-call]
        if time.monotonic() > end:
            raise SystemExit(f"{alive} of {n} Ray nodes alive after {timeout:.0f} s")
        time.sleep(0.5)
    print(json.dumps({"alive": alive}))


def main(argv: list[str]) -> None:
    op = argv[0]
    if op == "addr":
        print(json.dumps({"ip": address()}))
    elif op == "head":
        ip, cpus = argv[1], argv[2]
        proc = start_node(["--head", "--port", str(GCS_PORT), "--num-cpus", cpus,
                           "--dashboard-host", "127.0.0.1", "--dashboard-port",
                           str(DASHBOARD_PORT), "--include-dashboard", "true"], ip)
        wait_port(ip, GCS_PORT, 120, proc)
        wait_port("127.0.0.1", DASHBOARD_PORT, 120, proc)
        print(json.dumps({"pid": proc.pid, "ip": ip}))
    elif op == "worker":
        ip, cpus, head = argv[1], argv[2], argv[3]
        proc = start_node(["--address", head, "--num-cpus", cpus], ip)
        print(json.dumps({"pid": proc.pid, "ip": ip}))
    elif op == "wait":
        wait_nodes(argv[1], int(argv[2]), float(argv[3]))
    elif op == "stop":
        stop_group(int(argv[1]))
        print(json.dumps({"stopped": int(argv[1])}))
    else:
        raise SystemExit(f"unknown operation {op!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
