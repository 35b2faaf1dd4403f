"""Reliable delivery of leases, through a real coordinator process (``jobs.deliver``).

- A poll that carries ``ack`` (a list, even empty) asks for acknowledged delivery:
  a lease whose answer never reached the provider (it did not acknowledge it at
  its next poll) is handed out again at once; an acknowledged one is not.
- A client without ``ack`` (``None``) keeps the old at-most-once behaviour.
- A provider process SIGKILLed in the middle of a long-poll gets no further work:
  the poll notices the disconnect and a poll is not a sign of life, so once its
  heartbeats stop it goes offline and the work goes to a live provider.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from tests.helpers import SPEC, HandProvider, funded, lines
from tests.netutil import Network

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("delivery"), heartbeat_timeout=3.0, lease_ttl=60.0,
                verify=False)
    n.start_coordinator()
    yield n
    n.close()


class Beating:
    """Heartbeats for a HandProvider from a thread, as an agent would send them."""

    def __init__(self, p: HandProvider) -> None:
        self.p, self.stop = p, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(Exception):  # a missed beat: retried on the next tick
                self.p.c.heartbeat([])

    def close(self) -> None:
        self.stop.set()
        self.t.join(5)


def test_a_lost_poll_answer_is_redelivered_within_5_s(net: Network) -> None:
    p = HandProvider(net, price=100)
    beat = Beating(p)
    try:
        c = funded(net)
        job = c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2)).digest)
        first = p.c.poll(wait=10, ack=[]).assignments
        assert [a.job_id for a in first] == [job.id]
        # That answer is lost on the way: the next poll does not acknowledge it.
        t0 = time.monotonic()
        again = p.c.poll(wait=10, ack=[]).assignments
        assert time.monotonic() - t0 < 5.0
        assert [a.id for a in again] == [first[0].id]
        # Acknowledged now: it is not handed out a third time.
        assert p.c.poll(wait=1.5, ack=[first[0].id]).assignments == []
        assert p.answer(again[0]).status == "accepted"
        assert c.job(job.id).status == "completed"
    finally:
        beat.close()


def test_without_ack_a_lease_is_handed_out_once(net: Network) -> None:
    p = HandProvider(net, price=100)
    beat = Beating(p)
    try:
        c = funded(net)
        c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2)).digest)
        [a] = p.c.poll(wait=10).assignments
        assert p.c.poll(wait=1.5).assignments == []
        assert p.answer(a).status == "accepted"
    finally:
        beat.close()


POLLER = """
import sys
from nacl.signing import SigningKey
from deai.client.keys import Identity
from deai.client.sdk import Client
c = Client(sys.argv[1], Identity("dead", SigningKey(bytes.fromhex(sys.argv[2]))))
print("polling", flush=True)
c.poll(wait=50, ack=[])
print("answered", flush=True)
"""


def test_a_dead_long_poll_gets_no_further_leases(net: Network, tmp_path: Path) -> None:
    time.sleep(3.5)  # providers of earlier tests go offline
    ident = Identity.generate()
    dead = HandProvider(net, price=100, ident=ident)  # the cheapest: it would win every task
    live = HandProvider(net, price=1000)
    beat_dead, beat_live = Beating(dead), Beating(live)
    proc = subprocess.Popen([sys.executable, "-c", POLLER, net.url,
                             ident.signing_key.encode().hex()],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "polling"
        time.sleep(1.0)  # the long-poll is waiting on the coordinator
        proc.kill()  # the provider dies mid-poll: no more heartbeats either
        beat_dead.close()
        proc.wait(10)
        time.sleep(3.0 * 2)  # two heartbeat timeouts: the dead provider is offline
        assert not Client(net.url).provider(dead.id).online
        c = funded(net)
        jobs = [c.submit_job({**SPEC, "shard_size": 10}, c.upload(lines(2, 10 * i)).digest)
                for i in range(3)]
        got: list[str] = []  # one slot: each lease is answered before the next comes
        end = time.monotonic() + 60
        while len(got) < len(jobs) and time.monotonic() < end:
            for a in live.c.poll(wait=2, ack=[]).assignments:
                assert live.answer(a).status == "accepted"
                got.append(a.job_id)
        assert sorted(got) == sorted(j.id for j in jobs)
        for j in jobs:
            out = c.job(j.id)
            assert out.status == "completed" and out.providers == {live.id: 1}
        assert not Client(net.url).provider(dead.id).online
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        beat_live.close()
