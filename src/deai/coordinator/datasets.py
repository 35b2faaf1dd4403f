"""Datasets: publish, terms, the owner's key release, and royalties paid at release.

- ``publish``: the owner uploaded the ciphertext (its own blob) and registers it
  with its terms and the key wrapped to itself only. A dataset keeps its bytes for
  as long as it is not deleted (revoked too), so they count against the owner's blob
  quota all that time (``blob_quota.keep``), and one owner keeps at most
  ``Settings.max_datasets_per_owner`` undeleted (409 ``datasets_limit``, field ``id``).
- ``delete``: once no job that uses it is running (409 ``in_use`` otherwise), the
  owner deletes it: revoked, its row kept (its uses and royalties are history the
  journal names), its bytes no longer kept (they fall to the blob TTL and stop
  counting against the quota and the count of datasets), its content read by nobody.
- A job naming a dataset (``spec.dataset_id``) is planned from the dataset's
  public summary (``prepare``: no plaintext needed) and, in the transaction that
  escrows it (the royalty included), ``record_use`` locks the dataset, checks
  every term again against the job's signed consent and records the use. A
  failed term raises before anything is written.
- The coordinator never holds the key. ``pending`` tells the owner which
  providers hold live leases of a use's job and have no key yet; the owner
  (``deai dataset serve``) checks the terms itself and posts the key wrapped to
  them (``release``); a leased provider fetches its wrapped key (``key_for``).
  After revocation nothing is released or handed out any more.
- The royalty is paid from the job's escrow to the owner when the job completes
  (a model was made from the rows: ``pay_use``), not at admission nor at the
  key's release: a key the coordinator cannot check (garbage wrapped, or the
  dataset revoked once paid) made a release pay for nothing; and a job run by a
  provider that kept an earlier job's key, with no release, was never paid. A job
  that ends otherwise (cancelled, failed, expired) gets the royalty back with the
  rest of its escrow, its use no longer counted (``end_use``); on a dataset with
  ``max_uses``, less a hold fee to the network for the time the job sat idle, no
  provider on it (``hold_fee``: the price per ``HOLD_PERIOD_S``, a day). A primary's
  result or checkpoint stands only if the key was released to it (``require_key``).
- The owner may refuse providers leased for its jobs before releasing them the key
  (``dataset_refusals``).
- The job's owner reads no checkpoint of its job but the final model, once the job
  has completed (``access.owner_may_read``, ``checkpoints.listing``): with one row a
  step, the change between two checkpoints gives the row. Training on a dataset
  takes batches of at least ``MIN_BATCH`` rows.
- A key released for a job stays fetchable, with the ciphertext, by the providers
  leased for that job after the dataset is revoked: revocation stops new releases
  and new jobs, not the ones already let in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from deai.coordinator import access, blob_quota
from deai.coordinator.service import Coordinator
from deai.core import batch, ledger
from deai.core import datasets as D
from deai.core import wire_datasets as W
from deai.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from deai.core.kinds import Shard, SpecBase, train, train_data
from deai.core.lifecycle import JOB_ACTIVE, AssignmentStatus, JobStatus, Role
from deai.store import journal
from deai.store.models import Assignment, Event, Job, Task
from deai.store.models_datasets import Dataset, DatasetKey, DatasetUse

MAX_LIST = 500
MIN_BATCH = 16  # rows a training step on a dataset averages over, at least


class TooManyDatasets(Conflict):
    code = "datasets_limit"


class InUse(Conflict):
    code = "in_use"


def _terms(d: Dataset) -> D.Terms:
    return D.Terms(price_per_use=d.price_per_use, allow=tuple(d.allow),  # type: ignore[arg-type]
                   expires_at=d.expires_at, max_uses=d.max_uses)


def _out(d: Dataset, private: bool = False) -> W.DatasetOut:
    face: dict[str, Any] = dict(
        id=d.id, owner=d.owner, name=d.name, size=d.size, train=d.info or None,
        terms=_terms(d), uses=d.uses, royalties=d.royalties, created_at=d.created_at,
        revoked_at=d.revoked_at, deleted_at=d.deleted_at, providers=d.providers)
    if private:
        return W.DatasetPrivateOut(**face, blob_digest=d.blob_digest, owner_key=d.owner_key)
    return W.DatasetOut(**face)


def lock(s: Session, dataset_id: str) -> None:
    """Lock a dataset's row (``store.db``'s order: before the journal's head)."""
    get(s, dataset_id, lock=True)


def get(s: Session, dataset_id: str, lock: bool = False) -> Dataset:
    d = s.get(Dataset, dataset_id, with_for_update=lock) if D.ID.match(dataset_id) else None
    if d is None:
        raise NotFound(f"no dataset {dataset_id}", field="dataset")
    return d


# --- the owner's side -------------------------------------------------------------------------

def publish(c: Coordinator, owner: str, body: W.DatasetIn) -> W.DatasetPrivateOut:
    # Its own upload, or its own job's data: never a blob it may read only through a
    # lease (a client's shard), which a dataset would keep readable, and kept, for ever.
    access.require_own_blobs(c, owner, [body.blob_digest], "blob_digest")
    if body.terms.expires_at is not None and body.terms.expires_at <= c.now():
        raise InvalidInput("terms.expires_at: already past", field="terms.expires_at")
    if "train" in body.terms.allow and body.train is None:
        raise InvalidInput("train: a dataset that allows training states its summary "
                           "(n, features, classes, sha256)", field="train")

    def create(s: Session) -> W.DatasetPrivateOut:
        if s.get(Dataset, body.id) is not None:
            raise Conflict(f"dataset {body.id} exists", field="id")
        blob_quota.lock_account(c, s, owner)  # its datasets counted one at a time
        cap = c.settings.max_datasets_per_owner
        have = s.scalar(select(func.count()).select_from(Dataset)
                        .where(Dataset.owner == owner, Dataset.deleted_at.is_(None))) or 0
        if have >= cap:  # revoked ones too: each keeps its bytes until deleted
            raise TooManyDatasets(f"id: this account keeps {have} datasets, the most one "
                                  f"account may ({cap}); delete one it no longer sells",
                                  field="id", limit=cap)
        # kept from a discard until this commits: the dataset then names the bytes, and
        # they stay after its owner's upload record runs out, counted against its quota
        # for as long as they do (the record stays: ``blob_quota.sweep``)
        blob_quota.keep(c, s, body.blob_digest, "blob_digest", account=owner)
        d = Dataset(id=body.id, owner=owner, name=body.name, blob_digest=body.blob_digest,
                    size=body.size, info=body.train.model_dump() if body.train else {},
                    owner_key=body.owner_key, price_per_use=body.terms.price_per_use,
                    allow=list(body.terms.allow), expires_at=body.terms.expires_at,
                    max_uses=body.terms.max_uses, uses=0, royalties=0, created_at=c.now(),
                    providers=_trusted(body.providers))
        s.add(d)
        s.flush()
        c.emit(s, "dataset_published", d.id, owner=owner, name=d.name,
               price_per_use=d.price_per_use, allow=list(d.allow))
        out = _out(d, private=True)
        assert isinstance(out, W.DatasetPrivateOut)
        return out

    return c.db.run(create)


def _trusted(providers: list[str] | None) -> list[str] | None:
    return sorted(set(providers)) if providers is not None else None


def set_providers(c: Coordinator, owner: str, dataset_id: str,
                  body: W.ProvidersIn) -> W.DatasetOut:
    """The owner names the only providers its dataset's jobs run on (``None``: any).

    From the next placement on, for every job on the dataset, those admitted already
    too: a primary or a replica (who read the rows) goes only to a listed provider; an
    audit or a referee stays the network's verifiers'. A live lease is left as it is:
    the owner refuses it (``dataset_refusals``) if it no longer trusts its provider.
    A deleted dataset's list no longer matters: 409 ``dataset``."""
    def run(s: Session) -> W.DatasetOut:
        d = get(s, dataset_id, lock=True)
        if d.owner != owner:
            raise Forbidden("only the dataset's owner may name its providers")
        if d.deleted_at is not None:
            raise Conflict(f"dataset {dataset_id} is deleted", field="dataset")
        d.providers = _trusted(body.providers)
        c.emit(s, "dataset_providers", d.id, owner=owner,
               providers=None if d.providers is None else len(d.providers))
        return _out(d)

    return c.db.run(run)


def trusted(s: Session, dataset_id: str) -> frozenset[str] | None:
    """The only providers a job on the dataset may run on, None for any."""
    got = get(s, dataset_id).providers
    return None if got is None else frozenset(got)


def trusted_for(s: Session, job_ids: Sequence[str]) -> dict[str, frozenset[str]]:
    """``trusted`` of each of ``job_ids`` that uses a dataset with a list, by job."""
    out: dict[str, frozenset[str]] = {}
    for i in range(0, len(job_ids), journal.IN_PART):
        for jid, got in s.execute(
                select(DatasetUse.job_id, Dataset.providers)
                .join(Dataset, Dataset.id == DatasetUse.dataset_id)
                .where(DatasetUse.job_id.in_(job_ids[i:i + journal.IN_PART]))).all():
            if got is not None:
                out[jid] = frozenset(got)
    return out


def revoke(c: Coordinator, owner: str, dataset_id: str) -> W.DatasetOut:
    def body(s: Session) -> W.DatasetOut:
        d = get(s, dataset_id, lock=True)
        if d.owner != owner:
            raise Forbidden("only the dataset's owner may revoke it")
        if d.revoked_at is None:
            d.revoked_at = c.now()
            c.emit(s, "dataset_revoked", d.id, owner=owner)
        return _out(d)

    return c.db.run(body)


def delete(c: Coordinator, owner: str, dataset_id: str) -> W.DatasetOut:
    """The owner deletes its dataset: revoked, no longer keeping its bytes (they fall to
    the blob TTL, out of its quota and its count of datasets), its content served to
    nobody; its row and uses stay. Refused (409 ``in_use``) while a job that uses it is
    still active, a provider holds a live lease of one, or an audit of one is queued (a
    completed job's look-back): those were let in and still read the rows. Deleting
    twice is the same as once."""
    def body(s: Session) -> W.DatasetOut:
        d = get(s, dataset_id, lock=True)  # a job's use is recorded under this lock
        if d.owner != owner:
            raise Forbidden("only the dataset's owner may delete it")
        if d.deleted_at is None:
            jobs = select(DatasetUse.job_id).where(DatasetUse.dataset_id == d.id)
            running = s.scalar(select(func.count()).select_from(Job).where(
                Job.id.in_(jobs), Job.status.in_(JOB_ACTIVE))) or 0
            leased = s.scalar(select(func.count()).select_from(Assignment).where(
                Assignment.job_id.in_(jobs),
                Assignment.status == AssignmentStatus.LEASED)) or 0
            # an audit queued on a completed job (a look-back) is placed later and reads
            # the rows too: deleted, it could never run, and held the earnings for ever
            audits = s.scalar(select(func.count()).select_from(Task).where(
                Task.job_id.in_(jobs), Task.pending_role == Role.AUDIT)) or 0
            if running or leased or audits:
                raise InUse(f"dataset: {running} job(s) using it still run, {leased} "
                            f"lease(s) of them are live and {audits} audit(s) of them "
                            "are queued; revoke it now and delete it once they end",
                            field="dataset", running=running, leased=leased, audits=audits)
            now = c.now()
            d.revoked_at = d.revoked_at if d.revoked_at is not None else now
            d.deleted_at = now
            c.emit(s, "dataset_deleted", d.id, owner=owner)
        return _out(d)

    return c.db.run(body)


def drop_blocked_audits(c: Coordinator) -> int:
    """Queued audits that cannot run, dropped; from the upkeep loop, returns how many.

    - *dataset revoked*: the job trains on a dataset since revoked or deleted, whose key
      is released to nobody new (``release``), so the verifier leased one failed at once
      and the audit, queued again, held the result's earnings for ever and took a
      verifier's slot each time;
    - *key withheld*: its owner let ``KEY_TRIES`` audit leases of the task end without
      releasing the key to them (each verifier waits ``provider.datasets.WAIT`` and fails
      it): a silent owner held the audit, and the earnings, just as long.
    - *use void*: the job ended uncompleted and gave its use back (``end_use``), so no
      key is released for it any more (an audit drawn at acceptance, or a look-back's).

    Each is dropped (an ``audit_dropped`` event with the reason, as sealed as the audit
    was): the result stands as accepted when it passed its checks, and its earnings
    follow the challenge window. A dataset's owner can thereby spare a completed job's
    results a look-back; the job's client chose the dataset, and the checks before
    acceptance ran as on any job (docs/sealed.md)."""
    revoked = Task.job_id.in_(
        select(DatasetUse.job_id).join(Dataset, Dataset.id == DatasetUse.dataset_id)
        .where(Dataset.revoked_at.is_not(None)))
    # Audit leases of the task that ended with no key released to their verifier.
    keyless = (select(func.count(Assignment.id)).where(
        Assignment.task_id == Task.id, Assignment.role == Role.AUDIT.value,
        Assignment.status != AssignmentStatus.LEASED.value,
        ~select(DatasetKey.id).where(DatasetKey.job_id == Assignment.job_id,
                                     DatasetKey.provider_id == Assignment.provider_id)
        .exists()).scalar_subquery())
    withheld = and_(Task.job_id.in_(select(DatasetUse.job_id)), keyless >= KEY_TRIES)
    # A job on a dataset that ended uncompleted gave its use back (``end_use``): no key
    # is released for it any more, and its audits never ran.
    # Correlated by key, the task's own job only: not a scan of every job's spec at each
    # upkeep pass.
    void = and_(~select(DatasetUse.id).where(DatasetUse.job_id == Task.job_id).exists(),
                select(Job.id).where(Job.id == Task.job_id,
                                     Job.spec["dataset_id"].as_string().is_not(None))
                .exists())
    blocked = (Task.pending_role == Role.AUDIT.value, or_(revoked, withheld, void))
    with c.db.read() as s:  # most passes find none: no write transaction for them
        if s.scalar(select(Task.id).where(*blocked).limit(1)) is None:
            return 0

    def body(s: Session) -> int:
        # Tasks alone are locked (skipped when another holds them: the matcher's claim,
        # a verdict), so no lock order is crossed; a task taken meanwhile waits a pass.
        rows = s.execute(select(Task, revoked, void).where(*blocked).order_by(Task.id)
                         .limit(BLOCKED_BATCH).with_for_update(of=Task, skip_locked=True)
                         ).all()
        now = c.now()
        for t, was_revoked, was_void in rows:
            t.pending_role, t.updated_at = None, now
            why = ("dataset use void" if was_void else "dataset revoked" if was_revoked
                   else "dataset key withheld")
            c.emit(s, "audit_dropped", t.id, job=t.job_id, reason=why)
        return len(rows)

    n = c.db.run(body)
    if n:
        c.notifier.published()
    return n


KEY_TRIES = 3  # audit leases a dataset's owner may let end without the key (each waits
# ``provider.datasets.WAIT``, 10 minutes) before the audit is dropped as withheld

BLOCKED_BATCH = 500  # audits dropped in one transaction; the next pass takes the rest


def listing(c: Coordinator, owner: str | None = None, limit: int = 100) -> list[W.DatasetOut]:
    with c.db.read() as s:
        q = select(Dataset).where(Dataset.deleted_at.is_(None)).order_by(
            Dataset.created_at.desc()).limit(max(1, min(limit, MAX_LIST)))
        if owner:
            q = q.where(Dataset.owner == owner)
        return [_out(d) for d in s.scalars(q)]


def show(c: Coordinator, dataset_id: str, me: str | None = None) -> W.DatasetOut:
    with c.db.read() as s:
        d = get(s, dataset_id)
        return _out(d, private=me == d.owner)


# --- jobs that use a dataset ---------------------------------------------------------------

@dataclass(frozen=True)
class Use:
    dataset_id: str
    price: int
    shards: list[Shard]


def prepare(c: Coordinator, spec: SpecBase) -> Use:
    """Plan a job on a dataset from its public summary; refuse a failed term early."""
    assert spec.dataset_id is not None
    with c.db.read() as s:
        d = get(s, spec.dataset_id)
        _check(c, d, spec)
        info, price = dict(d.info), d.price_per_use
    if not isinstance(spec, train.TrainSpec) or spec.kind not in D.USABLE:
        raise InvalidInput(f"spec.dataset_id: {spec.kind} jobs cannot use a dataset yet "
                           "(training can)", field="spec.dataset_id")
    if spec.dataset != "file":
        raise InvalidInput("spec.dataset: a job on a dataset trains on its file: set "
                           "dataset: file", field="spec.dataset")
    if spec.batch_size < MIN_BATCH:  # one row a step: its checkpoints would spell the row
        raise InvalidInput(f"spec.batch_size: training on a dataset takes batches of at "
                           f"least {MIN_BATCH} rows", field="spec.batch_size")
    summary = train_data.DataInfo(info["n"], info["features"], info["classes"], info["sha256"])
    p = train.payload_for(spec, summary, D.SOURCE + spec.dataset_id)
    shard = Shard(p.model_dump_json().encode(), p.steps, p.steps * p.step_units)
    return Use(spec.dataset_id, price, [shard])


def _check(c: Coordinator, d: Dataset, spec: SpecBase) -> None:
    why = D.refusal(_terms(d), spec.dataset_terms, spec.kind, c.now(),
                    d.revoked_at is not None, d.uses)
    if why is not None:
        term, reason = why
        raise InvalidInput(f"{D.field_of(term)}: {reason}", field=D.field_of(term), term=term)


def record_use(c: Coordinator, s: Session, job: Job, spec: SpecBase, use: Use) -> None:
    """Inside the job's escrow transaction (the escrow holds the royalty): check the terms
    under the dataset's lock and count the use; the royalty waits for the key's release."""
    d = get(s, use.dataset_id, lock=True)
    _check(c, d, spec)
    if d.price_per_use != use.price:
        raise InvalidInput("spec.dataset_terms.price_per_use: the price changed",
                           field="spec.dataset_terms.price_per_use", term="price_per_use")
    d.uses += 1
    s.add(DatasetUse(dataset_id=d.id, job_id=job.id, job_owner=job.owner, kind=job.kind,
                     price=d.price_per_use, royalty_seq=None, created_at=c.now()))
    c.emit(s, "dataset_used", d.id, job=job.id, price=d.price_per_use)


def pay_use(c: Coordinator, s: Session, job: Job) -> None:
    """A job that completed (its row locked, still active, its escrow not yet refunded):
    its royalty, from the escrow to the dataset's owner, once."""
    use = s.scalar(select(DatasetUse).where(DatasetUse.job_id == job.id))
    if use is None or use.royalty_seq is not None or job.status not in JOB_ACTIVE:
        return
    d = get(s, use.dataset_id, lock=True)
    entry = c.settlement.royalty(s, d.id, job.id, d.owner, job.owner, use.price)
    if entry is None:
        return
    amount = -dict(entry.postings)[ledger.escrow(job.id)]
    use.royalty_seq = entry.seq
    d.royalties += amount
    job.cost += amount


def end_use(c: Coordinator, s: Session, job: Job) -> None:
    """A job ending (its row locked, its escrow about to be refunded) whose royalty was
    never paid: the use is no longer counted (``max_uses``) nor listed, and the royalty
    goes back with the rest of the escrow, less the hold fee of a scarce use
    (``hold_fee``, to the network). A paid one stays paid."""
    use = s.scalar(select(DatasetUse).where(DatasetUse.job_id == job.id))
    if use is None or use.royalty_seq is not None:
        return
    d = get(s, use.dataset_id, lock=True)
    fee, held = hold_fee(c, s, d, use)
    if fee:
        entry = c.settlement.hold_fee(s, d.id, job.id, job.owner, fee, held)
        fee = -dict(entry.postings)[ledger.escrow(job.id)] if entry is not None else 0
        job.cost += fee
    d.uses = max(0, d.uses - 1)
    s.delete(use)
    c.emit(s, "dataset_use_void", d.id, job=job.id, hold_fee=fee, held=held)


HOLD_PERIOD_S = 86_400  # a scarce use held this long idle (no provider on its job)
# costs its whole price per use (``hold_fee``)


def hold_fee(c: Coordinator, s: Session, d: Dataset, use: DatasetUse) -> tuple[int, int]:
    """What a job that ends without a model pays for the scarce use it held, and the
    seconds charged: ``price × idle / HOLD_PERIOD_S`` (whole µ, at most the price), where
    *idle* is the time the job had no live primary lease (queued: the gaps between its
    leases, each from ``leased_at`` to ``ended_at``), from the use's admission until the
    job's end or the dataset's revocation (no use is scarce after it). Paid to the network
    (``ledger.FEE``), not to the owner.

    Without it a buyer held a dataset's ``max_uses`` with jobs priced for nobody to take
    (or a key per slot) and cancelled them at no cost, and nobody else could buy a use:
    idle holding now costs what buying does, a day of it one price. The time a lease was
    live is not charged, whoever's provider held it: the job then waited on the owner's
    release or on that provider. A lease cannot end that time early with a made-up
    result: a result on a dataset job comes only from a provider the key was released to
    (``require_key``). Not the owner's: an owner that refused or starved every provider
    willing to run a job left it idle, and would have been paid for that; to the network
    an owner's refusals earn nothing, and the buyer, who sees why its job waits, may
    cancel. A dataset with no ``max_uses`` has no scarce use to hold: free.

    On a dataset that names its providers (``set_providers``), the wait after an owner's
    refusal, until the next lease, is not charged either: only a provider the owner
    listed could hold the lease it refused, so the buyer (whose own keys the list keeps
    out) did nothing to cause that wait. A refusal is told by its ``lease_refused``
    event, which only ``dataset_refusals`` writes (a lease's error text is the
    provider's to choose when it reports a failure)."""
    if d.max_uses is None:
        return 0, 0
    end = c.now() if d.revoked_at is None else min(c.now(), d.revoked_at)
    rows = s.execute(select(Assignment.task_id, Assignment.provider_id, Assignment.leased_at,
                            Assignment.ended_at).where(
        Assignment.job_id == use.job_id, Assignment.role == Role.PRIMARY.value)).all()
    refused: set[tuple[str, str]] = set()
    if d.providers is not None and rows:
        for task_id, body in s.execute(select(Event.subject, Event.body).where(
                Event.kind == "lease_refused",
                Event.subject.in_(sorted({r.task_id for r in rows})))).all():
            refused.add((task_id, (body or {}).get("provider", "")))
    # A refused provider is never leased the task again: its refused lease is its last.
    last: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r.task_id, r.provider_id)
        last[key] = max(last.get(key, r.leased_at), r.leased_at)
    starts = sorted(r.leased_at for r in rows)
    spans = []
    for r in rows:
        stop = end if r.ended_at is None else r.ended_at
        key = (r.task_id, r.provider_id)
        if key in refused and r.leased_at == last[key]:  # to the next lease, or the end
            stop = next((a for a in starts if a >= stop and a > r.leased_at), end)
        spans.append((r.leased_at, stop))
    idle = int(min(_uncovered(use.created_at, end, spans), float(HOLD_PERIOD_S)))
    return use.price * idle // HOLD_PERIOD_S, idle


def require_key(s: Session, job: Job, a: Assignment) -> str | None:
    """Why lease ``a``'s result or checkpoint for ``job`` cannot stand, or None: on a
    dataset, a primary the owner never released the key to for this job cannot have
    trained on the rows (it would have to keep a key from an earlier job, which the
    owner gave for that job only); its output is junk, or a way to end its lease's live
    time early. A check is not held to it: a checker may judge without the rows (a chain
    whose checkpoints were never uploaded is unreplayable whatever the key), and
    rejecting it would let such a cheat's audit be dropped as withheld."""
    if a.role != Role.PRIMARY.value or not (job.spec or {}).get("dataset_id") \
            or a.provider_id in released_to(s, job.id):
        return None
    return "no dataset key was released to this provider for the job"


def _uncovered(start: float, end: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of [start, end] that none of ``spans`` covers."""
    covered, at = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in spans):
        if b <= max(a, at):  # empty, outside the span, or covered already
            continue
        covered += b - max(a, at)
        at = b
    return max(0.0, end - start - covered)


# --- the key release -------------------------------------------------------------------------

def _leased(c: Coordinator, s: Session, job_id: str) -> set[str]:
    """Who holds a live lease of the job: leased and within its deadline (a lapsed lease
    the sweep has not ended yet reads nothing, as ``access.lease_may_read`` has it)."""
    return set(s.scalars(select(Assignment.provider_id)
                         .where(_live(c, Assignment.job_id == job_id))))


def _live(c: Coordinator, *where: Any) -> Any:
    return and_(Assignment.status == AssignmentStatus.LEASED,
                Assignment.lease_deadline >= c.now(), *where)


def released_to(s: Session, job_id: str) -> set[str]:
    return set(s.scalars(select(DatasetKey.provider_id).where(DatasetKey.job_id == job_id)))


def pending(c: Coordinator, owner: str) -> list[W.PendingOut]:
    """Uses of ``owner``'s live datasets whose leased providers have no key yet."""
    out = []
    with c.db.read() as s:
        # Any live lease counts, a check placed after the job completed (an audit) too.
        live = select(Assignment.job_id).where(Assignment.status == AssignmentStatus.LEASED)
        rows = s.execute(select(DatasetUse, Dataset.providers)  # with each one's list
                         .join(Dataset, Dataset.id == DatasetUse.dataset_id)
                         .where(Dataset.owner == owner, Dataset.revoked_at.is_(None),
                                DatasetUse.job_id.in_(live))
                         .order_by(DatasetUse.id)).all()
        for u, named in rows:  # never the job's owner (``release``)
            waiting = sorted(_leased(c, s, u.job_id) - released_to(s, u.job_id) - {u.job_owner})
            away = [p for p in waiting if not _may_hold(c, named, p)]
            if waiting:
                out.append(W.PendingOut(dataset_id=u.dataset_id, job_id=u.job_id, kind=u.kind,
                                        price=u.price, unlisted=away,
                                        providers=[p for p in waiting if p not in away]))
    return out


def _may_hold(c: Coordinator, named: list[str] | None, provider: str) -> bool:
    """Whether ``provider`` may be released a dataset's key: any provider, unless the
    dataset names its providers; then those and the network's verifiers (who check its
    jobs) only. A lease placed before the list (or before it shrank), or planned as it
    changed, may be held by another: never released the key, the owner refuses it."""
    return named is None or provider in named or provider in c.settings.verifiers


def release(c: Coordinator, owner: str, dataset_id: str, body: W.ReleaseIn) -> list[str]:
    """Store the key the owner wrapped to each provider leased for the job; returns them."""
    def run(s: Session) -> list[str]:
        if get(s, dataset_id).owner != owner:
            raise Forbidden("only the dataset's owner releases its key")
        use = s.scalar(select(DatasetUse).where(DatasetUse.job_id == body.job_id,
                                                DatasetUse.dataset_id == dataset_id))
        if use is None:
            raise NotFound(f"job_id: no job {body.job_id} uses this dataset", field="job_id")
        # The lock order: the job (its escrow pays the royalty), then the dataset.
        job = s.get(Job, body.job_id, with_for_update={"key_share": True},
                    populate_existing=True)
        d = s.get(Dataset, dataset_id, with_for_update=True, populate_existing=True)
        # Again, locked: a job that ended meanwhile took its use away (``end_use``).
        use = s.scalar(select(DatasetUse).where(DatasetUse.job_id == body.job_id,
                                                DatasetUse.dataset_id == dataset_id)
                       .execution_options(populate_existing=True))
        if d is None or job is None or use is None:
            raise NotFound(f"job_id: no job {body.job_id} uses this dataset", field="job_id")
        if d.revoked_at is not None:
            raise Conflict("the dataset is revoked: its key is released to nobody",
                           field="dataset")
        leased, done = _leased(c, s, body.job_id), released_to(s, body.job_id)
        for pid in body.keys:
            if pid == use.job_owner:  # it would read every row for one royalty
                raise Forbidden(f"keys: {pid[:16]}… is the job's owner; a dataset's key "
                                "goes only to the providers that run its jobs for others",
                                field="keys")
            if pid not in leased:
                raise InvalidInput(f"keys: {pid[:16]}… holds no lease of job {body.job_id}",
                                   field="keys")
            if not _may_hold(c, d.providers, pid):
                raise Conflict(f"keys: {pid[:16]}… is not among the providers the dataset "
                               "names; refuse its lease instead", field="keys")
        fresh = sorted(set(body.keys) - done)
        for pid in fresh:
            s.add(DatasetKey(dataset_id=d.id, job_id=body.job_id, provider_id=pid,
                             wrapped=body.keys[pid], created_at=c.now()))
        if fresh:
            c.emit(s, "dataset_key_released", d.id, job=body.job_id, providers=fresh)
        return fresh

    return c.db.run(run)


def key_for(c: Coordinator, provider: str, dataset_id: str, job_id: str) -> W.KeyOut:
    """A leased provider's wrapped key (Conflict ``waiting``: the owner has not released it)."""
    with c.db.read() as s:
        d = get(s, dataset_id)
        if provider not in _leased(c, s, job_id) or s.scalar(select(DatasetUse.id).where(
                DatasetUse.job_id == job_id, DatasetUse.dataset_id == d.id)) is None:
            raise NotFound(f"no lease of a job {job_id} on this dataset held by this key",
                           field="job")
        wrapped = s.scalar(select(DatasetKey.wrapped).where(
            DatasetKey.job_id == job_id, DatasetKey.provider_id == provider))
        if d.deleted_at is not None:  # its owner deleted it once no job of it was live
            raise Forbidden("the dataset is deleted", field="dataset")
        if wrapped is None and d.revoked_at is not None:  # released before: still served
            raise Forbidden("the dataset is revoked", field="dataset")
        if wrapped is None:
            raise Conflict("waiting for the dataset owner to release its key",
                           field="key", waiting=True)
        return W.KeyOut(dataset_id=d.id, job_id=job_id, wrapped=wrapped,
                        blob_digest=d.blob_digest)


def content(c: Coordinator, account: str, dataset_id: str) -> bytes:
    """The ciphertext, to the owner or a provider holding a live lease of a job the owner
    released the key for (revoked since or not: that job was let in)."""
    with c.db.read() as s:
        d = get(s, dataset_id)
        live = select(Assignment.job_id).where(_live(c, Assignment.provider_id == account))
        allowed = account == d.owner or s.scalar(
            select(DatasetKey.id).where(DatasetKey.dataset_id == d.id,
                                        DatasetKey.provider_id == account,
                                        DatasetKey.job_id.in_(live)).limit(1)) is not None
        digest = d.blob_digest
        allowed = allowed and d.deleted_at is None
    if not allowed:
        raise NotFound(f"no dataset {dataset_id} this key may read", field="dataset")
    return c.blobs.get(digest)


# --- provenance ---------------------------------------------------------------------------------

USES_PAGE = 100  # uses listed at once, at most: each completed one reads its job's result


def uses(c: Coordinator, owner: str, dataset_id: str, after: int = 0,
         limit: int = USES_PAGE) -> W.UsesOut:
    """The owner's dataset's uses after the cursor ``after``, oldest first, ``limit`` at
    most: the job, who ran it, and for a completed training job the model it produced and
    its checkpoint chain head (from the job's result)."""
    limit = max(1, min(limit, USES_PAGE))
    with c.db.read() as s:
        d = get(s, dataset_id)
        if d.owner != owner:
            raise NotFound(f"no dataset {dataset_id} owned by this key", field="dataset")
        rows = s.execute(select(DatasetUse, Job.status, Job.output_digest)
                         .join(Job, Job.id == DatasetUse.job_id)
                         .where(DatasetUse.dataset_id == d.id, DatasetUse.id > after)
                         .order_by(DatasetUse.id).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        out = []
        for u, status, output in rows:
            model, head = _lineage(c, output) if status == JobStatus.COMPLETED else (None, None)
            out.append(W.UseOut(dataset_id=u.dataset_id, job_id=u.job_id,
                                job_owner=u.job_owner, kind=u.kind, price=u.price,
                                royalty_seq=u.royalty_seq, created_at=u.created_at,
                                job_status=status, released_to=sorted(released_to(s, u.job_id)),
                                model_digest=model, chain_head=head))
        return W.UsesOut(uses=out, next_after=rows[-1][0].id if more else None)


def _lineage(c: Coordinator, output_digest: str | None) -> tuple[str | None, str | None]:
    if output_digest is None or not c.blobs.exists(output_digest):
        return None, None
    try:
        result = batch.safe_loads(c.blobs.get(output_digest).splitlines()[0])
        return str(result["model_digest"]), str(result["chain"][-1]["hash"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None
