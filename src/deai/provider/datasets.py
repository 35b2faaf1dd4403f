"""Training on a dataset (``core.datasets``): the rows arrive by the owner's key release.

A lease whose payload trains on ``dataset:<id>`` carries only the dataset's
public summary. When the trainer asks for the rows (``workloads.train.EXTERNAL``),
this provider fetches the dataset key wrapped to it, waiting while the owner
has not released it yet (the coordinator answers 409 ``waiting``), unwraps it
with its own identity, downloads and decrypts the ciphertext, and hands the
rows over; the trainer checks them against the payload's digest. Checkers
(audits of the job) go the same way: the owner releases to every leased party.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from deai.client import datasets
from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.core import datasets as D
from deai.core import wire
from deai.core.errors import Conflict, DeAIError
from deai.core.kinds.train import Payload

log = logging.getLogger(__name__)
WAIT = 600.0  # seconds a lease waits for its owner's release before it gives up


def resolver(client: Client, identity: Identity, job_id: str,
             cancelled: Callable[[], bool], wait: float = WAIT
             ) -> Callable[[Payload], tuple[str, str]]:
    def rows(p: Payload) -> tuple[str, str]:
        dataset_id = p.dataset.removeprefix(D.SOURCE)
        deadline = time.monotonic() + wait
        while True:
            try:
                return datasets.rows(client, identity, dataset_id, job_id)
            except Conflict:
                if time.monotonic() > deadline or cancelled():
                    raise DeAIError(f"dataset {dataset_id}: its owner did not release the "
                                    "key in time") from None
                log.info("job %s: waiting for the owner of %s to release its key", job_id,
                         dataset_id)
                time.sleep(1.0)
    return rows


@contextlib.contextmanager
def rows_for(client: Client, identity: Identity, a: wire.AssignmentOut,
             cancelled: Callable[[], bool]) -> Iterator[None]:
    """While running lease ``a``: a training payload on a dataset finds its rows here."""
    if a.workload != "train":
        yield
        return
    from deai.workloads import train

    token = train.EXTERNAL.set(resolver(client, identity, a.job_id, cancelled))
    try:
        yield
    finally:
        train.EXTERNAL.reset(token)
