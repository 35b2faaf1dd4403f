"""The Python SDK: typed calls over the native API, signing every request when it has a key.

    client = Client("http://127.0.0.1:8000", keys.load("alice"))
    digest = client.upload(Path("data.jsonl").read_bytes()).digest
    job = client.submit_job(spec, digest)

Errors come back as the ``DeAIError`` subclass the server named, so callers can
catch ``InsufficientFunds`` rather than parse status codes. Transport failures
(coordinator down) raise ``httpx.TransportError``; ``retrying`` wraps a call
with capped exponential back-off for agents that must ride out a restart.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import random
import re
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar, cast

import httpx

from deai.client import keys
from deai.client.keys import Identity
from deai.core import auth, wire
from deai.core.errors import DeAIError, from_dict

T = TypeVar("T")


class Client:
    def __init__(self, base_url: str, identity: Identity | None = None, *,
                 timeout: float = 30.0, network_id: str | None = None,
                 bind: bool = False) -> None:
        """``network_id`` pins the network this client signs for (else the coordinator's
        own is asked once, ``network_id``): a coordinator of another network refuses
        what it signs. ``bind``: sign for a network id asked from the coordinator only
        at the address this home first met it at (``keys.bind_network``; the CLI's)."""
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)
        if network_id is not None and not auth.is_network_id(network_id):
            raise DeAIError(f"network_id: not a network id: {network_id!r}")
        self._pinned = network_id is not None
        self._network_id: str | None = network_id
        self._bind = bind

    def close(self) -> None:
        self.http.close()

    def __del__(self) -> None:
        # A dropped client must not leak its pooled sockets.
        http = getattr(self, "http", None)
        if http is not None:
            http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    @property
    def network_id(self) -> str:
        """The coordinator's network id, which every signed request signs
        (``core.auth.message``): asked once (``GET /api/network``)."""
        if self._network_id is None:
            resp = self.http.get("/api/network")
            nid = resp.json().get("network_id") if resp.status_code == 200 else None
            if not auth.is_network_id(nid):
                raise DeAIError(f"{self.base_url} gave no network id to sign for "
                                f"(HTTP {resp.status_code})")
            if self._bind:
                keys.bind_network(str(nid), self.base_url)
            self._network_id = str(nid)
        return self._network_id

    def signed_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The headers that sign a request for this coordinator (and no other)."""
        if self.identity is None:
            raise DeAIError("this call needs a key (pass --key)")
        return self.identity.headers(method, path, body, network=self.network_id)

    def request(self, method: str, path: str, *, body: bytes | IO[bytes] | None = None,
                json_body: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None, content_type: str = "application/json",
                signed: bool | None = None) -> httpx.Response:
        """``body`` may be a file with a descriptor (a lease's snapshot, ``provider.
        volume_pack``): it is sent whole from its start, read in chunks, and signed
        through a read-only map of it, never held in memory."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        body = body or b""
        headers = {"content-type": content_type} if body else {}
        # A GET is signed whenever a key is loaded: private reads (jobs, results, blobs)
        # are answered only to their owner or a provider whose lease needs them.
        sign = signed if signed is not None else (method.upper() != "GET"
                                                  or self.identity is not None)
        if sign:
            headers.update(self._signed(method, path, body))
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        resp = self._send(method, path, body, headers, params, kwargs)
        if resp.status_code == 401 and auth.HEADER_SIG in headers and self._renetworked():
            # The coordinator's database was made anew since the id was asked (a devnet
            # reset): sign again, once, for the id it has now.
            headers.update(self._signed(method, path, body))
            resp = self._send(method, path, body, headers, params, kwargs)
        if resp.status_code >= 400:
            try:
                payload = resp.json()
            except ValueError:
                payload = resp.text
            raise from_dict(resp.status_code, payload)
        return resp

    def _signed(self, method: str, path: str, body: bytes | IO[bytes]) -> dict[str, str]:
        if isinstance(body, bytes):
            return self.signed_headers(method, path, body)
        body.flush()  # what a buffered writer holds is sent: sign it too
        if os.fstat(body.fileno()).st_size == 0:
            return self.signed_headers(method, path, b"")
        with mmap.mmap(body.fileno(), 0, access=mmap.ACCESS_READ) as mm, \
                memoryview(mm) as view:
            # only hashed (``auth.message``), straight from the page cache: no copy
            return self.signed_headers(method, path, cast(bytes, view))

    def _send(self, method: str, path: str, body: bytes | IO[bytes], headers: dict[str, str],
              params: dict[str, Any] | None, kwargs: dict[str, Any]) -> httpx.Response:
        if not isinstance(body, bytes):
            body.seek(0)  # httpx sends a file in chunks, with its size as Content-Length
        return self.http.request(method, path, content=body or None, headers=headers,
                                 params=params, **kwargs)

    def _renetworked(self) -> bool:
        """Whether the coordinator's network id changed since it was asked (never, pinned)."""
        if self._pinned:
            return False
        known, self._network_id = self._network_id, None
        try:
            return self.network_id != known
        except (DeAIError, httpx.HTTPError, ValueError):
            self._network_id = known
            return False

    def _get(self, path: str, model: type[T], **params: Any) -> T:
        clean = {k: v for k, v in params.items() if v is not None}
        return model.model_validate(self.request("GET", path, params=clean).json())  # type: ignore[attr-defined, no-any-return]

    def _post(self, path: str, payload: Any, model: type[T], **kw: Any) -> T:
        if hasattr(payload, "model_dump"):
            payload = payload.model_dump(mode="json")
        resp = self.request("POST", path, json_body=payload, **kw)
        return model.model_validate(resp.json())  # type: ignore[attr-defined, no-any-return]

    # --- network and money ----------------------------------------------------------------

    def network(self) -> wire.NetworkInfo:
        return self._get("/api/network", wire.NetworkInfo)

    def faucet(self, amount: int) -> wire.BalanceOut:
        return self._post("/api/faucet", wire.FaucetIn(amount=amount), wire.BalanceOut)

    def balance(self, account: str | None = None) -> wire.BalanceOut:
        account = account or self._me()
        return self._get(f"/api/accounts/{account}", wire.BalanceOut)

    def upload(self, data: bytes) -> wire.BlobOut:
        resp = self.request("PUT", "/api/blobs", body=data,
                            content_type="application/octet-stream")
        return wire.BlobOut.model_validate(resp.json())

    def download(self, digest: str) -> bytes:
        return self.request("GET", f"/api/blobs/{digest}").content

    # --- providers ------------------------------------------------------------------------

    def register(self, reg: wire.RegisterIn) -> wire.ProviderOut:
        return self._post("/api/providers/register", reg, wire.ProviderOut)

    def bond(self, amount: int) -> wire.BalanceOut:
        return self._post("/api/providers/bond", wire.BondIn(amount=amount), wire.BalanceOut)

    def heartbeat(self, running: list[str]) -> wire.HeartbeatOut:
        return self._post("/api/providers/heartbeat", wire.HeartbeatIn(running=running),
                          wire.HeartbeatOut)

    def relay_heartbeats(self, beats: list[wire.SignedBeat]) -> wire.HeartbeatsOut:
        """Carry other providers' signed heartbeats (``signed_beat``), up to
        ``wire.MAX_RELAYED_BEATS`` a request: a farm's gateway for the machines behind it."""
        return self._post("/api/providers/heartbeats", wire.HeartbeatsIn(beats=beats),
                          wire.HeartbeatsOut)

    def poll(self, wait: float = 20.0, ack: list[str] | None = None) -> wire.PollOut:
        """``ack``: ids received from the previous poll (a list opts into redelivery of
        whatever is not acknowledged; ``None`` takes each lease once, unacknowledged)."""
        return self._post("/api/providers/poll", wire.PollIn(wait=wait, ack=ack), wire.PollOut,
                          timeout=wait + 15.0)

    def submit_result(self, assignment_id: str, result: wire.ResultIn) -> wire.ResultOut:
        return self._post(f"/api/assignments/{assignment_id}/result", result, wire.ResultOut)

    def checkpoint(self, assignment_id: str, cp: wire.CheckpointIn) -> wire.CheckpointOut:
        return self._post(f"/api/assignments/{assignment_id}/checkpoint", cp,
                          wire.CheckpointOut)

    def progress(self, assignment_id: str, events: list[dict[str, Any]]) -> bool:
        """Relay partial output to a caller streaming the answer; False: nobody listens."""
        resp = self.request("POST", f"/api/assignments/{assignment_id}/progress",
                            json_body={"events": events}, timeout=5.0)
        return bool(resp.json().get("listening", False))

    def report_failure(self, assignment_id: str, error: str) -> wire.ResultOut:
        # A workload's error may echo a user's text; a NUL would be refused (``wire.In``)
        # and the failure never reported, leaving the lease to lapse as hoarded.
        text = error.replace("\x00", "\ufffd")[:2000]
        return self._post(f"/api/assignments/{assignment_id}/fail",
                          wire.FailIn(error=text), wire.ResultOut)

    def providers(self) -> list[wire.ProviderOut]:
        """Every provider, following the list's pages to the end (each row's hardware is
        a summary: ``provider`` gives one provider's whole). A page answered 429 (the
        public reads' slots are busy) is asked again as the server says, so that a busy
        moment does not lose the pages already read."""
        out: list[wire.ProviderOut] = []
        after: str | None = None
        while True:
            params = {"after": after} if after is not None else None
            page = wire.ProvidersOut.model_validate(retrying(
                functools.partial(self.request, "GET", "/api/providers", params=params),
                attempts=RATE_LIMITED_ATTEMPTS).json())
            out += page.providers
            if page.next is None or not page.providers:
                return out
            after = page.next

    def provider(self, provider_id: str) -> wire.ProviderOut:
        return self._get(f"/api/providers/{provider_id}", wire.ProviderOut)

    # --- jobs -----------------------------------------------------------------------------

    def quote(self, spec: dict[str, Any], shard_units: list[int]) -> wire.QuoteOut:
        return self._post("/api/market/quote", wire.QuoteIn(spec=spec, shard_units=shard_units),
                          wire.QuoteOut, signed=False)

    def submit_job(self, spec: dict[str, Any], input_digest: str) -> wire.JobOut:
        return self._post("/api/jobs", wire.JobIn(spec=spec, input_digest=input_digest),
                          wire.JobOut)

    def job(self, job_id: str) -> wire.JobOut:
        return self._get(f"/api/jobs/{job_id}", wire.JobOut)

    def jobs(self, owner: str | None = None, limit: int = 50) -> list[wire.JobOut]:
        data = self.request("GET", "/api/jobs", params={
            k: v for k, v in {"owner": owner, "limit": limit}.items() if v is not None}).json()
        return [wire.JobOut.model_validate(j) for j in data["jobs"]]

    def cancel_job(self, job_id: str) -> wire.JobOut:
        return self._post(f"/api/jobs/{job_id}/cancel", {}, wire.JobOut)

    def results(self, job_id: str) -> bytes:
        return self.request("GET", f"/api/jobs/{job_id}/results").content

    def verifiers(self) -> list[str]:
        """The network's trusted verifiers (a sealed job names them: ``client.sealed``)."""
        return list(self.request("GET", "/api/verifiers").json()["verifiers"])

    # --- API keys for the OpenAI-compatible API (/v1) --------------------------------------

    def create_api_key(self, name: str = "", spend_cap: int | None = None) -> wire.ApiKeyOut:
        """Mint a bearer key for /v1 bound to this account; ``.key`` is shown only now."""
        return self._post("/api/api-keys", wire.ApiKeyIn(name=name, spend_cap=spend_cap),
                          wire.ApiKeyOut)

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """Every checkpoint recorded for the job's tasks, oldest first, a page at a time."""
        out: list[dict[str, Any]] = []
        after: int | None = 0
        while after is not None:
            page = self.request("GET", f"/api/jobs/{job_id}/checkpoints",
                                params={"after": after}).json()
            out += page["checkpoints"]
            after = page["next_after"]
        return out

    def api_keys(self) -> list[wire.ApiKeyOut]:
        data = self.request("GET", "/api/api-keys", signed=True).json()
        return [wire.ApiKeyOut.model_validate(k) for k in data["api_keys"]]

    def revoke_api_key(self, key_id: str) -> wire.ApiKeyOut:
        return self._post(f"/api/api-keys/{key_id}/revoke", {}, wire.ApiKeyOut)

    # --- ledger ---------------------------------------------------------------------------

    def journal(self, after: int = 0, limit: int = 1000) -> wire.JournalOut:
        return self._get("/api/ledger/journal", wire.JournalOut, after=after, limit=limit)

    def all_balances(self) -> dict[str, int]:
        """Every balance, read page by page (pages may reflect different journal heads;
        ``client.audit`` compares each at its own)."""
        out: dict[str, int] = {}
        after: str | None = ""
        while after is not None:
            page = self.request("GET", "/api/ledger/balances",
                                params={"after": after, "limit": 5000}).json()
            out.update(page["balances"])
            after = page.get("next")
        return out

    def server_audit(self) -> wire.AuditOut:
        return self._get("/api/ledger/audit", wire.AuditOut)

    def _me(self) -> str:
        if self.identity is None:
            raise DeAIError("no account given and no key loaded")
        return self.identity.id


RATE_LIMITED_ATTEMPTS = 6  # 429s in a row ``retrying`` rides out, whatever ``attempts``


def retrying(call: Callable[[], T], *, attempts: int | None = None, base: float = 0.5,
             cap: float = 15.0, on_retry: Callable[[Exception, float], None] | None = None) -> T:
    """Call until it succeeds, backing off on transport errors and 502/503/504 answers,
    and on 429 for up to ``RATE_LIMITED_ATTEMPTS`` in a row, waiting what the server asked
    (``details.retry_after`` or "retry in N s"; at most ``cap``)."""
    n = limited = 0
    while True:
        try:
            return call()
        except (httpx.TransportError, DeAIError) as exc:
            status = getattr(exc, "status", 0)
            # 500 is a bug on the server, not an outage: retrying would spin forever.
            transient = (isinstance(exc, httpx.TransportError)
                         or status in (429, 502, 503, 504))
            n += 1
            limited = limited + 1 if status == 429 else 0
            if (not transient or (attempts is not None and n >= attempts)
                    or limited >= RATE_LIMITED_ATTEMPTS):
                raise
            delay = min(cap, base * 2 ** min(n, 10)) * (0.5 + random.random() / 2)
            asked = _retry_after(exc) if status == 429 else None
            if asked is not None:
                delay = min(cap, max(asked, 0.0)) + random.random() * base
            if on_retry is not None:
                on_retry(exc, delay)
            time.sleep(delay)


def _retry_after(exc: Exception) -> float | None:
    """The wait a 429 asked for: its ``details.retry_after``, else its "retry in N s"."""
    details = getattr(exc, "details", None) or {}
    try:
        return float(details["retry_after"])
    except (KeyError, TypeError, ValueError):
        pass
    found = re.search(r"retry in (\d+(?:\.\d+)?) s", str(exc))
    return float(found.group(1)) if found else None


def signed_beat(me: Identity, running: list[str] | None = None, *, network: str
                ) -> wire.SignedBeat:
    """A heartbeat signed by ``me`` for the coordinator whose network id is ``network``,
    exactly as ``Client.heartbeat`` would send it, for a relay to carry
    (``Client.relay_heartbeats``)."""
    body = wire.HeartbeatIn(running=running or []).model_dump_json()
    h = me.headers("POST", "/api/providers/heartbeat", body.encode(), network=network)
    return wire.SignedBeat(key=h[auth.HEADER_KEY], timestamp=h[auth.HEADER_TS],
                           nonce=h[auth.HEADER_NONCE], signature=h[auth.HEADER_SIG], body=body)
