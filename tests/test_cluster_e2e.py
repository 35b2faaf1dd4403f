"""Clusters end to end: a real coordinator, three provider agents, real bubblewrap and Ray.

Each provider's lease sandboxes live in a network namespace of their own that this test
creates (``ip netns``), joined by veth pairs to a bridge in a fourth namespace, so the
three Ray nodes have their own addresses (10.213.x.2-4) as on separate hosts, and no
Ray traffic leaves the namespaces. The agents themselves talk to the coordinator on
loopback.

``deai cluster up --nodes 3`` gang-leases the three hosts and starts Ray (head + two
workers, token authentication on); ``deai cluster submit`` runs a job whose tasks
report three distinct node ids; a request to the Ray Jobs API without the token is
refused while one with it is answered; ``deai cluster down`` stops the cluster's Ray
processes and ends its leases (nothing is left running in the namespaces), and the
ledger audits. Asking for more nodes than hosts places nothing and charges nothing.
Then a second cluster loses a worker (its provider SIGKILLed in the middle of a job:
Ray retries the tasks on the two other nodes and the job succeeds; the lease ends
``provider lost`` and bills no more) and then its head (the cluster ends ``head lost``
and the rest is refunded); the ledger still audits.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deai.client.audit import client_audit
from deai.client.clusters import Clusters
from deai.client.sdk import Client
from deai.core.errors import InvalidInput
from tests.netutil import Network

pytestmark = pytest.mark.slow
DEAI = str(Path(sys.executable).parent / "deai")
PRICES = "cpu=360000,memory_gb=36000"
ENV = {"DEAI_LEASE_GRACE": "10", "DEAI_LEASE_SETTLE": "2", "DEAI_LEASE_TICK": "0.5",
       "DEAI_CLUSTER_TICK": "0.5", "DEAI_CLUSTER_FORM_TIMEOUT": "240",
       "DEAI_LEASE_START_TIMEOUT": "240"}
NODES = 3

JOB = '''
import json, time
import ray

ray.init()

@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def where(i):
    time.sleep(1.0)
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

alive = [n for n in ray.nodes() if n["Alive"]]
seen = ray.get([where.remote(i) for i in range(3 * len(alive))])
print("RESULT " + json.dumps({"nodes": len(alive), "ids": sorted({s[0] for s in seen}),
                              "ips": sorted({s[1] for s in seen})}))
'''


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def make_namespaces(n: int) -> Iterator[list[str]]:
    """``n`` network namespaces (lo up, one veth each, 10.213.X.2..) bridged in another."""
    tag = f"dc{os.getpid() % 100000}"
    sw, subnet = f"{tag}sw", f"10.213.{os.getpid() % 250}"
    names = [f"{tag}n{i}" for i in range(n)]
    made: list[str] = []
    try:
        for ns in (sw, *names):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i, ns in enumerate(names):
            _ip("-n", sw, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", sw, "link", "set", f"v{i}", "master", "br0")
            _ip("-n", sw, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "addr", "add", f"{subnet}.{i + 2}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        yield names
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30,
                           check=False)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[list[str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("bwrap") is None:
        pytest.skip("needs root, iproute2 and bubblewrap (network namespaces per provider)")
    with make_namespaces(NODES) as names:
        yield names


def ns_pids(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return out.split()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, namespaces: list[str]) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("clusters"), heartbeat_timeout=8.0, verify=False)
    n.env.update(ENV)
    n.start_coordinator()
    try:
        for i, ns in enumerate(namespaces):
            n.start_provider(f"node-{i}", 1000, "--models", "bwrap-sandbox", "--lease-prices",
                             PRICES, "--lease-cpus", "1", "--lease-memory-mb", "4096",
                             "--lease-network", "--lease-netns", ns, "--stake", "50000000")
        end = time.time() + 180
        while True:
            hosts = httpx.get(f"{n.url}/api/market/leases", timeout=10).json()["hosts"]
            online = {p.id for p in n.client().providers() if p.online}
            if len([h for h in hosts if h["provider_id"] in online]) >= NODES:
                break
            assert time.time() < end, f"fewer than {NODES} lease hosts:\n{n.logs()}"
            time.sleep(0.5)
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def alice(net: Network) -> Client:
    c = net.client("alice")
    c.faucet(100_000_000)
    return c


def cli(net: Network, *args: str, cwd: Path | None = None,
        timeout: float = 400) -> subprocess.CompletedProcess[str]:
    env = {**net.env, "DEAI_COORDINATOR": net.url, "DEAI_KEY": "alice"}
    return subprocess.run([DEAI, *args], capture_output=True, env=env, text=True, cwd=cwd,
                          timeout=timeout, check=False)


def test_cluster_up_submit_down(net: Network, namespaces: list[str], alice: Client,
                                tmp_path: Path) -> None:
    up = cli(net, "cluster", "up", "--nodes", str(NODES), "--cpus", "1", "--memory", "3G",
             "--hours", "1", "--max-price-hour", "1")
    assert up.returncode == 0, up.stdout + up.stderr + net.logs()
    cid = re.search(r"cluster\s+(cluster_[0-9a-f]{16})", up.stdout)
    assert cid, up.stdout
    cluster_id = cid.group(1)
    assert "deai cluster submit" in up.stdout
    api = Clusters(alice)
    cl = api.show(cluster_id)
    assert cl.status == "running" and len(cl.leases) == NODES
    assert len({m.provider_id for m in cl.members}) == NODES  # distinct providers
    ips = {n["ip"] for n in (cl.ray or {})["nodes"].values()}
    assert len(ips) == NODES and all(ip.startswith("10.213.") for ip in ips)
    assert all(pids for pids in map(ns_pids, namespaces))  # Ray runs in every namespace

    # a job whose tasks land on all three nodes
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "where.py").write_text(JOB)
    sub = cli(net, "cluster", "submit", cluster_id, "--working-dir", str(job_dir), "--",
              "python", "where.py")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    line = next(x for x in sub.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["nodes"] == NODES and len(result["ids"]) == NODES, result
    assert set(result["ips"]) == ips

    # Ray's token authentication: refused without the token, answered with it
    url, stop, token = api.forward(cluster_id)
    try:
        bare = httpx.get(f"{url}/api/jobs/", timeout=30)
        assert bare.status_code in (401, 403), bare.text
        wrong = httpx.get(f"{url}/api/jobs/", timeout=30,
                          headers={"Authorization": "Bearer " + "0" * 64})
        assert wrong.status_code in (401, 403), wrong.text
        ok = httpx.get(f"{url}/api/jobs/", timeout=30,
                       headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text
    finally:
        stop()

    # another account sees nothing of it
    bob = net.client("bob")
    with pytest.raises(Exception, match="another account"):
        Clusters(bob).show(cluster_id)

    status = cli(net, "cluster", "status", cluster_id, timeout=60)
    assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
    assert all(m.id in status.stdout for m in cl.members) and "head" in status.stdout
    listed = cli(net, "cluster", "list", timeout=60)
    assert listed.returncode == 0 and cluster_id in listed.stdout, listed.stderr

    down = cli(net, "cluster", "down", cluster_id, timeout=200)
    assert down.returncode == 0, down.stdout + down.stderr
    cl = api.show(cluster_id)
    assert cl.status == "ended" and cl.end_reason == "owner ended"
    assert all(m.status == "ended" for m in cl.members)
    assert cl.refunded > 0 and cl.charged + cl.refunded == cl.escrow
    end = time.time() + 60
    while any(ns_pids(ns) for ns in namespaces):  # the sandboxes are gone with the leases
        assert time.time() < end, {ns: ns_pids(ns) for ns in namespaces}
        time.sleep(0.5)
    result_audit = client_audit(alice)
    assert result_audit.ok, result_audit.report.problems


def test_gang_is_all_or_nothing(net: Network) -> None:  # before any provider is killed
    """Four nodes asked of three hosts: nothing is placed, nothing is charged."""
    carol = net.client("carol")
    carol.faucet(10_000_000)
    before = carol.balance() if hasattr(carol, "balance") else None
    api = Clusters(carol)
    for bad, field in (({"nodes": 0}, "nodes"), ({"cpus": "x"}, "cpus"),
                       ({"hours": None}, "hours")):
        body = {"nodes": 2, "cpus": 1, "memory_mb": 1024, "hours": 1,
                "max_price_hour": 10**6, **bad}
        with pytest.raises(InvalidInput) as err:
            carol.request("POST", "/api/clusters", json_body=body)
        assert err.value.status < 500 and field in str(err.value.field) + err.value.message
    assert api.list() == []  # nothing was recorded for bad input
    with pytest.raises(Exception, match="only 3 of 4 nodes placed|no provider"):
        api.create(nodes=NODES + 1, cpus=1, memory_mb=1024, hours=1, max_price_hour=10**6)
    cl = api.list()[0]
    assert cl.status == "ended" and cl.end_reason == "not formed"
    assert len(cl.leases) == NODES and cl.charged == 0 and cl.refunded == cl.escrow
    if before is not None:
        assert carol.balance() == before


LONG_JOB = '''
import json, time
import ray

ray.init()

@ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=5)
def work(i):
    time.sleep(2.0)
    return ray.util.get_node_ip_address()

refs = [work.remote(i) for i in range(30)]
print("STARTED", flush=True)
print("RESULT " + json.dumps(ray.get(refs)), flush=True)
'''


def wait_for(what: str, check: object, timeout: float = 180.0) -> None:
    end = time.time() + timeout
    while not check():  # type: ignore[operator]
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_lost_worker_then_lost_head(net: Network, namespaces: list[str], alice: Client,
                                    tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    api = Clusters(alice)
    cl = api.up(nodes=NODES, cpus=1, memory_mb=3072, hours=1, max_price_hour=10**6)
    assert cl.status == "running"
    by_id = {net.key(name).id: name for name in net.providers}
    head, worker = cl.members[0], cl.members[2]
    worker_ip = (cl.ray or {})["nodes"][worker.id]["ip"]
    job_dir = tmp_path / "long"
    job_dir.mkdir()
    (job_dir / "long.py").write_text(LONG_JOB)
    url, stop, token = api.forward(cl.id)
    try:
        jobs = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
        job = jobs.submit_job(entrypoint="python long.py",
                              runtime_env={"working_dir": str(job_dir)})
        wait_for("the job's tasks", lambda: "STARTED" in jobs.get_job_logs(job))
        net.providers[by_id[worker.provider_id]].kill()  # SIGKILL: its sandbox dies too
        wait_for("the job", lambda: jobs.get_job_status(job) in (
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED), timeout=300)
        logs = jobs.get_job_logs(job)
        assert jobs.get_job_status(job) == JobStatus.SUCCEEDED, logs
    finally:
        stop()
    ips = json.loads(next(x for x in logs.splitlines() if x.startswith("RESULT "))[7:])
    assert len(ips) == 30 and len(set(ips) - {worker_ip}) == NODES - 1, ips

    def worker_lost() -> bool:
        return api.show(cl.id).lost == [worker.id]

    wait_for("the worker's loss", worker_lost)
    now = api.show(cl.id)
    assert now.status == "running"
    lost = next(m for m in now.members if m.id == worker.id)
    assert lost.end_reason == "provider lost" and lost.charged + lost.refunded == lost.escrow
    assert any(e["kind"] == "cluster_node_lost" for e in now.events)

    net.providers[by_id[head.provider_id]].kill()
    wait_for("the head's loss", lambda: api.show(cl.id).status == "ended")
    end = api.show(cl.id)
    assert end.end_reason == "head lost", end.detail
    assert all(m.status == "ended" for m in end.members)
    assert end.refunded > 0 and end.charged + end.refunded == end.escrow
    audit = client_audit(alice)
    assert audit.ok, audit.report.problems
