"""Two writers at once, in threads of one process: the races PostgreSQL lets happen
(on SQLite, the process's write lock runs write transactions one at a time)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core.clock import ManualClock
from deai.store import migrate


def race(*fns: Callable[[], Any], join_s: float = 60.0) -> list[BaseException]:
    """Run ``fns`` at once, each in its own thread; the errors they raised."""
    start = threading.Barrier(len(fns))
    errors: list[BaseException] = []

    def go(fn: Callable[[], Any]) -> None:
        start.wait()
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - every error is reported to the test
            errors.append(e)

    threads = [threading.Thread(target=go, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_s)
    assert not any(t.is_alive() for t in threads), "a writer is stuck"
    return errors


def gate(parties: int = 2, timeout: float = 2.0) -> Callable[[], None]:
    """A point that holds each caller until ``parties`` have reached it, or ``timeout``
    seconds: where a racing writer has read and not yet written, so that the other
    reads the same rows. A writer that takes a lock first never meets the other
    there; it goes on after the timeout."""
    barrier = threading.Barrier(parties, timeout=timeout)

    def wait() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()

    return wait


ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """A devnet coordinator on ``request.param``'s engine (``ENGINES``), its clock the
    test's, for a fixture to yield from."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    c = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True),
                    clock=ManualClock())
    migrate.upgrade(c.db.engine)
    try:
        yield c
    finally:
        c.db.dispose()
