"""Lease hoarding costs: a provider that takes leases and lets them lapse.

A hand-driven provider, the cheapest on the network with three free slots,
takes a three-task job and sits on it while heartbeating. Each lapse costs it
reputation and that task (matching never offers it the task again: another
provider runs it); the third lapse within the window puts it on probation and
slashes 1 % of its stake through the journal (a ``slash`` entry whose reason is
``lease_hoarding``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from deai.coordinator import hoarding
from tests.helpers import SPEC, HandProvider, audit_ok, funded, journal, lines
from tests.netutil import Network

STAKE = 20_000_000  # above the minimum after a slash: only the task exclusion keeps it off


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("hoarding"), heartbeat_timeout=120.0, lease_ttl=2.0,
                verify=False)
    n.start_coordinator()
    yield n
    n.close()


def test_a_hoarder_loses_the_task_reputation_and_stake(net: Network) -> None:
    hoarder = HandProvider(net, price=1, stake=STAKE, slots=3)
    client = funded(net)
    job = client.submit_job(SPEC, client.upload(lines(6)).digest)  # 3 tasks of 2 lines
    assert sum(job.tasks.values()) == 3
    held: dict[str, str] = {}
    end = time.time() + 120
    while len(held) < 3:
        assert time.time() < end, f"the hoarder got {len(held)} leases"
        held.update({a.id: a.task_id for a in hoarder.take(wait=2.0)})
    assert len(set(held.values())) == 3

    honest = HandProvider(net, price=1500)  # joins once the hoarder holds every task
    served: set[str] = set()
    offered_again: list[str] = []
    end = time.time() + 240
    while client.job(job.id).status not in ("completed", "failed", "cancelled"):
        assert time.time() < end, net.logs()
        hoarder.c.heartbeat([])  # alive all along: the leases lapse, the provider does not
        offered_again += [a.task_id for a in hoarder.c.poll(wait=0.2).assignments]
        for a in honest.take(wait=1.0):
            honest.answer(a)
            served.add(a.task_id)
    assert client.job(job.id).status == "completed"
    assert served == set(held.values())
    assert offered_again == []  # never handed the task it let lapse

    slashes = [e for e in journal(client) if e.kind == "slash"
               and e.body["provider"] == hoarder.id]
    assert len(slashes) == 1, slashes  # the third lapse, not the first two
    (slash,) = slashes
    assert slash.body["reason"] == hoarding.REASON and slash.body["lapses"] == 3
    assert slash.body["amount"] == STAKE * hoarding.SLASH_BPS // 10_000
    me = hoarder.c.balance()
    assert me.stake == STAKE - slash.body["amount"]
    p = {x.id: x for x in client.providers()}
    # three fails on probation: (0 + 1) / (3 + 2), halved
    assert p[hoarder.id].reputation < 0.15 < 0.5 <= p[honest.id].reputation
    audit_ok(client)
