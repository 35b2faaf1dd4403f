"""The coordinator's chain rail: mirror, watch, commit, all idempotent.

``ChainRail.on_posted`` runs inside the posting transaction of the settlement
port and writes one ``chain_outbox`` row per vault call that mirrors the entry
(``books.mirror_ops``); ``scan_journal`` does the same for entries posted
without the port, from a cursor, so no entry is missed either way (the outbox's
unique key on journal seq and op makes the two paths meet once).

``tick(db, chain, post, now)`` is one round of the background loop:

1. ``watch_deposits``: Deposited events at least ``confirmations`` blocks deep
   are credited to the journal, each once (unique tx hash + log index, and the
   block cursor moves in the same transaction as the credits, so a reorg
   shallower than the confirmations never credits a deposit that vanished),
   read a range of blocks at a time that the node's log limits allow;
2. ``send_outbox``: pending rows are sent with the settlement key; a row the
   vault already applied (its ``ref`` or evidence hash) is marked done without
   sending, so a crash between sending and recording never applies it twice;
3. ``watch_revocation``: the posted epochs that can still be revoked are marked
   revoked if the guardian revoked them on chain;
4. ``commit_epoch``: every ``epoch_interval`` seconds, if the journal moved (or
   the latest epoch was revoked), the head hash and the Merkle root of cumulative
   withdrawals are committed; a pending epoch found on chain (same head and root,
   not revoked) is recorded, not resent.

Nothing here holds state between ticks: the database and the chain are the state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.orm import Session

from deai.chain import books, merkle
from deai.chain.adapter import CHAIN_ENV, Chain, ChainError, Deployment
from deai.core import ledger
from deai.store import journal
from deai.store.db import Database
from deai.store.models import ChainCursor, ChainDeposit, ChainEpoch, ChainOutbox, JournalEntry

log = logging.getLogger("deai.chain")

Post = Callable[[Session, ledger.Draft], Any]
MAX_ATTEMPTS = 5
PAGE = 1000


def enqueue(s: Session, entry: ledger.Entry, now: float) -> int:
    """Outbox rows for the vault calls that mirror ``entry``; returns how many were new."""
    new = 0
    for op, args in books.mirror_ops(entry):
        exists = s.scalar(select(ChainOutbox.id).where(ChainOutbox.journal_seq == entry.seq,
                                                       ChainOutbox.op == op,
                                                       ChainOutbox.provider == args["provider"]))
        if exists is None:
            s.add(ChainOutbox(journal_seq=entry.seq, op=op, provider=args["provider"],
                              args=args, status="pending", attempts=0, created_at=now))
            new += 1
    if new:
        s.flush()
    return new


class ChainRail:
    """A rail of the settlement port (``name`` and ``on_posted``)."""

    name = "chain"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def on_posted(self, s: Session, entry: ledger.Entry) -> None:
        enqueue(s, entry, self.clock())


# --- cursors ---------------------------------------------------------------------------------

def cursor(s: Session, name: str, default: int) -> int:
    row = s.get(ChainCursor, name)
    return row.value if row is not None else default


def set_cursor(s: Session, name: str, value: int) -> None:
    row = s.get(ChainCursor, name)
    if row is None:
        s.add(ChainCursor(name=name, value=value))
    else:
        row.value = value


# --- the loop's steps --------------------------------------------------------------------------

def scan_journal(db: Database, now: float) -> int:
    """Enqueue mirror rows for entries after the cursor (those posted without the rail)."""
    new = 0
    with db.write() as s:
        after = cursor(s, "journal_seq", 0)
        rows = s.scalars(select(JournalEntry).where(JournalEntry.seq > after)
                         .order_by(JournalEntry.seq).limit(PAGE)).all()
        for row in rows:
            new += enqueue(s, journal.to_entry(row), now)
        if rows:
            set_cursor(s, "journal_seq", rows[-1].seq)
    return new


SCAN_PAGES = 20  # ranges of blocks (``Chain.event_pages``) a tick reads at most: after a
# long outage the backlog takes a few ticks, and the other steps are not kept waiting


def watch_deposits(db: Database, chain: Chain, post: Post, now: float) -> int:
    """Credit confirmed Deposited events once each; returns how many were credited.

    Read a range of blocks at a time that the node serves (``Chain.event_pages``), each
    committed with the cursor that moves past it, so a node's log limits do not stop
    deposits for good after an outage."""
    safe = chain.block_number() - chain.dep.confirmations
    with db.read() as s:
        start = cursor(s, "deposit_block", chain.dep.start_block - 1) + 1
    credited = 0
    pages = chain.event_pages(chain.settlement, "Deposited", start, safe)
    for first, last, events in itertools.islice(pages, SCAN_PAGES):
        got = _credit(db, chain, post, now, first, last, events)
        if got is None:
            break  # another replica moved the cursor meanwhile
        credited += got
    return credited


def _credit(db: Database, chain: Chain, post: Post, now: float, start: int, end: int,
            events: list[Any]) -> int | None:
    """Credit ``events`` (blocks ``start``..``end``) and move the cursor past ``end``, in
    one transaction; None if the cursor is no longer at ``start``."""
    credited = 0
    with db.write() as s:
        if cursor(s, "deposit_block", chain.dep.start_block - 1) + 1 != start:
            return None
        for ev in events:
            tx = "0x" + bytes(ev.transactionHash).hex()
            idx = int(ev.logIndex)
            if s.scalar(select(ChainDeposit.id).where(ChainDeposit.tx_hash == tx,
                                                      ChainDeposit.log_index == idx)):
                continue
            account = bytes(ev.args.account).hex()
            amount = int(ev.args.amount)
            entry = post(s, ledger.deposit(account, amount, chain.dep.chain_id, tx, idx,
                                           int(ev.blockNumber)))
            s.add(ChainDeposit(tx_hash=tx, log_index=idx, block=int(ev.blockNumber),
                               account=account, sender=str(ev.args.sender), amount=amount,
                               journal_seq=entry.seq, credited_at=now))
            credited += 1
        set_cursor(s, "deposit_block", end)
    return credited


@dataclass(frozen=True)
class Pending:
    id: int
    op: str
    provider: str
    args: dict[str, Any]


def _applied(chain: Chain, row: Pending) -> bool:
    key = row.args["evidence"] if row.op == "slash" else row.args["ref"]
    return bool(chain.vault.functions.applied(bytes.fromhex(key[2:])).call())


def _send(chain: Chain, row: Pending) -> Any:
    a = row.args
    pid = bytes.fromhex(a["provider"])
    v = chain.vault.functions
    if row.op == "bond":
        fn = v.mirror_bond(pid, a["amount"], bytes.fromhex(a["ref"][2:]))
    elif row.op == "unbond":
        fn = v.mirror_unbond(pid, a["amount"], bytes.fromhex(a["ref"][2:]))
    else:  # the reporter's bounty is paid in the journal; on chain it all goes to treasury
        fn = v.slash(pid, a["amount"], 0, "0x" + "0" * 40, bytes.fromhex(a["evidence"][2:]))
    return chain.send(chain.settler, fn)


def send_outbox(db: Database, chain: Chain, now: float, limit: int = 50) -> int:
    """Send up to ``limit`` pending rows, in order per provider: a row that fails holds
    back the later rows of its provider only (they may depend on it), never another
    provider's. Anyone can take a provider's id in the vault first (``bond`` is open),
    after which that provider's calls revert; that must not stop everyone's mirroring."""
    blocked: set[str] = set()
    tried = sent = 0
    after = 0
    while tried < limit:
        with db.read() as s:
            rows = [Pending(r.id, r.op, r.provider, dict(r.args)) for r in
                    s.scalars(select(ChainOutbox).where(ChainOutbox.status == "pending",
                                                        ChainOutbox.id > after)
                              .order_by(ChainOutbox.id).limit(limit))]
        if not rows:
            break
        for row in rows:
            after = row.id
            if row.provider in blocked:
                continue
            if tried >= limit:
                break
            tried += 1
            ok = _send_row(db, chain, now, row)
            if ok is None:
                blocked.add(row.provider)
            sent += ok or 0
    return sent


def _send_row(db: Database, chain: Chain, now: float, row: Pending) -> int | None:
    """Send one row and record what happened: 1 sent, 0 no longer pending, None failed."""
    tx_hash, error = None, None
    try:
        if not _applied(chain, row):
            tx_hash = "0x" + bytes(_send(chain, row)["transactionHash"]).hex()
    except ChainError as exc:
        error = exc.message
    with db.write() as s:
        r = s.get(ChainOutbox, row.id)
        if r is None or r.status != "pending":
            return 0
        r.attempts += 1
        if error is None:
            r.status, r.tx_hash, r.done_at, r.error = "done", tx_hash, now, None
            return 1
        r.error = error
        if r.attempts >= MAX_ATTEMPTS:
            r.status = "failed"
        log.warning("chain outbox %d (%s): %s", r.id, r.op, error)
    return None


def leaves_at(s: Session, head_seq: int) -> dict[str, int]:
    rows = s.scalars(select(JournalEntry).where(JournalEntry.kind == "withdrawal",
                                                JournalEntry.seq <= head_seq)
                     .order_by(JournalEntry.seq)).all()
    return books.withdrawable(journal.to_entry(r) for r in rows)


EPOCH_BACKOFF_MAX = 600.0  # seconds between tries of an epoch whose commit keeps failing


def commit_epoch(db: Database, chain: Chain, now: float, *, force: bool = False) -> int | None:
    """Post a pending epoch, or start a new one when due; the epoch number posted.

    A commit that fails (the contract refused it, it was not mined, or anything else
    went wrong on the way) is counted on the pending epoch with its reason, and tried
    again after a back-off that doubles from the epoch interval to ``EPOCH_BACKOFF_MAX``
    (``force``: now). One the contract refused is first made again at the journal's
    head, if that moved: a refusal may be of that commitment alone (a head an epoch on
    chain has passed), and a newer one covers it (the withdrawals it commits are
    cumulative). One not mined is sent again as it was: it may still be mined, and the
    resend guard must find it. An epoch that could not even be built is kept as a
    pending row without a root (its reason and back-off on it) and built again when
    next tried, so a fault in one entry is logged at a slowing pace, not every tick."""
    with db.write() as s:
        pending = s.scalars(select(ChainEpoch).where(ChainEpoch.status == "pending")
                            .order_by(ChainEpoch.id)).first()
        if pending is not None:
            if not force and pending.retry_at is not None and now < pending.retry_at:
                return None
            head = journal.head(s)
            refused = bool(pending.error and "reverted" in pending.error
                           and head.seq > pending.head_seq)
            if (refused or not pending.root) and not _rebuild(s, pending, chain, head, now):
                return None
        else:
            last = s.scalars(select(ChainEpoch).order_by(ChainEpoch.id.desc())).first()
            head = journal.head(s)
            due = last is None or now - last.created_at >= chain.dep.epoch_interval
            # A revoked epoch stands for nothing: the head is committed again, moved or not.
            same = last is not None and last.head_seq == head.seq and last.revoked_at is None
            if not (force or due) or head.seq == 0 or same:
                return None
            pending = ChainEpoch(status="pending", created_at=now, attempts=0)
            built = _rebuild(s, pending, chain, head, now)
            s.add(pending)
            s.flush()
            if not built:
                return None
        pid, head_seq, head_hash, root, total = (pending.id, pending.head_seq,
                                                 pending.head_hash, pending.root, pending.total)
    st = chain.settlement.functions
    block = None
    tx_hash = None
    try:
        found = _find_epoch(chain, head_seq, head_hash, root)
        if found is None:
            receipt = chain.send(chain.settler, st.commit(head_seq, bytes.fromhex(head_hash),
                                                          bytes.fromhex(root[2:]), total))
            (ev,) = chain.logs(chain.settlement, "EpochCommitted", receipt)
            found = int(ev.args.epoch)
            block = int(receipt["blockNumber"])
            tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
    except Exception as exc:
        why = exc.message if isinstance(exc, ChainError) else f"{type(exc).__name__}: {exc}"
        _failed(db, chain, pid, now, why)
        raise
    with db.write() as s:
        row = s.get(ChainEpoch, pid)
        # Still the commitment sent: another leader (a failover) may have made the row
        # again since; its own commit records that one.
        if row is not None and row.status == "pending" and (row.head_seq, row.root) == (
                head_seq, root):
            row.status, row.epoch, row.posted_at = "posted", found, now
            row.block, row.tx_hash, row.retry_at = block, tx_hash, None
    return found


def _build(s: Session, e: ChainEpoch, chain: Chain, head: Any) -> None:
    """``e`` made the commitment of the journal at ``head``."""
    tree = merkle.Tree(chain.dep.settlement, leaves_at(s, head.seq))
    e.head_seq, e.head_hash, e.root = head.seq, head.hash, "0x" + tree.root.hex()
    e.total, e.leaves = tree.total, {str(a): v for a, v in tree.amounts.items()}
    e.addresses = len(tree.amounts)


def _rebuild(s: Session, e: ChainEpoch, chain: Chain, head: Any, now: float) -> bool:
    """``_build``; if that fails, ``e`` is left without a root, carrying the reason and
    when to try again, and False is returned (the caller commits the row as it is)."""
    try:
        _build(s, e, chain, head)
        return True
    except Exception as exc:
        log.exception("building the epoch of journal head %d failed", head.seq)
        e.head_seq, e.head_hash, e.root, e.total, e.leaves = head.seq, head.hash, "", 0, {}
        e.addresses = 0
        _backoff(e, chain, now, f"building the epoch failed: {type(exc).__name__}: {exc}")
        return False


def _failed(db: Database, chain: Chain, pid: int, now: float, why: str) -> None:
    """Count a failed commit of epoch row ``pid`` and set when to try it again."""
    with db.write() as s:
        row = s.get(ChainEpoch, pid)
        if row is None or row.status != "pending":
            return
        _backoff(row, chain, now, why)


def _backoff(row: ChainEpoch, chain: Chain, now: float, why: str) -> None:
    row.attempts = (row.attempts or 0) + 1
    row.error = why[:500]
    wait = min(EPOCH_BACKOFF_MAX,
               max(chain.dep.epoch_interval, 1.0) * 2.0 ** min(row.attempts - 1, 30))
    row.retry_at = now + wait
    log.warning("committing the epoch of journal head %d failed (%d time(s)): %s; "
                "next try in %.0f s", row.head_seq, row.attempts, why, wait)


def _find_epoch(chain: Chain, head_seq: int, head_hash: str, root: str) -> int | None:
    """The number of the latest epoch on chain if it is this commitment and stands (a
    resend guard: a revoked one is committed again)."""
    n = int(chain.settlement.functions.epoch_count().call())
    if n == 0:
        return None
    e = chain.settlement.functions.epochs(n).call()
    if int(e[0]) == head_seq and bytes(e[1]).hex() == head_hash and \
            "0x" + bytes(e[2]).hex() == root and not bool(e[5]):
        return n
    return None


REVOCABLE_SLACK = 600.0  # seconds past its challenge delay an epoch is still looked at
# (the chain's clock and the coordinator's differ a little)
WATCHED = 8  # posted epochs asked about a tick, the newest first


def watch_revocation(db: Database, chain: Chain, now: float) -> int | None:
    """Mark the posted epochs the guardian revoked on chain; the latest of them, if any.
    Those that can still be revoked (within their challenge delay) are asked about, the
    newest ``WATCHED`` at most: a call each a tick. A revoked epoch pays nothing, so its
    proofs are no longer served (``latest_epoch`` passes over it) and ``commit_epoch``
    commits the head again. Asked about the latest alone, a revoked one before it (seen
    after it) was served again once the latest was marked."""
    since = now - chain.dep.challenge_delay - REVOCABLE_SLACK
    with db.read() as s:
        rows = [(r.id, int(r.epoch or 0), r.head_seq) for r in s.scalars(
            select(ChainEpoch).where(ChainEpoch.status == "posted",
                                     ChainEpoch.revoked_at.is_(None),
                                     ChainEpoch.epoch.is_not(None),
                                     ChainEpoch.posted_at >= since)
            .order_by(ChainEpoch.epoch.desc()).limit(WATCHED))]
    revoked = [(pid, n, head) for pid, n, head in rows
               if bool(chain.settlement.functions.epochs(n).call()[5])]
    if not revoked:
        return None
    with db.write() as s:
        for pid, n, head in revoked:
            row = s.get(ChainEpoch, pid)
            if row is not None and row.revoked_at is None:
                row.revoked_at = now
                log.warning("the guardian revoked epoch %d (journal head %d): it pays "
                            "nothing; the head is committed again", n, head)
    return max(n for _, n, _ in revoked)


def tick(db: Database, chain: Chain, post: Post, now: float) -> dict[str, Any]:
    """One round: each step on its own, so that one that keeps failing (a node that
    refuses a log range, an epoch the contract reverts) does not stop the others; the
    first failure is raised after every step has run, for the loop to log."""
    done: dict[str, Any] = {}
    failed: Exception | None = None
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("enqueued", lambda: scan_journal(db, now)),
        ("deposits", lambda: watch_deposits(db, chain, post, now)),
        ("sent", lambda: send_outbox(db, chain, now)),
        ("revoked", lambda: watch_revocation(db, chain, now)),
        ("epoch", lambda: commit_epoch(db, chain, now))]
    for name, step in steps:
        try:
            done[name] = step()
        except Exception as exc:
            log.exception("chain tick: %s failed; the other steps went on", name)
            failed = failed or exc
    if failed is not None:
        raise failed
    return done


# --- reads for the API ------------------------------------------------------------------------

def reserve(s: Session) -> int:
    """Tokens the settlement contract holds for DeAI accounts, by the journal's account:
    credited deposits less every withdrawal (claimed on chain or not)."""
    deposited = s.scalar(select(func.coalesce(func.sum(ChainDeposit.amount), 0))) or 0
    return int(deposited) - withdrawn(s)[1]


def withdrawn(s: Session) -> tuple[int, int]:
    """How many withdrawals the journal holds and their total, summed by the database."""
    amount = cast(JournalEntry.body["amount"].as_string(), BigInteger)  # 64 bits: µ amounts
    n, total = s.execute(select(func.count(), func.coalesce(func.sum(amount), 0)).where(
        JournalEntry.kind == "withdrawal")).one()
    return int(n), int(total)


def latest_epoch(s: Session) -> ChainEpoch | None:
    """The latest posted epoch not seen revoked: the one whose proofs are served."""
    return s.scalars(select(ChainEpoch).where(ChainEpoch.status == "posted",
                                              ChainEpoch.revoked_at.is_(None))
                     .order_by(ChainEpoch.epoch.desc())).first()


# --- wiring -------------------------------------------------------------------------------------

def deployment_from_settings(settings: Any) -> Deployment | None:
    """The chain this coordinator settles on: ``settings.chain_deployment`` (a path) or
    ``$DEAI_CHAIN``; ``settings.chain_rpc`` overrides the file's RPC URL. None: no chain."""
    path = getattr(settings, "chain_deployment", "") or os.environ.get(CHAIN_ENV, "")
    if not path:
        return None
    dep = Deployment.load(Path(path))
    rpc = getattr(settings, "chain_rpc", "")
    return replace(dep, rpc=rpc) if rpc else dep


def from_settings(settings: Any, clock: Callable[[], float] = time.time) -> list[ChainRail]:
    """The rails to register with the settlement port: one ChainRail when a chain is set."""
    return [ChainRail(clock)] if deployment_from_settings(settings) is not None else []


async def run(db: Database, chain: Chain, post: Post, clock: Callable[[], float],
              is_leader: Callable[[], bool] = lambda: True, period: float = 1.0) -> None:
    """The background loop: one ``tick`` per period, in a thread, on the leader only."""
    while True:
        try:
            if is_leader():
                await asyncio.to_thread(tick, db, chain, post, clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("chain tick failed; retrying")
        await asyncio.sleep(period)
