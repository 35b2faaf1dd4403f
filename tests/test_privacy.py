"""Private by default: a job, its data and an account's keys are read only by their owner,
or by a provider while its lease needs them; the public surfaces carry public facts only.

A real coordinator process on loopback (SQLite, verification off) with providers
driven by hand through the SDK, so each read can be tried at each point of a
lease: anonymous, by another account, by the owner, by the leaseholder while the
lease is live and after it ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator import public
from deai.core import auth, wire
from deai.core.errors import Forbidden, NotFound
from tests.netutil import Network

MODEL = "all-MiniLM-L6-v2"
SPEC = {"kind": "embeddings", "model": MODEL, "max_price": 2000, "deadline": 600,
        "shard_size": 10}


def big(tag: str, note: str = "") -> bytes:
    """One line whose shard is over the inline size, so a provider must download it."""
    texts = [f"private {tag} {note}", *(ch * 30_000 for ch in "xyz")]
    return json.dumps({"custom_id": f"{tag}0", "method": "POST", "url": "/v1/embeddings",
                       "body": {"model": MODEL, "input": texts}}).encode() + b"\n"


def lines(n: int, tag: str) -> bytes:
    return b"".join(json.dumps({"custom_id": f"{tag}{i}", "method": "POST",
                                "url": "/v1/embeddings",
                                "body": {"model": MODEL, "input": f"private {tag} {i}"}}
                               ).encode() + b"\n" for i in range(n))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("privacy"), heartbeat_timeout=30.0, lease_ttl=30.0,
                verify=False)
    n.start_coordinator()
    yield n
    n.close()


def account(net: Network) -> Client:
    c = Client(net.url, Identity.generate())
    c.faucet(100_000_000)
    return c


def provider(net: Network, price: int = 1000) -> Client:
    p = account(net)
    p.register(wire.RegisterIn(
        hardware=wire.Hardware(cpu_model="test cpu", cores=2, memory_mb=4096),
        benchmark=wire.Benchmark(gflops=50.0, mem_gbps=10.0), threads=1,
        offers=[wire.OfferIn(workload="embeddings", model=MODEL, price=price)]))
    p.bond(10_000_000)
    return p


def answer(p: Client, a: wire.AssignmentOut, data: bytes) -> str:
    rows = [json.loads(x) for x in data.splitlines()]
    out = b"".join(json.dumps({"custom_id": r["custom_id"],
                               "embeddings": [[0.25] * 384 for _ in r["input"]],
                               "prompt_tokens": 4}).encode() + b"\n" for r in rows)
    digest = p.upload(out).digest
    assert p.identity is not None
    sig = p.identity.sign(auth.result_message(a.id, digest, a.units))
    assert p.submit_result(a.id, wire.ResultIn(output_digest=digest, units=a.units,
                                               signature=sig)).status == "accepted"
    return digest


def signed_get(net: Network, who: Identity, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{net.url}{path}", params=params,
                     headers=who.headers("GET", path, b"", network=net.network_id))


@pytest.fixture(scope="module")
def story(net: Network) -> dict[str, object]:
    """Alice runs a job on Bob's machine; Mallory, another account, watches everything.
    The shard is over the inline size, so the provider must download it."""
    time.sleep(0.5)
    bob = provider(net)
    alice, mallory = account(net), account(net)
    up = alice.upload(big("alice"))
    job = alice.submit_job(SPEC, up.digest)
    [lease] = bob.poll(wait=10).assignments
    assert lease.input_b64 is None
    during = {who: httpx.get(f"{net.url}/api/blobs/{lease.input_digest}",
                             headers=ident.headers("GET", f"/api/blobs/{lease.input_digest}",
                                                   b"", network=net.network_id)).status_code
              for who, ident in (("bob", bob.identity), ("mallory", mallory.identity))}
    shard = bob.download(lease.input_digest)
    out = answer(bob, lease, shard)
    for _ in range(100):
        if alice.job(job.id).status == "completed":
            break
        time.sleep(0.1)
    return {"alice": alice, "bob": bob, "mallory": mallory, "job": job.id, "input": up.digest,
            "shard": lease.input_digest, "task_output": out, "during": during,
            "output": alice.job(job.id).output_digest}


# --- jobs --------------------------------------------------------------------------------

def test_job_listing_is_the_signers_own(net: Network, story: dict) -> None:
    alice, mallory = story["alice"], story["mallory"]
    assert httpx.get(f"{net.url}/api/jobs").status_code == 401
    assert [j.id for j in alice.jobs()] == [story["job"]]
    assert mallory.jobs() == []
    assert mallory.jobs(owner=alice.identity.id) == []  # asking for another owner: nothing


def test_job_spec_status_and_results_are_the_owners(net: Network, story: dict) -> None:
    alice, mallory, job = story["alice"], story["mallory"], story["job"]
    for path in (f"/api/jobs/{job}", f"/api/jobs/{job}/results"):
        r = httpx.get(f"{net.url}{path}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = signed_get(net, mallory.identity, path)
        assert r.status_code == 404, r.text  # the same answer as for a job that is not there
        assert signed_get(net, mallory.identity, "/api/jobs/job_0000000000000000"
                          ).status_code == 404
    assert alice.job(job).spec["shard_size"] == 10
    assert alice.results(job).count(b"\n") == 1
    with pytest.raises(NotFound):
        mallory.results(job)


# --- blobs -------------------------------------------------------------------------------

def test_blobs_are_read_by_uploader_job_owner_and_live_lease_only(net: Network,
                                                                 story: dict) -> None:
    alice, bob, mallory = story["alice"], story["bob"], story["mallory"]
    digests = [story["input"], story["shard"], story["task_output"], story["output"]]
    for d in digests:
        assert httpx.get(f"{net.url}/api/blobs/{d}").status_code == 401
        r = signed_get(net, mallory.identity, f"/api/blobs/{d}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert len(alice.download(d)) > 0  # uploaded it, or owns the job that uses it
    # Bob read the shard while his lease was live; Mallory could not, then or now.
    assert story["during"] == {"bob": 200, "mallory": 404}
    with pytest.raises(NotFound):  # the lease is over: the capability went with it
        bob.download(story["shard"])
    with pytest.raises(NotFound):
        bob.download(story["input"])
    assert bob.download(story["task_output"])  # he uploaded that one himself
    # A guess that hits someone's blob answers exactly like a guess that hits nothing.
    miss = signed_get(net, mallory.identity, "/api/blobs/" + "0" * 64)
    hit = signed_get(net, mallory.identity, f"/api/blobs/{story['input']}")
    assert miss.status_code == hit.status_code == 404


def test_a_job_cannot_name_someone_elses_blob(net: Network, story: dict) -> None:
    mallory = story["mallory"]
    before = mallory.balance()
    head = mallory.journal(limit=1).head_seq
    with pytest.raises(NotFound) as info:
        mallory.submit_job(SPEC, story["input"])
    assert info.value.field == "input_digest"
    assert mallory.balance() == before and mallory.journal(limit=1).head_seq == head


def test_a_payload_naming_a_foreign_digest_gives_the_lease_nothing(net: Network,
                                                                  story: dict) -> None:
    """Mallory's job names Alice's digest inside its data and runs on Mallory's own
    provider: the lease may read Mallory's shard, not what it names."""
    mallory = story["mallory"]
    mprov = provider(net, price=100)  # the cheapest: the lease comes to it
    data = big("mallory", f"see {story['input']}")
    mallory.submit_job({**SPEC, "max_price": 1000}, mallory.upload(data).digest)
    leases = []
    for _ in range(20):
        leases += mprov.poll(wait=2).assignments
        if leases:
            break
    assert leases, "the provider got no lease"
    assert mprov.download(leases[0].input_digest)  # its own shard: yes
    with pytest.raises(NotFound):
        mprov.download(story["input"])  # Alice's blob, named in the payload: no


# --- /v1 files and API keys --------------------------------------------------------------

def test_files_batches_and_api_keys_are_per_account(net: Network, story: dict) -> None:
    alice, mallory = story["alice"], story["mallory"]
    ka = alice.create_api_key("alice's", spend_cap=5_000_000)
    km = mallory.create_api_key("mallory's")
    up = httpx.post(f"{net.url}/v1/files", headers={"authorization": f"Bearer {ka.key}"},
                    files={"file": ("a.jsonl", lines(2, "file"))}, data={"purpose": "batch"})
    assert up.status_code == 200, up.text
    fid = up.json()["id"]
    bearer = {"authorization": f"Bearer {km.key}"}
    for path in (f"/v1/files/{fid}", f"/v1/files/{fid}/content"):
        assert httpx.get(f"{net.url}{path}").status_code == 401
        assert httpx.get(f"{net.url}{path}", headers=bearer).status_code == 404
    assert httpx.get(f"{net.url}/v1/batches", headers=bearer).json()["data"] == []
    # The file's bytes are not reachable through the native blob route either.
    with alice_file(net, ka.key, fid) as digest:
        assert signed_get(net, mallory.identity, f"/api/blobs/{digest}").status_code == 404
        assert alice.download(digest)
    # Key details: only the account's own, and only signed.
    assert httpx.get(f"{net.url}/api/api-keys").status_code == 401
    assert [k.id for k in mallory.api_keys()] == [km.id]
    assert ka.id in [k.id for k in alice.api_keys()]
    with pytest.raises((NotFound, Forbidden)) as info:
        mallory.revoke_api_key(ka.id)
    assert info.value.status in (403, 404)


class alice_file:  # noqa: N801 - a tiny context manager, read as a phrase
    """The digest of a /v1 file, from its content (what a guesser would compute)."""

    def __init__(self, net: Network, key: str | None, fid: str) -> None:
        self.net, self.key, self.fid = net, key, fid

    def __enter__(self) -> str:
        import hashlib
        r = httpx.get(f"{self.net.url}/v1/files/{self.fid}/content",
                      headers={"authorization": f"Bearer {self.key}"})
        assert r.status_code == 200
        return hashlib.sha256(r.content).hexdigest()

    def __exit__(self, *exc: object) -> None:
        return None


# --- the public surfaces -----------------------------------------------------------------

def _public_texts(net: Network, story: dict) -> dict[str, str]:
    pid = story["bob"].identity.id
    paths = ["/api/events?after=0&limit=500", "/api/explorer/jobs?limit=100",
             f"/api/explorer/jobs/{story['job']}", f"/api/explorer/providers/{pid}",
             "/api/explorer/verification", "/api/explorer/overview", "/metrics",
             "/api/explorer/ledger?limit=200"]
    texts = {p: httpx.get(f"{net.url}{p}").text for p in paths}
    got: list[str] = []
    with httpx.stream("GET", f"{net.url}/api/events/stream",
                      params={"after": 0, "heartbeat": 0.5}, timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith(": heartbeat"):
                break
            got.append(line)
    texts["/api/events/stream"] = "\n".join(got)
    return texts


def test_explorer_events_and_metrics_carry_no_private_data(net: Network,
                                                          story: dict) -> None:
    texts = _public_texts(net, story)
    assert "job_submitted" in texts["/api/events/stream"]
    secret = [story["input"], story["shard"], story["task_output"], story["output"],
              "private alice"]
    for path, text in texts.items():
        for s in secret:
            assert s not in text, f"{path} shows {s[:20]}"
    detail = httpx.get(f"{net.url}/api/explorer/jobs/{story['job']}").json()
    assert set(detail["job"]["spec"]) <= set(public.PUBLIC_SPEC)
    assert detail["job"]["output_digest"] is None
    assert all(a["output_digest"] is None for a in detail["assignments"])
    listed = httpx.get(f"{net.url}/api/explorer/jobs").json()["jobs"]
    assert story["job"] in [j["id"] for j in listed]
    assert all(set(j["spec"]) <= set(public.PUBLIC_SPEC) for j in listed)


def test_api_key_events_show_no_key_id_name_or_cap(net: Network, story: dict) -> None:
    k = story["alice"].create_api_key("my secret project", spend_cap=1234567)
    evs = httpx.get(f"{net.url}/api/events", params={"after": 0, "limit": 500}).json()
    mine = [e for e in evs["events"] if e["kind"].startswith("api_key")]
    assert mine and all(e["body"] == {} for e in mine)
    text = json.dumps(evs)
    assert k.id not in text and "my secret project" not in text and "1234567" not in text


def test_check_event_bodies_lose_their_digests() -> None:
    """Verification events name parties and outcomes, never the outputs compared."""
    d = "ab" * 32
    body = {"subject": "p1", "checker": "p2", "subject_output": d, "checker_output": d,
            "referee_output": d, "output": d, "reference": d, "statistic": 0.99,
            "detail": "cosine", "fault": "none", "job": "job_1", "amount": 5}
    for kind in ("check_passed", "check_failed", "verdict", "slash"):
        shown = public.event_body(kind, body)
        assert d not in json.dumps(shown) and shown["subject"] == "p1"
    assert public.event_body("checkpoint", {"digest": d, "step": 3}) == {"step": 3}
    assert public.event_body("a_kind_nobody_listed", {"x": 1}) == {}



def test_verdicts_in_the_public_journal_carry_commitments_not_output_digests() -> None:
    """A verdict's ``*_output`` fields are commitments bound to the task's input: whoever
    knows both digests (the owner, the parties) can check one; a bare digest guess can't."""
    from deai.core.verify import evidence

    inp, out = "11" * 32, "ab" * 32
    body = {"subject": "p1", "subject_output": out, "checker_output": None,
            "referee_output": "", "fault": "subject", "statistic": 0.5}
    blinded = evidence.blind(body, inp)
    assert out not in json.dumps(blinded)
    assert blinded["subject_output"] == evidence.commitment(inp, out)
    assert blinded["subject_output"] != evidence.commitment("22" * 32, out)
    assert {k: v for k, v in blinded.items() if k != "subject_output"} == {
        k: v for k, v in body.items() if k != "subject_output"}
