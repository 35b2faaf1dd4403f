"""An answered /v1 request stays answered, and its result waits, when its required check
cannot be placed.

A new provider's result is held for a replica; it is the only provider of the
model, so no replica can be placed, and once ``--verify-timeout`` passes the
upkeep gives the check up (``decide.on_check_abandoned``). The caller was already
served that result. Before, the primary's assignment expired and the task was
queued again (a second run billed for an answer nobody receives, the first
provider never paid), and ``jobs._answered`` then saw no answer: the owner's
cancel refunded the whole escrow and the caller kept the answer for free. Now the
served result keeps waiting for its check, and the cancel is refused (409).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest

from deai.core.errors import DeAIError
from tests.helpers import HandProvider, api_key, funded, served_embedding
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("v1-abandoned"), heartbeat_timeout=120.0,
                lease_ttl=300.0, extra=("--verify-timeout", "2"))
    n.start_coordinator()  # verification on: a new provider's work needs a replica
    yield n
    n.close()


def test_an_answer_whose_check_was_abandoned_cannot_be_cancelled(net: Network) -> None:
    hand = HandProvider(net)  # the only provider of the model: no replica can be placed
    owner = funded(net)
    lease, result, r = served_embedding(net, hand, api_key(owner, "k"))
    assert result.status == "submitted"  # held for its replica
    job_id = r.headers["x-deai-job"]
    assert job_id == lease.job_id
    with pytest.raises(DeAIError) as held:  # answered, its check pending: not cancellable
        owner.cancel_job(job_id)
    assert held.value.status == 409
    end = time.time() + 60
    while not abandoned(net, job_id):  # until the upkeep has given the check up
        assert time.time() < end, owner.job(job_id)
        time.sleep(0.3)
    job = owner.job(job_id)
    assert set(job.tasks) == {"verifying"}, job.tasks  # the served result still waits
    assert hand.take(wait=1.0) == []  # and no second run is placed
    with pytest.raises(DeAIError) as refused:
        owner.cancel_job(job_id)
    assert refused.value.status == 409, refused.value
    job = owner.job(job_id)
    assert job.status in ("running", "verifying") and job.refunded == 0


def abandoned(net: Network, job_id: str) -> bool:
    """Whether the upkeep gave up a check of ``job_id``'s task (the event stays sealed
    from the public inside its window: read from the coordinator's own database)."""
    db = net.root / "coordinator" / "deai.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT 1 FROM events WHERE kind = 'check_abandoned' AND "
                            "subject LIKE ?", (job_id + "%",)).fetchone() is not None
