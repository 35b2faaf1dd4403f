"""Clusters for the owner: a gang of leases on distinct providers that becomes a Ray cluster.

    api = Clusters(client)
    cl = api.up(nodes=3, cpus=1, memory_mb=4096, hours=1, max_price_hour=10**6)
    code = api.submit(cl.id, ["python", "script.py"], working_dir=".")
    api.down(cl.id)

``up`` asks the coordinator for the gang (``POST /api/clusters``: all or nothing),
waits until every member's lease is active, then starts Ray through the lease
sessions (``Leases.exec``, relayed by the coordinator): the head in the first
member, a worker in each other one, each bound to its lease's own address, with
Ray's token authentication on. The token is made here, written into each
member's home (mode 0600) and kept in ``$DEAI_HOME/clusters/<id>.json``; the
coordinator records only the head's address and the launcher pids.

``submit`` reaches the head's Ray Jobs API (its dashboard port, bound to the
lease's loopback) through a port forward over the relay, sends the token as a
bearer header, streams the job's logs and returns its exit status.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import secrets
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deai.client import cluster_node, lease_tty
from deai.client.keys import home
from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.core.errors import Conflict, DeAIError
from deai.core.wire_clusters import ClusterIn, ClusterOut, RayIn

NODE_SCRIPT = ".deai/cluster_node.py"
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def state_dir() -> Path:
    d = home() / "clusters"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def save_state(cid: str, data: dict[str, Any]) -> Path:
    p = state_dir() / f"{cid}.json"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return p


def load_state(cid: str) -> dict[str, Any]:
    p = state_dir() / f"{cid}.json"
    if not p.exists():
        raise DeAIError(f"no local record of cluster {cid} (its token lives where `deai "
                        f"cluster up` ran: {p})")
    data: dict[str, Any] = json.loads(p.read_text())
    return data


class Clusters:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.leases = Leases(client)

    # --- the API ----------------------------------------------------------------------------

    def create(self, **fields: Any) -> ClusterOut:
        return self.client._post("/api/clusters", ClusterIn(**fields), ClusterOut)

    def show(self, cid: str) -> ClusterOut:
        resp = self.client.request("GET", f"/api/clusters/{cid}", signed=True)
        return ClusterOut.model_validate(resp.json())

    def list(self) -> builtins.list[ClusterOut]:
        data = self.client.request("GET", "/api/clusters", signed=True).json()
        return [ClusterOut.model_validate(x) for x in data["clusters"]]

    def end(self, cid: str) -> ClusterOut:
        return self.client._post(f"/api/clusters/{cid}/end", {}, ClusterOut)

    def report_ray(self, cid: str, body: RayIn) -> ClusterOut:
        resp = self.client.request("PUT", f"/api/clusters/{cid}/ray",
                                   json_body=body.model_dump(mode="json"), signed=True)
        return ClusterOut.model_validate(resp.json())

    def wait_running(self, cid: str, timeout: float = 300.0) -> ClusterOut:
        end = time.monotonic() + timeout
        while True:
            cl = self.show(cid)
            if cl.status == "running":
                return cl
            if cl.status == "ended":
                raise Conflict(f"cluster {cid} ended before it formed: {cl.end_reason} "
                               f"({cl.detail or ''})", status="ended")
            if time.monotonic() > end:
                raise DeAIError(f"cluster {cid} did not form within {timeout:.0f} s")
            time.sleep(0.5)

    # --- Ray inside the leases ----------------------------------------------------------------

    def node(self, lease_id: str, *args: str) -> dict[str, Any]:
        """Run ``cluster_node.py`` in a member's lease; its JSON answer."""
        out, err = io.BytesIO(), io.BytesIO()
        code = self.leases.exec(lease_id, ["/usr/bin/python3", NODE_SCRIPT, *args],
                                stdout=out, stderr=err)
        if code != 0:
            raise DeAIError(f"lease {lease_id}: cluster_node {args[0]} exited {code}: "
                            f"{err.getvalue().decode(errors='replace')[-800:]}")
        lines = out.getvalue().decode().strip().splitlines()
        answer: dict[str, Any] = json.loads(lines[-1])
        return answer

    def start_ray(self, cl: ClusterOut, cpus: int, say: Say = _quiet,
                  timeout: float = 180.0) -> dict[str, Any]:
        token = secrets.token_hex(32)
        script = Path(cluster_node.__file__).read_bytes()

        def prepare(lid: str) -> str:
            self.leases.put(lid, script, NODE_SCRIPT, mode=0o644)
            self.leases.put(lid, token.encode(), ".deai/ray_token", mode=0o600)
            return str(self.node(lid, "addr")["ip"])

        with ThreadPoolExecutor(max_workers=min(8, len(cl.leases))) as pool:
            ips = dict(zip(cl.leases, pool.map(prepare, cl.leases), strict=True))
            head = cl.leases[0]
            say(f"starting the Ray head in {head} ({ips[head]})")
            nodes: dict[str, dict[str, Any]] = {
                head: {**self.node(head, "head", ips[head], str(cpus)), "role": "head"}}
            gcs = f"{ips[head]}:{cluster_node.GCS_PORT}"

            def worker(lid: str) -> dict[str, Any]:
                say(f"starting a Ray worker in {lid} ({ips[lid]})")
                return {**self.node(lid, "worker", ips[lid], str(cpus), gcs), "role": "worker"}

            nodes.update(zip(cl.leases[1:], pool.map(worker, cl.leases[1:]), strict=True))
        self.node(head, "wait", gcs, str(len(cl.leases)), str(timeout))
        self.report_ray(cl.id, RayIn(head_address=gcs,
                                     dashboard_port=cluster_node.DASHBOARD_PORT, nodes=nodes))
        state = {"cluster": cl.id, "head_lease": head, "head_address": gcs,
                 "dashboard_port": cluster_node.DASHBOARD_PORT, "token": token,
                 "nodes": nodes, "coordinator": self.client.base_url}
        save_state(cl.id, state)
        return state

    def up(self, *, say: Say = _quiet, timeout: float = 300.0, **fields: Any) -> ClusterOut:
        """Gang-lease, wait for every member, start Ray; on any failure the cluster ends
        (every lease refunded past what ran)."""
        cl = self.create(**fields)
        say(f"cluster {cl.id}: {len(cl.leases)} leases placed, waiting for them to start")
        try:
            cl = self.wait_running(cl.id, timeout)
            self.start_ray(cl, int(fields["cpus"]), say)
        except BaseException:
            with contextlib.suppress(DeAIError):
                self.end(cl.id)
            raise
        return self.show(cl.id)

    def stop_ray(self, cid: str) -> None:
        """Stop the Ray processes this cluster started, by pid, in each live member."""
        cl = self.show(cid)
        for lid, node in sorted(((cl.ray or {}).get("nodes") or {}).items(),
                                key=lambda kv: kv[1].get("role") == "head"):
            member = next((m for m in cl.members if m.id == lid), None)
            if member is None or member.status != "active" or "pid" not in node:
                continue
            with contextlib.suppress(DeAIError):
                self.node(lid, "stop", str(int(node["pid"])))

    def down(self, cid: str) -> ClusterOut:
        self.stop_ray(cid)
        return self.end(cid)

    # --- jobs ---------------------------------------------------------------------------------

    def forward(self, cid: str) -> tuple[str, Callable[[], None], str]:
        """A local port forwarded to the head's Ray dashboard: (url, stop, token)."""
        st = load_state(cid)
        port, stop = lease_tty.serve_forward(self.leases, st["head_lease"],
                                             int(st["dashboard_port"]), 0, on_error=_quiet)
        return f"http://127.0.0.1:{port}", stop, str(st["token"])

    def submit(self, cid: str, entrypoint: builtins.list[str], *,
               working_dir: str | None = None, out: Callable[[str], None] = print,
               timeout: float = 3600.0) -> int:
        """Submit through the Ray Jobs API, stream the logs to ``out``, return the exit
        status (the driver's, else 0 for SUCCEEDED and 1 otherwise)."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        url, stop, token = self.forward(cid)
        try:
            jobs = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
            runtime_env = {"working_dir": working_dir} if working_dir else None
            job = jobs.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env)
            shown = 0
            end = time.monotonic() + timeout
            while True:
                status = jobs.get_job_status(job)
                logs = jobs.get_job_logs(job)
                if len(logs) > shown:
                    out(logs[shown:])
                    shown = len(logs)
                if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    info = jobs.get_job_info(job)
                    code = getattr(info, "driver_exit_code", None)
                    if code is None:
                        code = 0 if status == JobStatus.SUCCEEDED else 1
                    return int(code)
                if time.monotonic() > end:
                    jobs.stop_job(job)
                    raise DeAIError(f"Ray job {job} still {status} after {timeout:.0f} s")
                time.sleep(1.0)
        finally:
            stop()
