"""The canary pool: verified work kept as known answers, and canaries planted from it.

A canary is a real shard whose answer the network already knows, queued as an
ordinary job of a few shards (owned by the network, which no public surface
shows) and placed by the matcher like any other work. It is created through the
one job-creation path (``admission``) like every other job.

A canary job's deadline is its source job's (a span no client job has would name it),
so only sources whose deadline leaves room to wait in the queue, run and be refereed
are drawn (``min_deadline``): a canary that expires before its verdict fails its job,
slashes nobody and still counts in the canary share stakes are sized against.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from deai.coordinator import admission
from deai.coordinator.service import Coordinator
from deai.core.kinds.base import SpecBase
from deai.core.verify import policy
from deai.store.models import Assignment, Canary, Job, Task

NETWORK = admission.NETWORK
POOL = 500  # known answers kept per model
OWNER_SHARE = 25  # of them, at most this many from one owner's jobs: a client whose jobs
# filled the pool (small replicated jobs, each result verified and remembered) knew every
# canary by marks it chose (a max_price, custom ids), and told its providers
DEFAULT_DEADLINE: int = SpecBase.model_fields["deadline"].default  # a spec stored without one
MIN_DEADLINE = 600  # seconds: the shortest source deadline a canary is drawn from ...
QUEUE_S = 180  # ... or a check's time to be placed, a lease's and this margin to queue

log = logging.getLogger("deai.coordinator.canaries")


def remember(c: Coordinator, s: Session, job: Job, task: Task, a: Assignment) -> None:
    """Verified work becomes a future canary (its answer is now known)."""
    if job.owner == NETWORK or a.output_digest is None:
        return
    if not policy.may_be_canary(job.spec, 1) or deadline_of(job.spec) < min_deadline(c):
        # A sealed job's answer is no known answer (the network cannot read it); a
        # dataset job's rows reach only the job's own leases (the owner's key release).
        # Matching stakes such jobs as ones no canary comes to (``stake_needed``). A
        # deadline too short for a canary's queue and referee (``min_deadline``): its
        # canary would expire unjudged.
        return
    mine = s.scalar(select(func.count()).select_from(Canary)
                    .join(Task, Task.id == Canary.source_task).join(Job, Job.id == Task.job_id)
                    .where(Canary.model == job.model, Canary.active.is_(True),
                           Job.owner == job.owner))
    if (mine or 0) >= OWNER_SHARE:
        return
    s.add(Canary(kind=job.kind, model=job.model, spec=job.spec, input_digest=task.input_digest,
                 output_digest=a.output_digest, items=task.items, units=task.units,
                 source_task=task.id, created_at=c.now(), active=True, uses=0))
    old = s.scalars(select(Canary).where(Canary.model == job.model, Canary.active.is_(True))
                    .order_by(Canary.id.desc()).offset(POOL)).all()
    for row in old:
        row.active = False


def retire(s: Session, reference_digest: str | None) -> None:
    """The network's own answer was wrong: never use it again."""
    for canary in s.scalars(select(Canary).where(Canary.output_digest == reference_digest)):
        canary.active = False


def draw(c: Coordinator, real: int) -> int:
    """How many canary tasks to plant for ``real`` placements: on average
    ``canary_odds`` each. Drawn once, before any transaction (most rounds plant none
    and then open none; a retried transaction does not draw again)."""
    odds = policy.canary_odds(c.settings.verify)
    return sum(1 for _ in range(real) if c.rng.random() < odds)


def plant_after(c: Coordinator, real: int, jobs: list[Job]) -> None:
    """Canaries for ``real`` placements made outside a matcher round (a /v1 request placed
    at once, ``matching.place_now``). A round draws per real placement
    (``matching.match_once``); work placed at once must draw its own, or it would thin
    the canary share that every provider's stake is sized against
    (``matching.stake_needed``). Planted in a transaction of its own, after the one that
    placed the work, as the matcher plants: retried on a deadlock (a request's
    transaction holds the journal head; a verdict may hold a canary row), and a failure
    here costs canaries, never the committed work it follows."""
    want = draw(c, real)
    if not want:
        return
    try:
        c.db.run(lambda s: plant_jobs(c, s, want, jobs))
    except Exception:  # noqa: BLE001 - the work itself is committed and placed
        log.exception("planting canaries after work placed at once failed")


def plant_jobs(c: Coordinator, s: Session, want: int, jobs: list[Job]) -> int:
    """Queue ``want`` canary tasks (``draw``) as ordinary-looking jobs of one to four
    shards, of the models among ``jobs``.

    A canary is never leased by itself: it waits in the queue like any job and the
    matcher places it in a free slot, on whoever it picks, at that provider's price;
    nothing in a lease tells it apart. Returns how many canary tasks were queued.
    """
    models = sorted({(j.kind, j.model) for j in jobs if j.owner != NETWORK})
    planted = 0
    while want > 0 and models:
        kind, model = c.rng.choice(models)
        floor = min_deadline(c)
        # The least used first: the journal names a canary's provider and role once its
        # window closes, and a ring that met one knew it the next time it was planted.
        # One is planted again only once every other of its model was as often.
        pool = [x for x in s.scalars(select(Canary).where(
            Canary.kind == kind, Canary.model == model, Canary.active.is_(True))
            .order_by(Canary.uses, Canary.id.desc()).limit(200))
            if deadline_of(x.spec) >= floor]
        if not pool:
            models.remove((kind, model))
            continue
        least = min(x.uses for x in pool)
        first = c.rng.choice([x for x in pool if x.uses == least])
        same = [x for x in pool if x.spec == first.spec and x.id != first.id]
        c.rng.shuffle(same)
        same.sort(key=lambda x: x.uses)  # the least used of its spec, at random among equals
        n = min(want, 1 + c.rng.randrange(policy.MAX_CANARY_SHARDS), 1 + len(same))
        picked = [first, *same[:n - 1]]
        # Counted in the statement (uses = uses + 1), not from what this transaction read:
        # two requests planting the same canary at once must not lose a use (PostgreSQL,
        # READ COMMITTED).
        s.execute(update(Canary).where(Canary.id.in_(sorted(x.id for x in picked)))
                  .values(uses=Canary.uses + 1))
        spec = dict(first.spec)
        # The source job's own deadline: the explorer shows ``deadline_at - created_at``,
        # and a span no client job has (a day, before) named every canary before its work.
        admission.create(
            c, s, owner=NETWORK, kind=kind, model=model, spec=spec,
            input_digest=first.input_digest, max_price=int(spec.get("max_price", 0)),
            shards=[admission.ShardIn(x.input_digest, x.items, x.units, x.output_digest)
                    for x in picked], escrow=0, deadline=deadline_of(spec))
        planted += n
        want -= n
    return planted


def min_deadline(c: Coordinator) -> float:
    """The shortest deadline a canary source may have: time to wait in the queue, run (a
    lease), and have a disagreement placed with a referee (``verify_timeout``), at least
    ``MIN_DEADLINE``. Shorter sources are never remembered nor drawn."""
    return max(float(MIN_DEADLINE),
               c.settings.verify_timeout + c.settings.lease_ttl + QUEUE_S)


def could_be(c: Coordinator, spec: dict[str, Any], shards: int) -> bool:
    """Whether a job of ``spec`` and ``shards`` could be a canary, as its providers can
    tell (``policy.may_be_canary``, and a deadline no shorter than ``min_deadline``: a
    shorter source is never drawn). Matching and the quote size the stake by it."""
    return policy.may_be_canary(spec, shards) and deadline_of(spec) >= min_deadline(c)


def deadline_of(spec: dict[str, Any]) -> int:
    """A job's deadline in seconds as its spec set it (``SpecBase.deadline``; a /v1
    request's spec carries its own)."""
    value = spec.get("deadline", DEFAULT_DEADLINE)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else DEFAULT_DEADLINE


def seen_by(s: Session, tasks: list[Task]) -> dict[str, set[str]]:
    """For each canary among ``tasks``: the providers that have run its input before
    (they would recognise it, so they never get it)."""
    digests = {t.id: t.input_digest for t in tasks if t.reference_digest is not None}
    if not digests:
        return {}
    ran: dict[str, set[str]] = {}
    for digest, pid in s.execute(
            select(Task.input_digest, Assignment.provider_id)
            .join(Assignment, Assignment.task_id == Task.id)
            .where(Task.input_digest.in_(set(digests.values())))):
        ran.setdefault(digest, set()).add(pid)
    return {tid: ran.get(d, set()) for tid, d in digests.items()}
