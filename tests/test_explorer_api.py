"""The explorer's read API, event stream and /metrics against a real uvicorn coordinator,
on SQLite and on PostgreSQL, with providers driven by hand (no model).

One job runs to completion first; every view is then checked against what the
native API and the journal say. Bad query parameters are 422 JSON errors, never 500.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deai.client.sdk import Client
from deai.core import ledger, wire
from tests.helpers import SPEC, HandProvider, funded, lines
from tests.netutil import Network


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("module_pg_url")
    n = Network(tmp_path_factory.mktemp(f"explorer-{request.param}"), url,
                heartbeat_timeout=30.0, lease_ttl=30.0, challenge_window=1.0)
    n.start_coordinator()
    yield n
    n.close()


@dataclass
class Ran:
    client: Client
    job: wire.JobOut
    providers: list[HandProvider]


def run_job(providers: list[HandProvider], c: Client, items: int) -> wire.JobOut:
    job = c.submit_job(SPEC, c.upload(lines(items)).digest)
    end = time.time() + 90
    while time.time() < end and c.job(job.id).status not in ("completed", "failed"):
        for p in providers:
            for a in p.take(wait=0.2):
                p.answer(a)
    final = c.job(job.id)
    assert final.status == "completed", final
    return final


@pytest.fixture(scope="module")
def ran(net: Network) -> Ran:
    providers = [HandProvider(net, price=700), HandProvider(net, price=900)]
    c = funded(net)
    done = Ran(c, run_job(providers, c, items=6), providers)
    # Who did what (roles, checks) and the job's money are public once the challenge window
    # of its last check has closed: wait for all of it, not just the first task's events.
    end = time.time() + 60
    while not _disclosed(net, done.job):
        assert time.time() < end, "the job's events and money never became public"
        time.sleep(0.3)
    return done


def _disclosed(net: Network, job: wire.JobOut) -> bool:
    if not get(net, "/api/events", kind="task_accepted").json()["events"]:
        return False
    if get(net, f"/api/explorer/jobs/{job.id}").json()["cost_so_far"] != job.cost:
        return False
    passed = get(net, "/api/events", kind="check_passed", limit=500).json()["events"]
    counted = get(net, "/api/explorer/overview").json()["verification"]["checks_passed"]
    return bool(counted == len(passed))


def get(net: Network, path: str, **params: object) -> httpx.Response:
    return httpx.get(f"{net.url}{path}", params=params, timeout=15)  # type: ignore[arg-type]


# --- the page ----------------------------------------------------------------------------

def test_page_and_chart_library_are_served(net: Network) -> None:
    r = get(net, "/explorer/")
    assert r.status_code == 200 and "DeAI explorer" in r.text
    assert httpx.get(f"{net.url}/explorer").status_code in (301, 307, 308)
    for asset in ("app.js", "style.css"):
        assert get(net, f"/explorer/{asset}").status_code == 200
    lib = get(net, "/explorer/lib/chart.js")
    assert lib.status_code == 200 and "javascript" in lib.headers["content-type"]
    assert get(net, "/explorer/missing.js").json()["error"]["code"] == "not_found"


def test_openapi_documents_every_read_endpoint(net: Network) -> None:
    paths = get(net, "/openapi.json").json()["paths"]
    for p in ("/api/explorer/overview", "/api/explorer/providers/{provider_id}",
              "/api/explorer/jobs/{job_id}", "/api/explorer/verification",
              "/api/explorer/ledger", "/api/explorer/audit", "/api/explorer/accounts/{account}",
              "/api/events", "/api/events/stream", "/metrics"):
        assert p in paths, p
    ok = paths["/api/explorer/overview"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("OverviewOut")
    assert "text/event-stream" in paths["/api/events/stream"]["get"]["responses"]["200"]["content"]


# --- views ---------------------------------------------------------------------------------

def test_overview_counts_the_network(net: Network, ran: Ran) -> None:
    o = get(net, "/api/explorer/overview").json()
    mine = {p.id for p in ran.providers}
    assert o["providers_online"] >= 2 and o["cpus"] >= 4 and o["compute_units"] > 0
    assert o["jobs_finished"] >= 1 and o["jobs"]["completed"] >= 1
    assert sum(p["tasks"] for p in o["throughput"]) >= 3 and o["tasks_per_second"] > 0
    assert len(o["throughput"]) == 60 and o["bucket_seconds"] == 10
    [series] = [s for s in o["prices"] if s["workload"] == "embeddings"]
    assert {700, 900} & {p["min"] for p in series["points"]} | {p["max"] for p in
                                                                series["points"]}
    offers = {p["provider"]: p for p in o["provider_prices"] if p["provider"] in mine}
    assert len(offers) == 2
    for p in offers.values():
        assert p["price_per_cu"] == pytest.approx(p["price"] / p["compute_units"], rel=1e-3)
    passed = get(net, "/api/events", kind="check_passed", limit=500).json()["events"]
    assert o["verification"]["checks_passed"] == len(passed)
    assert o["supply"] > 0 and o["journal_seq"] > 0 and o["last_event_id"] > 0


def test_job_detail_maps_every_shard(net: Network, ran: Ran) -> None:
    d = get(net, f"/api/explorer/jobs/{ran.job.id}").json()
    assert d["job"]["id"] == ran.job.id and d["job"]["status"] == "completed"
    assert [s["idx"] for s in d["shards"]] == [0, 1, 2]
    assert d["states"] == {"accepted": 3}
    assert all(s["state"] == "accepted" and s["attempts"] >= 1 and s["providers"]
               for s in d["shards"])
    assert d["cost_so_far"] == ran.job.cost
    assert (d["redone"], d["corrected"]) == (0, 0)  # every shard ran once and stood
    assert not any(s["redone"] or s["corrected"] for s in d["shards"])
    assert {p["id"] for p in d["providers"]} <= {p.id for p in ran.providers}
    assert sum(p["accepted"] for p in d["providers"]) >= 3
    assert {a["job_id"] for a in d["assignments"]} == {ran.job.id}
    r = get(net, "/api/explorer/jobs/job_0000000000000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_provider_detail_has_hardware_money_and_history(net: Network, ran: Ran) -> None:
    p = ran.providers[0]
    d = get(net, f"/api/explorer/providers/{p.id}").json()
    assert d["provider"]["hardware"]["cpu_model"] == "test cpu"
    assert d["provider"]["benchmark"]["gflops"] == 50.0
    assert d["balance"]["stake"] == 10_000_000 == d["provider"]["stake"]
    assert d["pending_earnings"] + d["released_earnings"] == d["provider"]["earned"]
    assert d["recent"] and all(a["provider_id"] == p.id for a in d["recent"])
    assert sum(d["assignments"].values()) >= len(d["recent"])
    assert all(p.id in (e["subject"], *map(str, e["body"].values())) for e in d["checks"])
    assert get(net, f"/api/explorer/providers/{'0' * 64}").status_code == 404


def test_providers_carry_their_standing(net: Network, ran: Ran) -> None:
    unbonded = HandProvider(net, price=950, stake=0)
    provs = {p["id"]: p for p in get(net, "/api/providers").json()["providers"]}
    for hp in ran.providers:  # honest and bonded: online or offline, never slashed
        p = provs[hp.id]
        assert p["slashes"] == 0 and p["probation"] is False
        assert p["standing"] == ("online" if p["online"] else "offline")
    assert provs[unbonded.id]["standing"] == "below_stake"
    assert provs[unbonded.id]["stake"] == 0
    one = get(net, f"/api/explorer/providers/{unbonded.id}").json()["provider"]
    assert one["standing"] == "below_stake" and one["slashes"] == 0
    unbonded.quit()


def test_ledger_view_chains_and_audit_is_cached(net: Network, ran: Ran) -> None:
    d = get(net, "/api/explorer/ledger", limit=5).json()
    entries = d["entries"]
    assert entries[0]["seq"] == d["head_seq"] and entries[0]["hash"] == d["head_hash"]
    for newer, older in zip(entries, entries[1:], strict=False):
        assert newer["seq"] == older["seq"] + 1 and newer["prev_hash"] == older["hash"]
    assert len(entries) == 5 and d["head_seq"] > 5
    older = get(net, "/api/explorer/ledger", limit=5, before=entries[-1]["seq"]).json()
    assert older["entries"][0]["hash"] == entries[-1]["prev_hash"]
    run = httpx.post(f"{net.url}/api/explorer/audit", timeout=30).json()
    assert run["result"]["ok"] and run["result"]["entries"] >= d["head_seq"]
    assert get(net, "/api/explorer/audit").json()["at"] == run["at"]
    assert get(net, "/api/explorer/ledger").json()["last_audit"]["at"] == run["at"]


def test_account_balance_and_history(net: Network, ran: Ran) -> None:
    me = ran.client.identity
    assert me is not None
    d = get(net, f"/api/explorer/accounts/{me.id}").json()
    bal = ran.client.balance()
    assert d["balance"]["available"] == bal.available
    assert d["ledger_accounts"][ledger.acct(me.id)] == bal.available
    assert sum(h["delta"] for h in d["history"]) == bal.available + bal.pending + bal.stake
    assert {h["kind"] for h in d["history"]} >= {"faucet", "escrow"}
    fee = get(net, "/api/explorer/accounts/fee").json()
    assert fee["balance"] is None and "fee" in fee["ledger_accounts"]
    escrow = get(net, f"/api/explorer/accounts/{ledger.escrow(ran.job.id)}").json()
    assert escrow["ledger_accounts"][ledger.escrow(ran.job.id)] == 0 and escrow["history"]
    assert get(net, "/api/explorer/accounts/nobody").status_code == 404
    assert get(net, "/api/explorer/accounts/a%25b").status_code == 422


def test_events_page_and_verification_stream(net: Network, ran: Ran) -> None:
    page = get(net, "/api/events", after=0, limit=500).json()
    ids = [e["id"] for e in page["events"]]
    assert ids == sorted(ids) and page["last_id"] >= ids[-1]
    assert {"job_submitted", "task_assigned", "task_accepted"} <= {e["kind"]
                                                                 for e in page["events"]}
    only = get(net, "/api/events", kind=["job_submitted", "faucet"]).json()["events"]
    assert only and {e["kind"] for e in only} <= {"job_submitted", "faucet"}
    v = get(net, "/api/explorer/verification", limit=50).json()["events"]
    assert all(e["kind"] in ("check_passed", "check_failed", "verdict", "slash") for e in v)
    assert [e["id"] for e in v] == sorted((e["id"] for e in v), reverse=True)


@pytest.mark.parametrize("path, params, headers", [
    ("/api/explorer/overview", {"window": "abc"}, {}),
    ("/api/explorer/overview", {"window": "1"}, {}),
    ("/api/explorer/overview", {"price_window": "1e99"}, {}),
    ("/api/explorer/ledger", {"limit": "0"}, {}),
    ("/api/explorer/ledger", {"limit": "100000"}, {}),
    ("/api/explorer/ledger", {"before": "-1"}, {}),
    ("/api/explorer/verification", {"before": "x"}, {}),
    ("/api/explorer/providers/abc", {"limit": "nan"}, {}),
    ("/api/explorer/accounts/bad%20name", {}, {}),
    ("/api/events", {"after": "-1"}, {}),
    ("/api/events", {"limit": "9" * 30}, {}),
    ("/api/events/stream", {"after": "x"}, {}),
    ("/api/events/stream", {"heartbeat": "0"}, {}),
    ("/api/events/stream", {}, {"Last-Event-ID": "not-a-number"}),
])
def test_bad_query_parameters_are_422_json(net: Network, path: str, params: dict[str, str],
                                           headers: dict[str, str]) -> None:
    r = httpx.get(f"{net.url}{path}", params=params, headers=headers, timeout=10)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"


# --- server-sent events -----------------------------------------------------------------

def read_sse(r: httpx.Response, want: int, timeout: float = 10.0) -> tuple[list[dict], list[str]]:
    """Up to ``want`` events (id + data) and every comment line, until ``timeout``."""
    import json

    events: list[dict] = []
    comments: list[str] = []
    current: dict = {}
    end = time.time() + timeout
    for line in r.iter_lines():
        if line.startswith(":"):
            comments.append(line)
        elif line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and current:
            events.append(current)
            current = {}
        if (want and len(events) >= want) or (not want and len(comments) > 1) \
                or time.time() > end:
            break
    return events, comments


def test_stream_replays_resumes_and_delivers_live(net: Network, ran: Ran) -> None:
    url = f"{net.url}/api/events/stream"
    with httpx.stream("GET", url, params={"after": 0}, timeout=15) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events, _ = read_sse(r, 5)
    assert [e["id"] for e in events] == [e["data"]["id"] for e in events]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert {"kind", "ts", "subject", "body"} <= set(events[0]["data"])

    resume = events[2]["id"]
    with httpx.stream("GET", url, headers={"Last-Event-ID": str(resume)}, timeout=15) as r:
        again, _ = read_sse(r, 1)
    assert again[0]["id"] == events[3]["id"]

    def fund() -> None:
        funded(net, 1234).close()

    with httpx.stream("GET", url, timeout=15) as r:  # from now on only
        timer = threading.Timer(0.5, fund)
        timer.start()
        live: list[dict] = []
        current: dict = {}
        end = time.time() + 10
        for line in r.iter_lines():  # upkeep may publish other events first
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                live.append(current)
                current = {}
                if live[-1]["data"]["kind"] == "faucet" or time.time() > end:
                    break
        timer.join()
    faucets = [e["data"] for e in live if e["data"]["kind"] == "faucet"]
    assert faucets and faucets[0]["body"]["amount"] == 1234
    assert all(e["id"] > events[-1]["id"] for e in live)


def test_stream_sends_heartbeats(net: Network) -> None:
    last = get(net, "/api/events").json()["last_id"]
    with httpx.stream("GET", f"{net.url}/api/events/stream",
                      params={"after": last + 10**6, "heartbeat": 0.5}, timeout=15) as r:
        _, comments = read_sse(r, 0, timeout=5)
    assert ": heartbeat" in comments


def test_stream_ends_promptly_when_the_coordinator_stops(tmp_path: Path) -> None:
    n = Network(tmp_path)
    n.start_coordinator()
    ended = threading.Event()

    def listen() -> None:
        try:
            with httpx.stream("GET", f"{n.url}/api/events/stream", timeout=30) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass
        ended.set()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    time.sleep(1.0)
    assert n.coordinator is not None
    started = time.monotonic()
    n.coordinator.stop(20)  # SIGTERM; uvicorn re-raises it after a clean shutdown
    took = time.monotonic() - started
    assert ended.wait(5) and took < 4.0, took


# --- metrics ---------------------------------------------------------------------------------

def samples(net: Network) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = get(net, "/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_placements_durations_and_postings(net: Network,
                                                                   ran: Ran) -> None:
    get(net, "/api/explorer/overview")
    get(net, "/no/such/route")
    m = samples(net)
    assert m[("deai_http_requests_total", (("method", "GET"), ("route", "/api/explorer/overview"),
                                           ("status", "200")))] >= 1
    assert m[("deai_http_requests_total", (("method", "GET"), ("route", "<unmatched>"),
                                           ("status", "404")))] >= 1
    assert m[("deai_placements_total", ())] >= 3
    assert m[("deai_task_outcomes_total", (("outcome", "accepted"),))] >= 3
    assert m[("deai_task_duration_seconds_count", ())] >= 3
    assert m[("deai_ledger_entries_total", (("kind", "payout"),))] >= 3
    assert m[("deai_ledger_postings_total", (("kind", "escrow"),))] >= 2
    assert m[("deai_ledger_volume_micro_total", (("kind", "faucet"),))] > 0
    assert ("deai_verification_outcomes_total", (("kind", "slash"),)) in m
    assert m[("deai_providers", (("state", "online"),))] >= 2
    assert m[("deai_jobs", (("status", "completed"),))] >= 1
    head = get(net, "/api/ledger/journal", limit=1).json()["head_seq"]
    assert m[("deai_journal_seq", ())] >= head - 5  # a little may have landed since
    again = samples(net)  # tailing again does not double count
    assert again[("deai_ledger_entries_total", (("kind", "payout"),))] == \
        m[("deai_ledger_entries_total", (("kind", "payout"),))]


def test_chart_library_missing_serves_a_stub(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from deai.coordinator import api_explorer
    from deai.coordinator.app import create_app
    from deai.coordinator.settings import Settings

    monkeypatch.setattr(api_explorer, "CHART_JS", tmp_path / "absent.js")
    with TestClient(create_app(Settings(data_dir=tmp_path))) as client:
        r = client.get("/explorer/lib/chart.js")
    assert r.status_code == 200 and "DEAI_CHARTS_MISSING" in r.text
