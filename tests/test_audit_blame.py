"""An audit that overturns a result slashes whom it proves wrong: the primary whose
result stood, and a replica only if its own output disagrees with the verifier's.
Agreement within a tolerance is not transitive: a primary just within reach of an
honest replica, but not of the verifier, used to take the replica down with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from deai.coordinator import verify
from deai.core import kinds
from deai.core.kinds.embeddings import COSINE_TOLERANCE
from deai.core.lifecycle import AssignmentStatus, Role, TaskStatus
from deai.core.lifecycle import effects as E
from deai.store.models import Assignment, Job, Task
from tests.lifecycle_worlds import DbWorld


def output(tilt: float) -> bytes:
    """The world's one-line output with a vector tilted by ``tilt`` off the first axis."""
    vec = [1.0, tilt] + [0.0] * 382
    return json.dumps({"custom_id": "r0", "embeddings": [vec], "prompt_tokens": 4}).encode() + b"\n"


def slashed_after_audit(tmp_path: Path, replica_tilt: float, primary_tilt: float) -> set[str]:
    w = DbWorld(tmp_path)
    primary, replica, audit = (w.seat(r) for r in (Role.PRIMARY, Role.REPLICA, Role.AUDIT))
    outs = {primary.id: output(primary_tilt), replica.id: output(replica_tilt),
            audit.id: output(0.0)}
    with w.c.db.write() as s:
        for aid, out in outs.items():
            row = s.get(Assignment, aid)
            assert row is not None
            row.output_digest = w.c.blobs.put(out)
            if aid != audit.id:
                row.status = AssignmentStatus.ACCEPTED
        rep = s.get(Assignment, replica.id)
        assert rep is not None
        rep.check_of = primary.id
        task = s.get(Task, w.task_id)
        assert task is not None
        task.status, task.output_digest = TaskStatus.DONE, w.c.blobs.put(outs[primary.id])
    with w.c.db.read() as s:
        a, task, job = s.get(Assignment, audit.id), s.get(Task, w.task_id), s.get(Job, w.job_id)
        assert a is not None and task is not None and job is not None
        kind = kinds.get(job.kind)
        spec = kind.parse_spec(job.spec)
        todo = verify._on_audit(w.c, s, a, task, job, kind, spec,
                                w.c.blobs.get(task.input_digest))
    names = {primary.provider: "primary", replica.provider: "replica"}
    return {names[e.provider] for e in todo if isinstance(e, E.Slash)}


def test_an_honest_replica_is_not_slashed_for_the_primary_it_agreed_with(
        tmp_path: Path) -> None:
    x = math.sqrt(COSINE_TOLERANCE)  # each step x**2 / 2 apart: within; two steps: 2 x**2
    assert slashed_after_audit(tmp_path / "a", x, 2 * x) == {"primary"}


def test_a_replica_that_is_wrong_itself_is_slashed_with_the_primary(tmp_path: Path) -> None:
    x = math.sqrt(COSINE_TOLERANCE)
    assert slashed_after_audit(tmp_path / "b", 3 * x, 3.5 * x) == {"primary", "replica"}
