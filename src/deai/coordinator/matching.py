"""The matcher: reads queued tasks and online providers, asks ``core.market.place``
where each task goes, and writes the leases. The decision itself is pure; this
module only gathers its inputs and records its outputs.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, func, inspect, or_, select
from sqlalchemy.orm import Session

from deai.coordinator import blob_quota, canaries, datasets, effects, hoarding, provider_index
from deai.coordinator.service import Coordinator, ordered_ids
from deai.core import catalog, kinds, ledger, market, sealed
from deai.core.lifecycle import (
    JOB_ACTIVE,
    SUBJECT_ROLES,
    TRUSTED_ROLES,
    AssignmentStatus,
    Role,
    TaskStatus,
)
from deai.core.lifecycle import decide as D
from deai.core.money import cost_for_units
from deai.core.verify import policy
from deai.core.verify.reputation import Reputation
from deai.store import db
from deai.store.models import ApiKeyJob, Assignment, Job, Offer, Provider, Task

log = logging.getLogger("deai.coordinator.matching")

BATCH = 10000  # tasks planned per round: a round's fixed cost (a copy of every provider's
# state, the placement's heaps: ~10 ms at 10,000 providers) spread over more placements.
# At 10,000 providers, 5,000 placed 9 % more per second than 2,000; once the rest of a
# placement cost ~45 µs, 10,000 placed 4 % more than 5,000 (20,000 queued, 44.5 against
# 46.6 µs a placement). A round plans without the write lock; its batches check each
# placement again as they commit it.


def provider_states(c: Coordinator, s: Session,
                    ids: Sequence[str] | None = None) -> list[market.ProviderState]:
    """Every online provider's state, or only those among ``ids``, read now from the
    database (``provider_index.load``). The matcher and the /v1 decision read the
    index instead and check what they chose with ``ProviderIndex.reread``."""
    since = c.now() - c.settings.heartbeat_timeout
    return provider_index.load(c, s, ids, since)[0]


_identity = provider_index.identity


def all_provider_states(c: Coordinator, s: Session) -> list[market.ProviderState]:
    """Every registered provider, online or not, for quotes that explain themselves."""
    online = {p.id: p for p in provider_states(c, s)}
    rows = s.scalars(select(Provider)).all()
    stakes = c.settlement.balances(s, [ledger.stake(p.id) for p in rows])
    by_provider: dict[str, list[market.Offer]] = defaultdict(list)
    for o in s.scalars(select(Offer).order_by(Offer.provider_id, Offer.workload,
                                              Offer.model)):  # one query, not one each
        by_provider[o.provider_id].append(market.Offer(o.workload, o.model, o.price))
    out = []
    for p in rows:
        if p.id in online:
            out.append(online[p.id])
            continue
        offers = tuple(by_provider[p.id])
        out.append(market.ProviderState(
            id=p.id, online=False, stake=stakes.get(ledger.stake(p.id), 0),
            memory_mb=int(p.hardware.get("memory_mb", 0)), slots=p.slots,
            reputation=p.reputation, compute_units=p.compute_units, offers=offers,
            **_identity(c, p)))
    return out


def demand(c: Coordinator, job: Job, task: Task,
           exclude: frozenset[str] = frozenset()) -> market.TaskDemand:
    """A primary's demand (paid its provider's own price: ``market.stake_at``)."""
    return _Demands(c)(job, task, exclude)._replace(at_own_price=True)


COMMAND_RAM_SHARE = 2  # a host's RAM over the most ``memory_mb`` its agent gives a command


class _Demands:
    """``demand`` for the many tasks of a round's few jobs: what depends on the job alone
    (its model's memory, its sealed parties) and the stake each value needs are worked
    out once each, not once per task (a tenth of a round's plan)."""

    def __init__(self, c: Coordinator) -> None:
        self.c = c
        self.jobs: dict[str, tuple[str, str, int, int, frozenset[str] | None,
                                   frozenset[str], frozenset[str] | None]] = {}
        self.stakes: dict[tuple[int, int, bool], int] = {}
        self.canary: dict[str, bool] = {}  # per job: whether it could be a canary
        # per job on a dataset: the providers its owner trusts with the rows (None: any)
        self.trusted: dict[str, frozenset[str] | None] = {}

    def know(self, s: Session, jobs: Sequence[Job]) -> None:
        """Whether each of ``jobs`` could be a canary (``_may_be_canary``), for a round at
        once: one query for their shard counts, not one a job (~270 µs each, a second a
        round of 3,000 one-task jobs)."""
        maybe = [j.id for j in jobs if j.id not in self.canary
                 and canaries.could_be(self.c, j.spec or {}, 1)]
        for j in jobs:
            self.canary.setdefault(j.id, False)  # the rest: sealed, on a dataset
        beyond: set[str] = set()
        for i in range(0, len(maybe), provider_index.IN_MAX):
            beyond.update(s.scalars(select(Task.job_id).where(Task.id.in_(
                [f"{jid}.t{policy.MAX_CANARY_SHARDS:05d}"
                 for jid in maybe[i:i + provider_index.IN_MAX]]))))
        for jid in maybe:
            self.canary[jid] = jid not in beyond
        on_data = [j.id for j in jobs if j.id not in self.trusted
                   and (j.spec or {}).get("dataset_id")]
        if on_data:
            lists = datasets.trusted_for(s, on_data)
            for jid in on_data:
                self.trusted[jid] = lists.get(jid)

    def __call__(self, job: Job, task: Any, exclude: frozenset[str] = frozenset(),
                 verifier: bool = False) -> market.TaskDemand:
        """``verifier``: the role goes to the network's verifiers (an audit, a referee),
        whom a dataset's list of providers does not bind: a list that bound them would
        keep its jobs unaudited."""
        of = self.jobs.get(task.job_id)  # the task's: a job's id is an ORM attribute
        if of is None:
            # A job on a dataset never runs on its owner's account: the dataset's key is
            # released to the job's providers, and the owner would read every row for
            # one royalty (``datasets.release`` refuses it too).
            mine = frozenset((job.owner,)) if job.spec.get("dataset_id") else frozenset()
            # The model's memory, or what the spec asks for when more: a command's
            # ``memory_mb`` (its tmpfs mounts and processes live in the host's RAM), of
            # which an agent gives a command at most half its RAM by default
            # (``workloads.command.memory_ceiling_mb``): a host matched on its whole RAM
            # refused the shard every time, and the job failed after its retries.
            asked = job.spec.get("memory_mb")
            memory = max(catalog.lookup(job.model).memory_mb,
                         COMMAND_RAM_SHARE * asked
                         if isinstance(asked, int) and not isinstance(asked, bool) else 0)
            of = self.jobs[task.job_id] = (job.kind, job.model, job.max_price, memory,
                                           sealed.only(job.spec), mine,
                                           self._trusted(job) if mine else None)
        workload, model, max_price, memory_mb, only, mine, trusted = of
        if mine:
            exclude = exclude | mine
        if trusted is not None and not verifier:  # who may read the dataset's rows
            only = trusted if only is None else only & trusted
        units = task.units
        canary = self.canary.get(task.job_id)
        if canary is None:
            canary = self.canary[task.job_id] = _may_be_canary(self.c, job)
        need = self.stakes.get((units, max_price, canary))
        if need is None:
            need = self.stakes[units, max_price, canary] = stake_needed(
                self.c, cost_for_units(units, max_price), canary=canary)
        return market.TaskDemand(id=task.id, workload=workload, model=model,
                                 max_price=max_price, memory_mb=memory_mb, units=units,
                                 exclude=exclude, stake_needed=need, only=only)


    def _trusted(self, job: Job) -> frozenset[str] | None:
        """The providers the job's dataset is trusted to (None: any), as ``know`` read
        them; else read now in the job's session; a job read outside one goes nowhere."""
        if job.id not in self.trusted:
            state = inspect(job, raiseerr=False)
            s = state.session if state is not None else None
            self.trusted[job.id] = (datasets.trusted_for(s, [job.id]).get(job.id)
                                    if s is not None else frozenset())
        return self.trusted[job.id]


def stake_needed(c: Coordinator, value: int, *, canary: bool = True) -> int:
    """Stake a provider needs for a task worth ``value`` (0 when nothing is checked).

    ``canary=False``: the task's job can never be a canary (``policy.may_be_canary``),
    and its provider can tell: the odds of a check leave the canary share out, so the
    stake is larger and cheating on such a task still has negative expected profit."""
    vp = c.settings.verify
    p = policy.check_probability(Reputation(cv=2**31), vp, canary=canary)
    return market.stake_for(value, vp.slash_fraction, p) if p > 0 else 0


def _may_be_canary(c: Coordinator, job: Job) -> bool:
    """``policy.may_be_canary`` of a job: its shard count read as whether its task of index
    ``MAX_CANARY_SHARDS`` exists, a primary-key lookup (ids as ``admission.create`` writes
    them). A job read outside a session counts as one that may be a canary."""
    spec = job.spec or {}
    if not canaries.could_be(c, spec, 1):
        return False
    state = inspect(job, raiseerr=False)
    s = state.session if state is not None else None
    if s is None:
        return True
    beyond = f"{job.id}.t{policy.MAX_CANARY_SHARDS:05d}"
    more = s.scalar(select(Task.id).where(Task.id == beyond)) is not None
    return policy.may_be_canary(spec, policy.MAX_CANARY_SHARDS + 1 if more else 1)


def match_once(c: Coordinator) -> list[str]:
    """Place queued tasks and wanted checks; returns the providers given work, woken
    (``Notifier.wake``) once the round's leases are committed.

    A primary goes to the best eligible provider by the strategy (price and
    reputation). A replica is drawn at random among eligible providers, weighted by
    stake and reputation (``market.pick``): price cannot buy the checker's seat. A
    referee or an audit goes only to a verifier the network trusts. No two parties
    on one task share an operator, a network origin or a hardware fingerprint, and
    verifiers take no untrusted work. Canaries are ordinary queued jobs, planted now
    and then (``canaries.plant_job``) and placed like any other work.

    The round is planned on a read snapshot, outside any write transaction, and
    committed in short batches (``_commit``): each re-claims its tasks and keeps a
    placement only if its task is untouched since the plan and its provider still has
    a free slot, so a heartbeat or a submission never waits behind a whole round.
    """
    idx = provider_index.of(c)
    placed: list[market.Placement] = []
    real = 0
    planned: Planned = {}
    try:
        for _ in range(2):  # once more when the index was stale about a provider it chose
            plan = _plan(c, idx)
            if plan is None:
                break
            planned = plan[3]
            n_real, stale = _commit_plan(c, idx, plan, placed)
            real += n_real
            if not stale:
                break
    finally:
        # Each provider woken once a round, all its leases committed: its poll takes them
        # in one answer (woken each batch, a provider leased in four batches polled four
        # times, and 2,000 leases to 500 pollers took twice as long); before the canaries
        # are planted; and even when a later batch failed, for what the earlier committed.
        woken = sorted({p.provider_id for p in placed})
        c.notifier.wake(woken)
    want = canaries.draw(c, real)
    if want:
        # Each job once (its tasks' rows share its object): a job's fields are ORM reads.
        jobs = list(dict.fromkeys(j for _, j in planned.values()))
        if c.db.run(lambda s: canaries.plant_jobs(c, s, want, jobs)):
            # placed at once, as a submitted job is: a canary that waited for the next
            # tick was older at its lease than any job submitted (its id and created_at
            # are public), and a provider could tell it by that
            c.notifier.kick()
    return woken


def _commit_plan(c: Coordinator, idx: provider_index.ProviderIndex, plan: Plan,
                 placed: list[market.Placement]) -> tuple[int, int]:
    """Commit a round's plan in batches (``_commit``), adding each batch's leases to
    ``placed`` as it commits; returns how many are real work and how many placements were
    dropped because their provider was not as the index had it."""
    placements, seen, demands, planned = plan
    real = stale = 0
    i, chunk = 0, 64
    while i < len(placements):
        part = placements[i:i + chunk]
        t0 = time.perf_counter()
        done, n_real, n_stale = c.db.run(functools.partial(
            _commit, c, idx=idx, part=part, seen=seen, demands=demands, planned=planned))
        spent = time.perf_counter() - t0
        for pid, n in Counter(pl.provider_id for pl in done).items():
            idx.leased(pid, n)
        placed += done
        real += n_real
        stale += n_stale
        i += len(part)
        # Size the next batch to hold the write lock about COMMIT_S.
        chunk = max(32, min(1024, int(len(part) * COMMIT_S / max(spent, 1e-4))))
        if done:
            c.notifier.published()
        time.sleep(0)  # let a waiting writer (a heartbeat) take the lock between batches
    return real, stale


Seen = dict[str, tuple[Any, ...]]


Demands = dict[str, tuple[market.TaskDemand, int]]  # task -> (demand, its minimum stake)
Planned = dict[str, tuple[Any, Job]]  # task -> its row and its job's, as the plan read them
Plan = tuple[list[market.Placement], Seen, Demands, Planned]


def _plan(c: Coordinator, idx: provider_index.ProviderIndex) -> Plan | None:
    """A round's placements, decided on one read snapshot (no write lock held) and the
    providers' index: the placements in order, what the plan saw of each task's moving
    parts (compared at commit), the demand each placement was chosen for (checked again
    at commit), and the rows read (never changed afterwards: a retried batch starts from
    them again; the canaries read the jobs)."""
    with c.db.read() as s:
        # The index's pending changes first, re-read at the start of the snapshot; the
        # providers' list only when there is work (a round that finds none is O(1)).
        idx.refresh(s)
        # On the session's connection, not through the ORM session: its result handling of
        # plain columns cost as much as the query's own sort; as named tuples, whose fields
        # read in C (a Row's names cost ~10x more, and a task's are read ~15 times), from
        # rows fetched at once (one by one, a fetch each cost more than the tuple saved)
        tasks = list(map(_Wanting._make, s.connection().execute(_wanting().limit(BATCH)).all()))
        if not tasks:
            return None
        providers = idx.states(s)
        if not providers:
            return None
        of = {j.id: j for j in s.scalars(select(Job).where(
            Job.id.in_(sorted({t.job_id for t in tasks}))))}  # a few jobs: ORM rows
        rows = [(t, of[t.job_id]) for t in tasks]
        placements, demands = _place_round(c, s, rows, providers)
        # A task moved since (placed by /v1, failed, cancelled) has a new
        # ``updated_at``: its placement is dropped and it waits for the next round.
        seen = {t.id: (t.status, t.pending_role, t.updated_at, t.attempts) for t, _ in rows}
        planned = {t.id: (t, j) for t, j in rows}
        s.expunge_all()  # readable after the snapshot: the batches and the canaries read them
    return placements, seen, demands, planned


COMMIT_S = 0.016  # how long one batch of a round holds the write lock, about. Heartbeats
# never wait on it (answered in memory, written in batches: ``liveness``); a submission or a
# result on SQLite waits behind at most one batch. 16 ms placed 31 % more per second than
# 4 ms at 10,000 providers (fewer commits, each writing its pages once); 50 ms, 4 % more.


def _wants_lease() -> Any:
    """The tasks that want a lease now: queued primaries and wanted checks."""
    return or_(and_(Task.status == TaskStatus.QUEUED, Job.status.in_(JOB_ACTIVE)),
               and_(Task.status == TaskStatus.VERIFYING, Task.pending_role.is_not(None),
                    Job.status.in_(JOB_ACTIVE)),
               and_(Task.status == TaskStatus.DONE, Task.pending_role == Role.AUDIT))


@functools.cache  # built once: a statement is immutable, and building it took ~2 ms
def _claimable() -> Any:
    """Tasks that want a lease now, with their jobs, checks first."""
    return (select(Task, Job).join(Job, Job.id == Task.job_id).where(_wants_lease())
            .order_by(Task.pending_role.is_(None), Job.created_at, Task.idx))


class _Wanting(NamedTuple):
    """A task as ``_wanting`` reads it."""

    id: str
    job_id: str
    idx: int
    status: str
    pending_role: str | None
    updated_at: float
    attempts: int
    units: int
    input_digest: str
    reference_digest: str | None


@functools.cache
def _wanting() -> Any:
    """``_claimable``'s tasks, as rows of the columns a round reads (``_Wanting``): not
    ORM objects, whose building cost as much as the rest of the plan."""
    return (select(*(getattr(Task, f) for f in _Wanting._fields))
            .join(Job, Job.id == Task.job_id).where(_wants_lease())
            .order_by(Task.pending_role.is_(None), Job.created_at, Task.idx))


class _Claimed(NamedTuple):
    """A task as ``_claim`` reads it, with its job's status."""

    id: str
    status: str
    pending_role: str | None
    updated_at: float
    attempts: int
    job_id: str
    job_status: str


def _claim(s: Session, ids: Sequence[str]) -> list[_Claimed]:
    """The tasks ``ids`` with their moving parts and their job's status, claimed (``FOR
    UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock is the claim), for the caller
    to check with ``_still_wanted``. In the driver's own SQL: neither ORM objects (a
    quarter of a round) nor SQLAlchemy's statement (a third of the claim's cost). By id
    alone: with the lifecycle's condition in the statement, SQLite walked every
    claimable task for each batch. The lock order ``store.db`` asks for is jobs, then
    tasks; PostgreSQL locks a join's rows as it produces them, and ``Database.run``
    retries the loser of a deadlock."""
    conn = s.connection()
    ph = db.placeholder(conn)
    lock = "" if conn.dialect.name == "sqlite" else " FOR UPDATE OF jobs, tasks SKIP LOCKED"
    return list(map(_Claimed._make, conn.exec_driver_sql(
        "SELECT tasks.id, tasks.status, tasks.pending_role, tasks.updated_at, tasks.attempts, "
        "tasks.job_id, jobs.status AS job_status FROM tasks JOIN jobs ON jobs.id = tasks.job_id "
        f"WHERE tasks.id IN ({', '.join([ph] * len(ids))}){lock}", tuple(ids)).all()))


def _still_wanted(r: _Claimed, seen: Seen) -> bool:
    """``_wants_lease`` for a claimed row: its task untouched since the plan (which read it
    wanting a lease), and its job still active unless it is an audit's."""
    tid, status, role, updated, attempts, _, job_status = r
    return ((status, role, updated, attempts) == seen[tid]
            and (status == _DONE or job_status in JOB_ACTIVE))


_DONE = TaskStatus.DONE.value


def _commit(c: Coordinator, s: Session, *, idx: provider_index.ProviderIndex,
            part: list[market.Placement], seen: Seen, demands: Demands, planned: Planned
            ) -> tuple[list[market.Placement], int, int]:
    """Lease the planned placements of ``part`` that still hold; returns them, how many
    are real work (not canaries, not checks) and how many were dropped because the
    provider is no longer as the index had it."""
    # Claimed, not just read: a second replica (or a /v1 request) at the same time
    # skips these rows (and sees them moved on once this commits), so no task is
    # leased twice.
    now = c.now()
    claimed = {r.id: r for r in _claim(s, [pl.task_id for pl in part]) if _still_wanted(r, seen)}
    # A task untouched since the plan is as the plan read it, but for its job's status
    # (an earlier batch may have started the job). A primary's lease is written from
    # those rows; a check's moves go through the applier, on its rows in this session.
    checks = [i for i, r in claimed.items() if r.pending_role is not None]
    attached: Planned = {t.id: (t, j) for t, j in s.execute(
        _claimable().where(Task.id.in_(checks))).all()} if checks else {}
    # The providers as they are now (the index is a hint): online, active, verified,
    # staked, serving the model at the planned price, a free slot.
    now_states = idx.reread(s, sorted({pl.provider_id for pl in part}))
    load: dict[str, int] = {pid: st.load for pid, st in now_states.items()}
    done: list[market.Placement] = []
    bulk = _Bulk(jobs_now={r.job_id: r.job_status for r in claimed.values()},
                 ids=lease_ids(len(claimed)))
    real = stale = 0
    for pl in part:
        if pl.task_id not in claimed:
            continue
        st = now_states.get(pl.provider_id)
        d, min_stake = demands[pl.task_id]
        if (st is None or load[st.id] >= st.slots
                or st.price_for(d.workload, d.model) != pl.price
                or market.failures(d, st, min_stake, pl.price) & ~market.NO_SLOT):
            stale += 1
            continue
        # A check on its rows in this session (the applier writes them), a primary from
        # the plan's: a check missing from ``attached`` fails here, not half-written.
        if claimed[pl.task_id].pending_role is not None:
            task, job = attached[pl.task_id]
            # In a savepoint: a check reads its subject's output and the task's shard
            # (a blob gone from disk, a spec an upgrade no longer parses), and one that
            # cannot be leased must not stop the batch, and every round, for the rest.
            try:
                with s.begin_nested():
                    _lease(c, s, task, job, pl, now, bulk)
            except Exception as exc:
                if db.is_retryable(exc):
                    raise
                _skipped(pl.task_id, "leasing its check")
                continue
        else:
            task, job = planned[pl.task_id]
            _lease(c, s, task, job, pl, now, bulk)
            real += job.owner != canaries.NETWORK
        load[st.id] += 1
        done.append(pl)
    if bulk.primaries:
        effects.placed_many(c, s, bulk.primaries)
    # One executemany, in the order they were made, in the driver's own SQL: the ORM's
    # bulk path cost more than the rows, and SQLAlchemy's per-row parameter processing a
    # fifth of the round. Their events are made from them by the database.
    _insert_leases(s, bulk.leases)
    return done, real, stale


def _insert_leases(s: Session, leases: list[dict[str, Any]]) -> None:
    """The leases' rows, and a ``task_assigned`` event for each, in their order, made
    from the rows just written by one ``INSERT ... SELECT`` (its body built by the
    database's JSON functions): an event row built, dumped and bound in Python cost
    ~5 µs of a placement's ~55 (10,000 providers). SQLite selects them as the rows past
    the table's last rowid before the insert (the write lock is held: no other writer's
    rows are among them); PostgreSQL, by their ids in order."""
    if not leases:
        return
    conn = s.connection()
    sqlite, ph = conn.dialect.name == "sqlite", db.placeholder(conn)
    if sqlite:
        last = conn.exec_driver_sql("SELECT max(rowid) FROM assignments").scalar() or 0
    db.insert_many(s, cast(Table, Assignment.__table__), leases)
    body = ("'job', a.job_id, 'provider', a.provider_id, 'price', a.price, 'role', a.role")
    if sqlite:
        conn.exec_driver_sql(
            "INSERT INTO events (ts, kind, subject, body) SELECT a.leased_at, "
            f"'task_assigned', a.task_id, json_object({body}) FROM assignments a "
            f"WHERE a.rowid > {ph} ORDER BY a.rowid", (last,))
    else:
        conn.exec_driver_sql(
            "INSERT INTO events (ts, kind, subject, body) SELECT a.leased_at, "
            f"'task_assigned', a.task_id, json_build_object({body}) "
            f"FROM unnest({ph}::text[]) WITH ORDINALITY AS u(id, n) "
            "JOIN assignments a ON a.id = u.id ORDER BY u.n", ([r["id"] for r in leases],))


def _place_round(c: Coordinator, s: Session, rows: Sequence[Any],
                 providers: list[market.ProviderState]
                 ) -> tuple[list[market.Placement], Demands]:
    workers = [p for p in providers if not p.verifier]
    verifiers = [p for p in providers if p.verifier]
    touched: dict[str, set[str]] = defaultdict(set)
    failed: dict[str, set[str]] = defaultdict(set)
    # In the driver's own SQL: SQLAlchemy's expanding IN rendered a round's ids at ~1 µs
    # each (at most BATCH of them: within both engines' bounds on parameters, see
    # ``provider_index.IN_MAX``). ``forced`` comes back as the driver gives JSON: text on
    # SQLite (JSON null as 'null'), parsed on PostgreSQL.
    conn = s.connection()
    ids = [t.id for t, _ in rows]
    for tid, pid, status, error, forced in conn.exec_driver_sql(
            "SELECT task_id, provider_id, status, error, forced FROM assignments "
            f"WHERE task_id IN ({', '.join([db.placeholder(conn)] * len(ids))})",
            tuple(ids)).all():
        if forced not in (None, "null") and status == AssignmentStatus.ACCEPTED:
            # It noticed a forced error: it saw only the network's forged claim, never the
            # task's, and proved it computes. It may still run the real check; counting it
            # as a party would use up one eligible checker per forced error.
            continue
        touched[tid].add(pid)
        if status in (AssignmentStatus.REJECTED, AssignmentStatus.FAILED) or (
                status == AssignmentStatus.EXPIRED and error == hoarding.LAPSE):
            failed[tid].add(pid)  # a hoarded lease too (``hoarding``)
    # Parties who touched a task but cannot take work now (offline, slashed below the
    # minimum, flagged) still have an identity: without it, a slashed key's sybil partner
    # would be free to check (or re-execute) what it did.
    known = {p.id for p in providers}
    absent = set().union(*touched.values()) - known if touched else set()
    index = _ConflictIndex(providers, c.settings.diversity, _absent_identities(c, s, absent))
    seen = canaries.seen_by(s, [t for t, _ in rows])
    load = {p.id: p.load for p in providers}
    demand_of = _Demands(c)
    demand_of.know(s, list({j.id: j for _, j in rows}.values()))
    min_stake = c.settings.min_stake
    out: list[market.Placement] = []
    primaries: list[market.TaskDemand] = []
    demands: Demands = {}
    for task, job in rows:
        if task.pending_role is None:  # a primary: avoid who failed it (and their
            # identity: a rejected key's sybil would repeat its answer) and a canary's source
            try:  # free when nothing is raised
                d = demand_of(job, task, index.around(  # a fresh shard's: no set built
                    failed.get(task.id, _NONE) | seen.get(task.id, _NONE)))._replace(
                    at_own_price=True)  # paid its own price (``market.stake_at``)
            except Exception:  # its job's model no longer in the catalog, say: not
                _skipped(task.id, "planning it")  # a reason to plan nothing at all
                continue
            primaries.append(d)
            demands[d.id] = (d, min_stake)
            continue
        # A check: nobody who touched the task, nor anyone sharing their identity; for a
        # trusted role, except the network's verifiers themselves: one that audited or
        # refereed the task before may do it again (a look-back's audit after an audit
        # that passed), where excluding it could leave a task no verifier may take.
        trusted = task.pending_role in TRUSTED_ROLES
        parties = touched[task.id] - c.settings.verifiers if trusted else touched[task.id]
        try:
            d = demand_of(job, task, index.around(parties), verifier=trusted)
        except Exception:
            _skipped(task.id, "planning its check")
            continue
        if trusted:  # the network's own verifiers bond no stake
            d = d._replace(stake_needed=0)
            pl = market.pick(d, verifiers, 0, c.rng.random(), load)
        else:
            pl = market.pick(d, workers, c.settings.min_stake, c.rng.random(), load)
        demands[d.id] = (d, 0 if trusted else c.settings.min_stake)
        if pl is not None:
            load[pl.provider_id] += 1
            out.append(pl)
    # Only the providers a check was just given change (10,000 copies a round otherwise).
    free = [p if load[p.id] == p.load else p.with_(load=load[p.id]) for p in workers]
    out += market.place(primaries, free, c.settings.min_stake, c.settings.strategy)
    return out, demands


_NONE: frozenset[str] = frozenset()
_SKIPPED: dict[str, None] = {}  # tasks a round could not plan or lease, logged once each


def _skipped(task_id: str, doing: str) -> None:
    """A task the matcher left out of a round because ``doing`` it raised: logged (with
    its traceback) the first time, so that a task that fails every round does not fill
    the log, while every other task is placed as usual."""
    if task_id in _SKIPPED:
        return
    if len(_SKIPPED) >= 10_000:
        _SKIPPED.pop(next(iter(_SKIPPED)))
    _SKIPPED[task_id] = None
    log.exception("matching: %s of task %s failed; the task was left out of the round",
                  doing, task_id)


def _absent_identities(c: Coordinator, s: Session, ids: set[str]
                       ) -> list[market.ProviderState]:
    """Identity-only states (never candidates) of parties missing from the live list."""
    if not ids:
        return []
    return [market.ProviderState(id=p.id, online=False, stake=0, memory_mb=0, slots=0,
                                 **_identity(c, p))
            for p in s.scalars(select(Provider).where(Provider.id.in_(sorted(ids))))]


class _ConflictIndex:
    """Which providers share an operator, a network origin or a hardware fingerprint.
    ``absent`` are parties that touched a task but are not candidates now: their
    identities count when excluding, and they are never offered."""

    def __init__(self, providers: list[market.ProviderState], attrs: tuple[str, ...],
                 absent: Sequence[market.ProviderState] = ()) -> None:
        self.attrs = attrs
        self.providers, self.absent = providers, absent

    @functools.cached_property
    def _maps(self) -> tuple[dict[str, market.ProviderState], dict[tuple[str, str], set[str]]]:
        """Each party's state, and who holds each identity key: built on the first task
        that has parties (most rounds place fresh shards only, and 10,000 providers' keys
        cost more than the rest of such a round)."""
        of = {p.id: p for p in [*self.absent, *self.providers]}
        by: dict[tuple[str, str], set[str]] = defaultdict(set)
        for p in self.providers:  # candidates only: who would be excluded
            for key in self._keys(p):
                by[key].add(p.id)
        return of, by

    def _keys(self, p: market.ProviderState) -> list[tuple[str, str]]:
        return [(name, v) for name in self.attrs if (v := getattr(p, name, ""))]

    def around(self, parties: AbstractSet[str]) -> frozenset[str]:
        if not parties:
            return _NONE
        of, by = self._maps
        out = set(parties)
        for pid in parties:
            p = of.get(pid)
            if p is not None:
                for key in self._keys(p):
                    out |= by[key]
        return frozenset(out)


def place_now(c: Coordinator, s: Session, task: Task, job: Job) -> str | None:
    """Place one queued primary at once, ahead of the queue (an interactive /v1 request),
    inside the caller's transaction; returns the provider, or None to leave it queued.
    The best candidate comes from the providers' index and is checked against its rows
    here (``ProviderIndex.place``): no read of every provider."""
    idx = provider_index.of(c)
    pl = idx.place(s, demand(c, job, task), c.settings.min_stake)
    if pl is None:
        return None
    _lease(c, s, task, job, pl, c.now())
    return pl.provider_id  # the caller tells the index once this commits (``leased``)


@dataclass
class _Bulk:
    """A batch's writes, made by the caller in one statement per table."""

    leases: list[dict[str, Any]] = field(default_factory=list)  # their events: from them
    primaries: list[effects.Placed] = field(default_factory=list)  # ``placed_many``
    jobs_now: dict[str, str] = field(default_factory=dict)  # its status as claimed, by job
    ids: list[str] = field(default_factory=list)  # the leases' ids, drawn at once
    holds: dict[str, float | None] = field(default_factory=dict)  # ``primary_hold``, by job


def _lease(c: Coordinator, s: Session, task: Task, job: Job, pl: market.Placement,
           now: float, bulk: _Bulk | None = None) -> None:
    """Record the lease; its rows (and a primary's moves) go to ``bulk`` for the caller
    to write in one statement each, or into the session when ``bulk`` is None."""
    role = (Role(task.pending_role) if task.pending_role
            else Role.CANARY if task.reference_digest else Role.PRIMARY)
    tid, jid = task.id, job.id  # read once: a job's are ORM attributes
    payload: str | None = None
    check_of: str | None = None
    forced: Any = None
    if role == Role.AUDIT:  # a re-run of the shard, checked against the result that stands
        check_of = s.scalars(select(Assignment.id).where(
            Assignment.task_id == task.id, Assignment.status == AssignmentStatus.ACCEPTED,
            Assignment.output_digest == task.output_digest)).first()
    elif role not in (Role.PRIMARY, Role.CANARY):
        subject = s.scalars(select(Assignment).where(
            Assignment.task_id == task.id, Assignment.status == AssignmentStatus.SUBMITTED,
            Assignment.role.in_(SUBJECT_ROLES))).first()
        if subject is None or subject.output_digest is None:
            effects.apply(c, s, job, task, D.on_placed(effects.ctx(c, job, task), role))
            return
        check_of = subject.id
        kind = kinds.get(job.kind)
        spec = kind.parse_spec(job.spec)
        extra = kind.check_payload(spec, c.blobs.get(task.input_digest),
                                   c.blobs.get(subject.output_digest),
                                   c.check_nonce(subject.id))
        if (extra is not None and role == Role.REPLICA
                and c.rng.random() < c.settings.verify.forced_share):
            forged = kind.forge(spec, extra, c.rng.random())  # a forced error (Truebit)
            if forged is not None:
                extra, forced = forged
        # held until the lease that names it commits (``blob_quota.hold``)
        payload = blob_quota.hold(c, s, extra) if extra is not None else None
    if check_of is not None and sealed.is_sealed(job.spec):  # its checker decrypts, compares
        from deai.coordinator import sealed_jobs
        payload = sealed_jobs.check_payload(c, s, task, job, role, check_of)
    if bulk is not None and role in (Role.PRIMARY, Role.CANARY):
        # Its moves with the batch's; its job as the batch claimed it (the plan's may be
        # older: an earlier batch may have started the job).
        bulk.primaries.append(effects.Placed(
            tid, jid, task.idx, bulk.jobs_now.get(jid) or job.status, task.status,
            task.attempts, job.owner == canaries.NETWORK))
    else:
        effects.apply(c, s, job, task, D.on_placed(effects.ctx(c, job, task),
                                                   Role.PRIMARY if role == Role.CANARY else role))
        task.updated_at = now
    rv = _VALUE[role]  # an enum's ``value`` is a descriptor call; this, a dict's lookup
    row = {"id": bulk.ids.pop() if bulk is not None and bulk.ids else lease_ids(1)[0],
           "task_id": tid, "job_id": jid, "provider_id": pl.provider_id, "role": rv,
           "status": _LEASED, "price": pl.price, "leased_at": now,
           "lease_deadline": now + c.settings.lease_ttl, "delivered": False,
           "input_digest": payload, "check_of": check_of, "forced": forced,
           "hold_until": now + check_hold(c, s, check_of, job) if check_of is not None
           else _primary_hold(c, job, now, bulk, s)}
    if bulk is None:
        s.add(Assignment(**row))
        c.emit(s, "task_assigned", tid, job=jid, provider=pl.provider_id, price=pl.price,
               role=rv)
    else:  # its event is made from its row (``_insert_leases``)
        bulk.leases.append(row)


def lease_ids(n: int) -> list[str]:
    """``n`` leases' ids: ordered by time (``service.ordered_ids``), so that a batch's
    rows go to the end of ``assignments``' primary key, not a page each of it."""
    return ordered_ids("asg", n)


CHECK_HOLD_MIN = 600.0  # seconds a check's lease may be held at least, whatever its subject
CHECK_HOLD_RUNS = 4  # ... or this many times as long as the checked result took to make,
# or the longest run the job's spec allows (``Kind.run_bound``)


def _primary_hold(c: Coordinator, job: Job, now: float, bulk: _Bulk | None,
                  s: Session | None = None) -> float | None:
    """``primary_hold`` once per job and batch (a spec parsed per placement would cost the
    matcher a fifth of its rate), as a lease's ``hold_until`` from ``now``."""
    jid = job.id
    if bulk is None:
        hold = primary_hold(c, job, s)
    elif jid in bulk.holds:
        hold = bulk.holds[jid]
    else:
        hold = bulk.holds[jid] = primary_hold(c, job, s)
    return None if hold is None else now + hold


REQUEST_HOLD = 600.0  # a /v1 request's primary lease is held at most this (and a ttl): its
# caller waits no longer for the answer (``openai.gateway.WAIT``)


def primary_hold(c: Coordinator, job: Job, s: Session | None = None) -> float | None:
    """How long a primary's lease may be held by heartbeats, when the job's spec bounds a
    run (``Kind.run_bound``: a command's wall-clock limit): ``CHECK_HOLD_RUNS`` times
    that, at least ``CHECK_HOLD_MIN``, plus a lease's ttl; past it the lease ends at no
    charge and the task goes to someone else (``jobs.expire_leases``, as hoarding when
    its provider beat on). A /v1 request's (read in ``s``): ``REQUEST_HOLD`` at most, its
    caller's wait (a provider held one for its job's whole hour, the caller answered
    504 after ten minutes). None: bounded by the job's deadline only (a training run, a
    batch of embeddings: no declared bound)."""
    bound = run_bound(job)
    hold = None if bound is None else (max(CHECK_HOLD_MIN, CHECK_HOLD_RUNS * bound)
                                       + c.settings.lease_ttl)
    if s is not None and s.scalar(select(ApiKeyJob.source).where(
            ApiKeyJob.job_id == job.id)) == "request":
        request = REQUEST_HOLD + c.settings.lease_ttl
        hold = request if hold is None else min(hold, request)
    return hold


def run_bound(job: Job) -> float | None:
    """The longest run ``job``'s spec allows (``Kind.run_bound``: a command's wall-clock
    limit), in seconds; None where it declares none, or where the spec no longer parses
    (an upgrade changed its kind): then only the job's deadline bounds a run."""
    try:
        kind = kinds.get(job.kind)
        return kind.run_bound(kind.parse_spec(job.spec))
    except Exception:
        return None


def check_hold(c: Coordinator, s: Session, subject_id: str, job: Job) -> float:
    """How long a check's lease may be held by heartbeats: ``CHECK_HOLD_RUNS`` times the
    checked result's run from its task's first lease (a slower machine, a model to
    load), at least ``CHECK_HOLD_MIN``, ``verify_timeout`` and ``CHECK_HOLD_RUNS`` times
    the longest run the job's spec allows (a command's wall-clock limit: a colluding
    primary answering a long command at once, with output it knew, must not cut its
    checkers' time short), plus a lease's time to live. Past it the lease ends and the
    check goes to someone else (``jobs.expire_leases``): charged as hoarding when a
    declared bound set the hold (no honest run outlasts it), at no charge otherwise (the
    checked result's claimed run set it, which a colluding primary can make short).
    Unbounded, a checker that kept listing the lease in its heartbeats held the verdict,
    and the checked result's pay, until the job's deadline."""
    # From the task's first lease, not the subject's own: a training primary that resumed
    # from another's checkpoint ran only the end, and a check replays the whole shard.
    row = s.execute(select(Assignment.task_id, Assignment.submitted_at)
                    .where(Assignment.id == subject_id)).first()
    first = s.scalar(select(func.min(Assignment.leased_at)).where(
        Assignment.task_id == row.task_id)) if row and row.submitted_at else None
    run = row.submitted_at - first if row and row.submitted_at and first is not None else 0.0
    bound = run_bound(job) or 0.0
    return (max(CHECK_HOLD_MIN, c.settings.verify_timeout,
                CHECK_HOLD_RUNS * max(0.0, run, bound)) + c.settings.lease_ttl)


_VALUE: dict[Role, str] = {r: r.value for r in Role}
_LEASED = AssignmentStatus.LEASED.value
