"""Datasets on the client side: publish encrypted, use under terms, release the key.

The owner encrypts the file under a fresh dataset key with the AEAD of sealed
jobs (``client.sealed.encrypt``, associated data ``core.datasets.ad(id)``),
uploads the ciphertext and registers it with its terms and the key wrapped to
itself only. The coordinator never holds the key: the owner's ``serve`` loop
(``deai dataset serve``) asks for the uses of its datasets whose leased
providers wait, checks the terms itself, and posts the key wrapped to exactly
those providers (their X25519 keys, derived from their account keys).

    ds = datasets.publish(client, data, "my rows", terms)
    job = datasets.submit(other, spec, ds.id)        # accepts the current terms
    datasets.serve_once(client)                      # the owner releases the key
    datasets.serve_once(client, trust=ids)           # ... to those only, refusing others
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deai.client import sealed as crypto
from deai.core import batch
from deai.core import datasets as D
from deai.core import wire_datasets as W
from deai.core.errors import DeAIError, InvalidInput
from deai.core.kinds import train_data

if TYPE_CHECKING:
    from deai.client.keys import Identity
    from deai.client.sdk import Client
    from deai.core import wire


log = logging.getLogger("deai.client.datasets")


def new_id() -> str:
    return "ds_" + secrets.token_hex(12)


def encrypt(data: bytes, dataset_id: str, key: bytes) -> bytes:
    nonce, ct = crypto.encrypt(key, data, D.ad(dataset_id))
    return json.dumps({"deai_dataset": D.MAGIC, "id": dataset_id,
                       "nonce": base64.b64encode(nonce).decode(),
                       "ct": base64.b64encode(ct).decode()}, separators=(",", ":")).encode()


def decrypt(blob: bytes, dataset_id: str, key: bytes) -> bytes:
    try:
        obj = batch.safe_loads(blob)
        nonce, ct = base64.b64decode(obj["nonce"]), base64.b64decode(obj["ct"])
        ok = obj.get("deai_dataset") == D.MAGIC and obj.get("id") == dataset_id
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise crypto.SealError(f"not dataset {dataset_id}'s ciphertext")
    return crypto.decrypt(key, nonce, ct, D.ad(dataset_id))


def summary(data: bytes) -> W.TrainInfo:
    """A training file's public summary (InvalidInput names what is wrong with it)."""
    _, _, info = train_data.parse_file(data, field="dataset")
    return W.TrainInfo(n=info.n, features=info.features, classes=info.classes,
                       sha256=info.sha256)


def publish(client: Client, data: bytes, name: str, terms: D.Terms,
            providers: frozenset[str] | None = None) -> W.DatasetPrivateOut:
    """Encrypt ``data`` under a fresh key, upload the ciphertext, register it with ``terms``;
    ``providers``: the only ones its jobs may run on (None: any)."""
    if "embeddings" in terms.allow and "train" not in terms.allow:
        raise InvalidInput("allow: only training jobs can use a dataset so far",
                           field="allow")
    _some(providers)
    info = summary(data) if "train" in terms.allow else None
    dataset_id, key = new_id(), secrets.token_bytes(crypto.KEY_BYTES)
    digest = client.upload(encrypt(data, dataset_id, key)).digest
    body = W.DatasetIn(id=dataset_id, name=name, blob_digest=digest, size=len(data), train=info,
                       owner_key=crypto.wrap(key, client._me()), terms=terms,
                       providers=sorted(providers) if providers is not None else None)
    return client._post("/api/datasets", body, W.DatasetPrivateOut)


def _some(providers: frozenset[str] | None) -> None:
    if providers is not None and not 1 <= len(providers) <= W.MAX_TRUSTED:
        raise InvalidInput(f"providers: name 1 to {W.MAX_TRUSTED} providers "
                           f"({len(providers)} given)", field="providers")


def set_providers(client: Client, dataset_id: str,
                  providers: frozenset[str] | None) -> W.DatasetOut:
    """Name the only providers one's dataset's jobs run on from now on (None: any)."""
    _some(providers)
    body = W.ProvidersIn(providers=sorted(providers) if providers is not None else None)
    return W.DatasetOut.model_validate(client.request(
        "PUT", f"/api/datasets/{dataset_id}/providers",
        json_body=body.model_dump(mode="json")).json())


def listing(client: Client, owner: str | None = None) -> list[W.DatasetOut]:
    params = {"owner": owner} if owner else None
    raw = client.request("GET", "/api/datasets", params=params, signed=False).json()
    return [W.DatasetOut.model_validate(d) for d in raw["datasets"]]


def show(client: Client, dataset_id: str) -> W.DatasetOut:
    raw = client.request("GET", f"/api/datasets/{dataset_id}").json()
    return (W.DatasetPrivateOut if "blob_digest" in raw else W.DatasetOut).model_validate(raw)


def revoke(client: Client, dataset_id: str) -> W.DatasetOut:
    return client._post(f"/api/datasets/{dataset_id}/revoke", {}, W.DatasetOut)


def delete(client: Client, dataset_id: str) -> W.DatasetOut:
    """Delete one's dataset (revoked, its bytes no longer kept) once no job using it runs."""
    return W.DatasetOut.model_validate(
        client.request("DELETE", f"/api/datasets/{dataset_id}").json())


def uses(client: Client, dataset_id: str) -> list[W.UseOut]:
    """Every use of the dataset, read a page at a time."""
    out: list[W.UseOut] = []
    after: int | None = 0
    while after is not None:
        page = W.UsesOut.model_validate(client.request(
            "GET", f"/api/datasets/{dataset_id}/uses", params={"after": after}).json())
        out += page.uses
        after = page.next_after
    return out


def accept(ds: W.DatasetOut, price: int | None = None) -> dict[str, Any]:
    """The consent a job signs: the dataset's current terms (or the price it will pay)."""
    return {"price_per_use": ds.terms.price_per_use if price is None else price,
            "allow": list(ds.terms.allow)}


def submit(client: Client, spec: dict[str, Any], dataset_id: str,
           price: int | None = None) -> wire.JobOut:
    """Submit a training job on ``dataset_id``, accepting its terms (``price``: the price
    per use this job accepts, default the current one)."""
    ds = show(client, dataset_id)
    full = {**spec, "dataset": "file", "dataset_id": dataset_id,
            "dataset_terms": accept(ds, price)}
    # A job names its input by digest; a dataset job's input is the reference to the
    # dataset (the coordinator plans it from the dataset's public summary, and the rows
    # reach the leased providers only through the owner's key release).
    reference = client.upload(json.dumps({"dataset": dataset_id}).encode()).digest
    return client.submit_job(full, reference)


# --- the owner's key release -------------------------------------------------------------

def _key(ds: W.DatasetOut, identity: Identity) -> bytes:
    if not isinstance(ds, W.DatasetPrivateOut) or not ds.owner_key:
        raise crypto.SealError(f"dataset {ds.id} is not this key's")
    return crypto.unwrap(ds.owner_key, identity)


@dataclass
class Served:
    """One pass of the owner's release loop: (job, providers) released and refused, and
    (job, error) for each job it could not serve."""
    released: list[tuple[str, list[str]]] = field(default_factory=list)
    refused: list[tuple[str, list[str]]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def serve_pass(client: Client, now: float | None = None,
               trust: frozenset[str] | None = None) -> Served:
    """Release the key of the owner's datasets to every provider leased for an allowed use
    that waits for it; with ``trust`` (provider ids), only to those, and refuse the others
    (``refuse``: their leases fail, the task goes to another provider). Providers a
    dataset's named list leaves out (``PendingOut.unlisted``) are refused too. Terms are
    checked here too."""
    assert client.identity is not None
    pending = client.request("GET", "/api/datasets/pending").json()["pending"]
    out = Served()
    for p in (W.PendingOut.model_validate(x) for x in pending):
        try:
            _serve_one(client, client.identity, p, now, trust, out)
        except DeAIError as exc:  # the job ended meanwhile, say: the others still served
            log.warning("dataset %s, job %s: %s", p.dataset_id, p.job_id, exc)
            out.failed.append((p.job_id, str(exc)))
    return out


def _serve_one(client: Client, me: Identity, p: W.PendingOut, now: float | None,
               trust: frozenset[str] | None, out: Served) -> None:
    ds = show(client, p.dataset_id)
    why = D.refusal(ds.terms, D.Accepted(price_per_use=p.price, allow=ds.terms.allow),
                    p.kind, now if now is not None else _now(), ds.revoked_at is not None, 0)
    if why is not None and why[0] != "expires_at":  # expiry binds new jobs only
        return
    to = [pid for pid in p.providers if trust is None or pid in trust]
    # and those the dataset's named list leaves out (leased before the list changed)
    away = [pid for pid in p.providers if pid not in to] + p.unlisted
    if away:
        out.refused.append((p.job_id, refuse(client, p.dataset_id, p.job_id, away)))
    if to:
        key = _key(ds, me)
        keys = {pid: crypto.wrap(key, pid) for pid in to}
        got = client.request("POST", f"/api/datasets/{p.dataset_id}/release",
                             json_body={"job_id": p.job_id, "keys": keys}).json()
        out.released.append((p.job_id, got["released"]))


def serve_once(client: Client, now: float | None = None,
               trust: frozenset[str] | None = None) -> list[tuple[str, list[str]]]:
    """``serve_pass``'s releases: (job, providers) released."""
    return serve_pass(client, now, trust).released


def refuse(client: Client, dataset_id: str, job_id: str, providers: list[str]) -> list[str]:
    """Turn away providers leased for ``job_id`` (none released the key yet): their leases
    fail and the task is placed again without them; returns those refused."""
    got = client.request("POST", f"/api/datasets/{dataset_id}/refuse",
                         json_body={"job_id": job_id, "providers": providers}).json()
    return list(got["refused"])


def read_trust(path: Path) -> frozenset[str]:
    """Provider ids, one a line (``#`` starts a comment), from the owner's trust file."""
    ids = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        pid = line.split("#", 1)[0].strip()
        if not pid:
            continue
        if len(pid) != 64 or any(ch not in "0123456789abcdef" for ch in pid):
            raise InvalidInput(f"trust: line {n} of {path} is not a provider id "
                               "(64 hex digits)", field="trust")
        ids.add(pid)
    return frozenset(ids)


def _now() -> float:
    import time

    return time.time()


def serve(client: Client, stop: threading.Event, interval: float = 1.0,
          trust: frozenset[str] | None = None) -> None:
    """``serve_pass`` until ``stop`` is set."""
    while not stop.is_set():
        serve_pass(client, trust=trust)
        stop.wait(interval)


def rows(client: Client, identity: Identity, dataset_id: str, job_id: str
         ) -> tuple[str, str]:
    """(For a leased provider.) The dataset's rows packed as a training payload's x and y,
    once the owner has released the key to this provider."""
    got = W.KeyOut.model_validate(client.request(
        "GET", f"/api/datasets/{dataset_id}/key", params={"job": job_id}).json())
    key = crypto.unwrap(got.wrapped, identity)
    blob = client.request("GET", f"/api/datasets/{dataset_id}/content").content
    x, y, _ = train_data.parse_file(decrypt(blob, dataset_id, key), field="dataset")
    return train_data.pack(x, y)
