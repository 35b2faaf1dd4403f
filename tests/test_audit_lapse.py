"""An audit's lease that lapses (its verifier crashed, or stopped heartbeating) is asked
for again, whatever its job's state. Before, ``decide._retry`` dropped it with the lease
(the audited job had ended, so "nothing to retry"): the task's earnings were released
and the job read final with no verdict, and a live verifier was never offered the audit
again."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from deai.core.lifecycle import JobStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from tests.helpers import audited_job
from tests.netutil import Network


def test_a_lapsed_audit_is_asked_for_again_whatever_its_job() -> None:
    lapsed = D.Party("asg_a", "verifier", Role.AUDIT)
    for job in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.RUNNING):
        ctx = D.TaskCtx("t", "j", 0, job, TaskStatus.DONE, 1, 5)
        assert D.NeedCheck(Role.AUDIT) in D.on_expired(ctx, lapsed, "lease deadline passed")
        assert D.NeedCheck(Role.AUDIT) in D.on_failed(ctx, lapsed, "out of memory")
    ctx = D.TaskCtx("t", "j", 0, JobStatus.RUNNING, TaskStatus.QUEUED, 1, 5)  # run again:
    assert not [e for e in D.on_expired(ctx, lapsed, "x")  # nothing left to audit
                if isinstance(e, D.NeedCheck)]


def _rows(net: Network, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(net.root / "coordinator" / "deai.sqlite3")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_earnings_wait_for_an_audit_whose_verifier_went_quiet(tmp_path: Path) -> None:
    with audited_job(tmp_path, heartbeat_timeout=6.0, lease_ttl=6.0,
                     challenge_window=4.0) as w:
        net, (a, b), v, c, job = w.net, w.workers, w.verifier, w.owner, w.job
        audit = v.take_one(within=30.0)
        end = time.time() + 60  # the verifier goes quiet; the others keep beating
        while _rows(net, "SELECT status FROM assignments WHERE id = ?", audit.id) \
                == [("leased",)]:
            assert time.time() < end, "the audit's lease never lapsed"
            for p in (a, b):
                p.take(wait=0.2)
        time.sleep(5.0)  # past the challenge window
        assert _rows(net, "SELECT pending_role FROM tasks WHERE job_id = ?", job) == [("audit",)]
        assert {r for (r,) in _rows(net, "SELECT released FROM payouts WHERE job_id = ?",
                                    job)} == {0}
        assert not c.job(job).final
        again = v.take_one(within=30.0)  # back online: offered the audit again
        assert again.task_id == audit.task_id and again.id != audit.id
