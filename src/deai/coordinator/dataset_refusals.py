"""A dataset's owner turns away providers it does not trust (``refuse``).

``datasets.pending`` tells the owner which providers leased for its datasets' jobs wait
for the key; the owner releases it to those it trusts (``datasets.release``) and may
refuse the others here (``deai dataset serve --trust FILE``, ``deai dataset refuse``).
Apart from ``datasets`` because it moves leases through the lifecycle (``effects``),
which ``datasets`` is called from.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import datasets, effects, verify
from deai.coordinator.service import Coordinator
from deai.core import wire_datasets as W
from deai.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from deai.core.lifecycle import AssignmentStatus, decide
from deai.store.models import Assignment, Job, Task

REFUSED = "refused by the dataset's owner"  # a refused lease's error (``refuse``)


def refuse(c: Coordinator, owner: str, dataset_id: str, body: W.RefuseIn) -> list[str]:
    """The owner turns away providers leased for a job on its dataset, none of which has
    been released the key: each live lease fails (``REFUSED``, a ``lease_refused`` event:
    an attempt of the task, no failure of the provider's, no mark on its reputation) and
    its role is placed again, never with that provider nor anyone sharing its identity
    (the matcher avoids who failed a task). A primary refused ``max_attempts`` times
    fails the job, whose escrow comes back less the hold fee (``hold_fee``). A named
    provider whose lease has ended meanwhile is skipped; one never leased for the job is
    a 422 naming ``providers``. Returns the providers refused.

    Before this an owner that trusted only some providers could only withhold the key,
    and the job (a buyer's own provider taking it at once, say) held its use, and the
    provider's slot, until its deadline."""
    wanted = list(dict.fromkeys(body.providers))

    def run(s: Session) -> list[str]:
        d = datasets.get(s, dataset_id)
        if d.owner != owner:
            raise Forbidden("only the dataset's owner refuses its jobs' providers")
        # The documented order: the job, then its tasks, then their leases. A job of
        # the dataset's by its spec, not by its use: a job that ended without a model
        # gave its use back (``datasets.end_use``), and a refusal that lost the race to
        # its cancel skips its ended leases like any other, rather than a 404.
        job = s.get(Job, body.job_id, with_for_update=True, populate_existing=True)
        if job is None or (job.spec or {}).get("dataset_id") != dataset_id:
            raise NotFound(f"job_id: no job {body.job_id} uses this dataset", field="job_id")
        ever = set(s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id == job.id, Assignment.provider_id.in_(wanted))))
        released = datasets.released_to(s, job.id)
        for pid in wanted:
            if pid not in ever:
                raise InvalidInput(f"providers: {pid[:16]}… was never leased for job "
                                   f"{job.id}", field="providers")
            if pid in released:
                raise Conflict(f"providers: {pid[:16]}… was released the key already; "
                               "it runs the job", field="providers")
        live = s.execute(select(Assignment.task_id, Assignment.id).where(
            Assignment.job_id == job.id, Assignment.provider_id.in_(wanted),
            Assignment.status == AssignmentStatus.LEASED)
            .order_by(Assignment.task_id, Assignment.id)).all()
        done = []
        for task_id, aid in live:
            task = s.get(Task, task_id, with_for_update=True, populate_existing=True)
            a = s.get(Assignment, aid, with_for_update=True, populate_existing=True)
            if task is None or a is None or a.status != AssignmentStatus.LEASED:
                continue  # ended meanwhile (the job's last attempt ended the others)
            effects.apply(c, s, job, task, decide.on_refused(
                effects.ctx(c, job, task), verify.party(a), REFUSED))
            done.append(a.provider_id)
        return done

    refused = c.db.run(run)
    c.notifier.kick()
    c.notifier.published()
    return refused
