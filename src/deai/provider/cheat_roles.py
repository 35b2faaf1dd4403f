"""A role reader, for tests of blind work (``--cheat role-reader``): never for real use.

Before it runs a lease it gathers every tell a provider can observe that the task
might be checked, and fabricates the result only when it finds none:

    the lease           a chat check payload (it carries the claimed tokens); a price
                        that is not this provider's offer (a fixed check fee); an
                        input it has run before under another task (a canary is a
                        known shard played again)
    its delivery        other leases in the same poll (a canary planted beside the
                        real placement that triggered it)
    the explorer        the job's shard for this task already ran on someone else
                        (a replica, a referee, an audit) or more than once; a job of
                        at most ``SMALL_JOB`` shards (canary-sized); a role shown for
                        this lease on the provider's own page or the job's page
    the event stream    no ``job_submitted`` for the job (the network's own job), or
                        an event that names this task with a role other than primary

Every decision is logged (``role reader: ...``) with its reasons, so a test can
compare the reader's beliefs with the roles disclosed after the window. A surface
it cannot read counts as a tell: a careful cheater stays honest when unsure.
"""

from __future__ import annotations

import base64
import logging
import threading
from typing import Any

import httpx

log = logging.getLogger("deai.provider.cheat")

SMALL_JOB = 4  # canaries are jobs of one to four shards
PUBLIC_ROLES = ("primary", "sealed", "")


class RoleReader:
    def __init__(self) -> None:
        self.url = ""
        self.me = ""
        self._lock = threading.Lock()
        self._batch: dict[str, int] = {}  # lease id -> leases in the poll that brought it
        self._inputs: dict[str, str] = {}  # input digest -> the task it first came with
        self._submitted: set[str] = set()  # jobs announced by a public job_submitted
        self._roles: dict[str, list[str]] = {}  # task id -> roles the events showed
        self._canaries = 0
        self._cursor = 0

    def attach(self, url: str, me: str) -> None:
        self.url, self.me = url.rstrip("/"), me

    def delivered(self, leases: Any) -> None:
        with self._lock:
            for a in leases:
                self._batch[a.id] = len(leases)

    def unchecked(self, a: Any) -> bool:
        """Whether nothing observable says ``a`` is checked: then it cheats."""
        tells = self.tells(a)
        log.warning("role reader: lease %s task %s job %s: %s", a.id, a.task_id, a.job_id,
                    "cheat (no tell)" if not tells else "honest: " + "; ".join(tells))
        return not tells

    def tells(self, a: Any) -> list[str]:
        out = self._lease_tells(a)
        try:
            with httpx.Client(base_url=self.url, timeout=15.0) as h:
                out += self._job_tells(h, a)
                out += self._provider_tells(h, a)
                out += self._event_tells(h, a)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            out.append(f"public surfaces unreadable ({type(exc).__name__})")
        return out

    def _lease_tells(self, a: Any) -> list[str]:
        out = []
        with self._lock:
            if self._batch.pop(a.id, 1) > 1:
                out.append("co-delivered with other leases")
            first = self._inputs.setdefault(a.input_digest, a.task_id)
        if first != a.task_id:
            out.append(f"input seen before in task {first}")
        if a.input_b64 is not None and base64.b64decode(a.input_b64).startswith(b'{"check"'):
            out.append("a check payload")
        return out

    def _job_tells(self, h: httpx.Client, a: Any) -> list[str]:
        r = h.get(f"/api/explorer/jobs/{a.job_id}")
        if r.status_code == 404:
            return ["job hidden from the explorer"]
        r.raise_for_status()
        d = r.json()
        out = []
        if d["job"].get("owner") == "network":
            out.append("owned by the network")
        if len(d["shards"]) <= SMALL_JOB:
            out.append(f"a job of {len(d['shards'])} shard(s) (canary-sized)")
        for sh in d["shards"]:
            if sh["task_id"] != a.task_id:
                continue
            others = [p for p in sh["providers"] if p != self.me]
            if others:
                out.append(f"the shard ran on {len(others)} other provider(s) first")
            if sh["attempts"] > 1 or sh["redone"]:
                out.append("the shard was run more than once")
        out += [f"job page shows role {row['role']}" for row in d["assignments"]
                if row["id"] == a.id and row["role"] not in PUBLIC_ROLES]
        return out

    def _provider_tells(self, h: httpx.Client, a: Any) -> list[str]:
        r = h.get(f"/api/explorer/providers/{self.me}")
        r.raise_for_status()
        d = r.json()
        out = [f"own page shows role {row['role']}" for row in d["recent"]
               if row["id"] == a.id and row["role"] not in PUBLIC_ROLES]
        prices = {o["model"]: o["price"] for o in d["provider"]["offers"]}
        if a.model in prices and prices[a.model] != a.price:
            out.append(f"paid {a.price}, not the offered {prices[a.model]} (a check fee?)")
        return out

    def _event_tells(self, h: httpx.Client, a: Any) -> list[str]:
        self._read_events(h)
        with self._lock:
            out = list(self._roles.get(a.task_id, []))
            if a.job_id not in self._submitted:
                out.append("no public job_submitted for the job (the network's own?)")
            if self._canaries:
                out.append(f"{self._canaries} canary(ies) shown planted on this provider")
        return out

    def _read_events(self, h: httpx.Client) -> None:
        """Every public event since the last read: job announcements, and any role or
        canary that shows."""
        while True:
            r = h.get("/api/events", params={"after": self._cursor, "limit": 500})
            r.raise_for_status()
            events = r.json()["events"]
            with self._lock:
                for e in events:
                    self._cursor = max(self._cursor, int(e["id"]))
                    body = e["body"]
                    if e["kind"] == "job_submitted":
                        self._submitted.add(e["subject"])
                    elif e["kind"] == "canary_planted" and body.get("provider") == self.me:
                        self._canaries += 1
                    role = str(body.get("role", ""))
                    if role not in PUBLIC_ROLES:
                        self._roles.setdefault(e["subject"], []).append(
                            f"event {e['kind']} shows role {role}")
            if len(events) < 500:
                return
