"""A many-shard job survives ``kill -9`` the moment its submission returns.

The shards are stored in one pack with one fsync (``store.packs``) while the
submission's transaction runs, and the job commits only once they are durable.
Here a real coordinator is killed with SIGKILL right after ``POST /api/jobs``
answers, its pack index is thrown away too (the index is a cache: after a
machine crash it may be behind), and a new process on the same data must
know the job and serve its shards, byte for byte, to the job's owner.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deai.core import specs
from deai.store.blobs import BlobStore, digest_of
from tests.helpers import SPEC, HandProvider, funded, lines
from tests.netutil import Network

SHARDS = 2000


@pytest.mark.slow
def test_shards_read_back_after_kill_9(tmp_path: Path) -> None:
    net = Network(tmp_path, heartbeat_timeout=120.0, verify=False)
    net.start_coordinator()
    try:
        HandProvider(net)
        owner = funded(net)
        data = lines(SHARDS)
        spec = {**SPEC, "shard_size": 1, "deadline": 3600}
        job = owner.submit_job(spec, owner.upload(data).digest)
        assert net.coordinator is not None
        net.coordinator.kill()  # SIGKILL: no shutdown, nothing flushed on the way out

        packs = tmp_path / "coordinator" / "blobs" / "packs"
        assert len(list(packs.glob("*.pack"))) == 1  # one file for the job, not 2,000
        for index in packs.glob("index.sqlite*"):
            index.unlink()

        net.start_coordinator()
        again = owner.job(job.id)
        assert sum(again.tasks.values()) == SHARDS
        expected = [sh.payload for sh in specs.split(specs.parse_spec(spec), data)]
        assert len(expected) == SHARDS
        # Through the API, as the owner (each read checks access against the tasks: a
        # spread sample keeps this quick) ...
        for payload in expected[::SHARDS // 60] + expected[-1:]:
            assert owner.download(digest_of(payload)) == payload
    finally:
        net.close()
    # ... and every one of them from the store the restarted coordinator re-indexed.
    store = BlobStore(tmp_path / "coordinator" / "blobs")
    for payload in expected:
        assert store.get(digest_of(payload)) == payload
