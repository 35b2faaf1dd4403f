"""The explorer's reads over a history with every standing and every shard mark
(``tests.explorer_world``): the coordinator's own applier on a real SQLite database,
on an injected clock.

A provider's standing is the worst public fact that holds (slashed, on probation,
below the minimum stake, offline); a shard redone after a verdict or corrected after
an audit is counted as such, but only once the challenge window has closed (a role is
sealed until then); the provider list counts slashes with one grouped query.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import event

from deai.coordinator import explorer_views as views
from deai.core.clock import ManualClock
from deai.core.standing import Standing, standing
from tests.explorer_world import LEASE_ESCROW, World, build, serve


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build(tmp_path_factory.mktemp("explorer-world"))


def test_the_worst_fact_wins() -> None:
    base = {"online": True, "slashes": 0, "probation": False, "stake": 10, "min_stake": 10}
    assert standing(**base) == Standing.ONLINE
    assert standing(**{**base, "online": False}) == Standing.OFFLINE
    assert standing(**{**base, "online": False, "stake": 9}) == Standing.BELOW_STAKE
    assert standing(**{**base, "stake": 0, "probation": True}) == Standing.PROBATION
    assert standing(**{**base, "slashes": 1, "probation": True, "stake": 0}) == Standing.SLASHED
    assert [s.value for s in Standing] == ["slashed", "probation", "below_stake", "offline",
                                           "online"]


def test_every_standing_from_a_real_history(world: World) -> None:
    got = {p.id: p for p in world.c.providers()}
    assert {pid: p.standing for pid, p in got.items()} == world.standing
    assert set(world.standing.values()) == {s.value for s in Standing}
    for pid, p in got.items():
        assert world.c.provider(pid) == p  # one provider reads as in the list
        assert p.slashes == (1 if world.standing[pid] == "slashed" else 0)
    slashed = [p for p in got.values() if p.standing == "slashed"]
    assert all(p.probation and p.stake < world.c.settings.min_stake for p in slashed)
    assert all(p.online is False for p in slashed)  # and a slashed one that beats ...
    world.c.heartbeat(slashed[0].id, [])
    again = world.c.provider(slashed[0].id)
    assert again.online and again.standing == "slashed"  # ... is still not "online"


def test_the_list_counts_slashes_in_one_query(world: World) -> None:
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM events" in statement:
            seen.append(statement)

    engine = world.c.db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert len(world.c.providers()) == len(world.standing)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(seen) == 1 and "GROUP BY" in seen[0], seen


def test_redone_and_corrected_shards_are_counted_once_public(world: World) -> None:
    d = views.job_detail(world.c, world.job_id)
    (shard,) = d.shards
    assert shard.attempts == 1 and shard.state == "accepted"  # never placed again ...
    assert shard.redone and shard.corrected  # ... yet not its primary's result, then fixed
    assert (d.redone, d.corrected) == (1, 1)
    clock = world.c.clock
    assert isinstance(clock, ManualClock)
    now = clock.t
    # Back to when all of it was inside its window (the seats were leased at t=0):
    # who checked what is sealed then.
    clock.t = world.c.settings.challenge_window - 1
    try:
        early = views.job_detail(world.c, world.job_id)
    finally:
        clock.t = now
    assert (early.redone, early.corrected) == (0, 0)
    assert not early.shards[0].redone and not early.shards[0].corrected


@pytest.fixture(scope="module")
def url(world: World) -> Iterator[str]:
    with serve(world.c) as u:
        yield u


def test_the_public_api_carries_standing_and_marks(world: World, url: str) -> None:
    provs = httpx.get(f"{url}/api/providers", timeout=30).json()["providers"]
    assert {p["id"]: p["standing"] for p in provs} == world.standing
    assert {p["id"]: p["slashes"] for p in provs if p["slashes"]} == {
        pid: 1 for pid, st in world.standing.items() if st == "slashed"}
    d = httpx.get(f"{url}/api/explorer/jobs/{world.job_id}", timeout=30).json()
    assert (d["redone"], d["corrected"]) == (1, 1)
    assert d["shards"][0]["redone"] is True and d["shards"][0]["corrected"] is True
    page = httpx.get(f"{url}/api/explorer/ledger", params={"limit": 30}, timeout=30).json()
    older = httpx.get(f"{url}/api/explorer/ledger",
                      params={"limit": 30, "before": page["entries"][-1]["seq"]},
                      timeout=30).json()
    assert older["entries"][0]["seq"] == page["entries"][-1]["seq"] - 1



def test_leases_and_clusters_show_public_facts_only(world: World, url: str) -> None:
    got = views.leases_view(world.c, 50)
    assert got.leases == {"active": 2, "ended": 1}
    assert got.lease_end_reasons == {"provider lost": 1}
    assert got.clusters == {"running": 1} and got.nodes_running == 2
    (cl,) = got.recent_clusters
    assert cl.id == "cl_world" and len(cl.providers) == 2
    assert {r.id: r.cluster for r in got.recent_leases} == {
        "lse_head": "cl_world", "lse_worker": "cl_world", "lse_gone": None}
    # Hosts with their per-hour prices by resource class and what live leases hold.
    used = {h.provider: h.cpus_used for h in got.hosts}
    assert sorted(used.values()) == [0, 2, 2], used  # the ended lease holds nothing
    assert {h.provider for h in got.hosts if h.cpus_used} == {
        r.provider for r in got.recent_leases if r.status == "active"}
    assert all(h.prices == {"cpu": 360_000, "memory_gb": 36_000} for h in got.hosts)
    assert got.utilisation == 4 / 12
    # A host's own page: its offer and the leases it hosted, nothing private.
    head = next(r.provider for r in got.recent_leases if r.id == "lse_head")
    page = views.provider_detail(world.c, head, 20)
    assert page.lease_host is not None and page.lease_host.cpus_used == 2
    assert [r.id for r in page.leases] == ["lse_head"]
    ptext = httpx.get(f"{url}/api/explorer/providers/{head}", timeout=30).text
    assert '"lse_head"' in ptext and str(LEASE_ESCROW) not in ptext
    text = httpx.get(f"{url}/api/explorer/leases", timeout=30).text
    for private in (str(LEASE_ESCROW), "never shown", '"owner"', '"escrow"'):
        assert private not in text, private


def test_an_accounts_history_is_searched_a_bounded_range_at_a_time(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each answer searches at most ``HISTORY_WINDOW`` entries (an account with old or few
    entries must not make a visitor's request walk the whole journal) and says where it
    stopped; paging back from there finds every entry once, newest first."""
    def pages(limit: int) -> tuple[list[int], int]:
        seqs, before, asked = [], None, 0
        while True:
            out = views.account_view(world.c, "fee", limit, before)
            asked += 1
            assert [r.seq for r in out.history] == sorted(
                (r.seq for r in out.history), reverse=True)
            assert all(before is None or r.seq < before for r in out.history)
            seqs += [r.seq for r in out.history]
            if not out.searched_from:
                return seqs, asked
            assert before is None or out.searched_from < before
            before = out.searched_from

    whole = views.account_view(world.c, "fee", 500).history
    assert len(whole) >= 3 and whole[-1].seq > 0
    monkeypatch.setattr(views, "HISTORY_WINDOW", 2)
    for limit in (1, 2, 500):
        seqs, asked = pages(limit)
        assert seqs == [r.seq for r in whole]
        assert asked >= len(whole) // limit
    # nothing of the account's in the range searched: an empty page that points further
    # back, not a 404
    older = views.account_view(world.c, "fee", 500, before=whole[-1].seq)
    assert older.history == [] and older.searched_from < whole[-1].seq
