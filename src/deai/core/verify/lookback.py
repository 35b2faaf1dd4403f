"""Look-back: which of a caught provider's accepted results are re-executed by others.

A result is provisional while its challenge window is open; a caught provider's
results in the window are always re-checked. That alone lets an intermittent
cheater keep every wrong result that left the window before the catch, so the
look-back reaches further back, to an *anchor* in the provider's record:

    Reach.WINDOW     the window only (what the network did first)
    Reach.LAST_PASS  since the provider's last passed check: a result it produced
                     after a check it passed is re-checked, even past the window
    Reach.RECORD     since the provider's last completed look-back (its record was
                     reviewed then), or its first result: every result that no
                     look-back has covered yet (the default)

Why RECORD is the default: a passed check vouches for the one result it
checked, not for the provider. A cheater wrong on a share f of tasks passes
most checks between its wrong results, so "since the last passed check" leaves
out everything older than that pass (``deai sim verify`` measures how many).
A patient cheater (honest, then always wrong) passes no check after it turns,
so for it the two reaches coincide. Every reach includes the window.

How fast: a provider caught after a long record would queue its whole history
for the verifiers at once and crowd out every other audit. ``batch`` splits a
look-back's results into what is queued now (at most ``DEFAULT_BATCH``, newest
first: those are still provisional, in clients' hands, and nearest the catch) and
a backlog that is queued, a batch at a time, as the verifiers place the earlier
ones. Nothing in reach is ever dropped: the backlog only waits.

Pure functions of timestamps, used by the coordinator (``effects.look_back``)
and by the simulator (which counts results in tasks rather than seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Reach(StrEnum):
    WINDOW = "window"
    LAST_PASS = "last_pass"
    RECORD = "record"


DEFAULT = Reach.RECORD
DEFAULT_BATCH = 200  # re-checks one look-back queues at once; the rest wait their turn


@dataclass(frozen=True)
class Marks:
    """What the record says about a provider (None: never happened)."""

    last_pass: float | None = None     # its last passed check (as the checked party)
    last_review: float | None = None   # its last look-back (every earlier result queued)


def anchor(reach: Reach, marks: Marks) -> float | None:
    """The point a look-back reaches back to, before the window; None: the beginning."""
    if reach == Reach.WINDOW:
        return float("inf")
    return marks.last_pass if reach == Reach.LAST_PASS else marks.last_review


def since(reach: Reach, marks: Marks, *, now: float, window: float) -> float:
    """The earliest acceptance time a look-back at ``now`` re-checks: the anchor or
    the start of the window, whichever is earlier (the window is always covered)."""
    if window < 0:
        raise ValueError("the challenge window must not be negative")
    start = now - window
    a = anchor(reach, marks)
    return -float("inf") if a is None else min(a, start)


def in_reach(accepted_at: float, reach: Reach, marks: Marks, *, now: float,
             window: float) -> bool:
    return accepted_at >= since(reach, marks, now=now, window=window)


def select(accepted: Iterable[tuple[str, float]], reach: Reach, marks: Marks, *, now: float,
           window: float) -> Sequence[str]:
    """The results (id, accepted at) a look-back at ``now`` re-checks, oldest first."""
    cut = since(reach, marks, now=now, window=window)
    return [k for k, t in sorted(accepted, key=lambda x: (x[1], x[0])) if t >= cut]


def batch(picked: Iterable[tuple[str, float]], cap: int) -> tuple[list[str], list[str]]:
    """A look-back's results (id, accepted at) split into the ``cap`` queued now and
    the backlog, each newest first (ties by id)."""
    if cap < 1:
        raise ValueError("a look-back must queue at least one re-check at a time")
    order = [k for k, _ in sorted(picked, key=lambda x: (-x[1], x[0]))]
    return order[:cap], order[cap:]
