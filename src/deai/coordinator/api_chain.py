"""``/api/chain``: the chain rail's public face, and its wiring into the app.

``install(app)`` always adds the routes. When a chain is configured
(``deai.chain.rail.deployment_from_settings``: ``$DEAI_CHAIN`` names a
deployment file) it also registers the ``ChainRail`` with the coordinator's
settlement port and runs the rail's loop (deposits, outbox, epochs) for as long
as the app runs, on the leader only. Without a chain, nothing else changes and
``GET /api/chain`` answers ``{"enabled": false}``.

Routes:
    GET  /api/chain                   deployment, latest epochs, deposits, withdrawals,
                                      reserve, outbox, stake on chain vs the journal
    GET  /api/chain/proof/{address}   the latest epoch's Merkle proof for an address
    POST /api/chain/withdraw          (signed) {amount, address}: move money out of the
                                      journal to an address, claimable after an epoch
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, defer
from starlette.concurrency import run_in_threadpool

from deai.chain import books, merkle, rail
from deai.chain.adapter import Chain
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.public_reads import Shared, shared_read
from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core.errors import Conflict, InvalidInput, NotFound
from deai.store import journal
from deai.store.models import Balance, ChainDeposit, ChainEpoch, ChainOutbox, JournalEntry

router = APIRouter(prefix="/api/chain")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]
RECENT = 20
STAKES_SHOWN = 50  # providers whose stake the chain page compares with the vault's


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: StrictInt = Field(gt=0, le=2**63 - 1)
    address: StrictStr

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not books.is_address(v):  # the whole string: a trailing newline froze epochs
            raise ValueError("an EVM address: 0x and 40 hex digits")
        return v


def chain_of(request: Request) -> Chain:
    chain: Chain | None = getattr(request.app.state, "chain", None)
    if chain is None:
        raise NotFound("this coordinator settles on no chain", field="chain")
    return chain


def _poster(c: Coordinator) -> rail.Post:
    port = getattr(c, "settlement", None)
    if port is not None:
        return port.post  # type: ignore[no-any-return]
    return lambda s, draft: journal.append(s, draft, c.clock)


def install(app: FastAPI, period: float = 1.0) -> None:
    app.include_router(router)
    c: Coordinator = app.state.coordinator
    dep = rail.deployment_from_settings(c.settings)
    app.state.chain = None
    if dep is None:
        return
    chain = Chain.connect(dep)
    app.state.chain = chain
    port = getattr(c, "settlement", None)
    if port is not None and not any(r.name == "chain" for r in port.rails):
        port.add_rail(rail.ChainRail(c.now))
    leader = getattr(app.state, "leader", None)
    is_leader: Callable[[], bool] = (lambda: bool(leader.is_leader)) if leader is not None \
        else (lambda: True)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            task = asyncio.create_task(rail.run(c.db, chain, _poster(c), c.now, is_leader,
                                                period))
            try:
                yield state
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    app.router.lifespan_context = lifespan


# --- reads ------------------------------------------------------------------------------------

def _epoch_out(e: ChainEpoch, delay: int) -> dict[str, Any]:
    return {"epoch": e.epoch, "status": "revoked" if e.revoked_at is not None else e.status,
            "revoked_at": e.revoked_at, "head_seq": e.head_seq,
            "head_hash": e.head_hash, "root": e.root, "total": e.total,
            "addresses": e.addresses if e.addresses is not None else len(e.leaves),
            "block": e.block, "tx": e.tx_hash,
            "posted_at": e.posted_at,
            "matures_at": e.posted_at + delay if e.posted_at is not None else None,
            "attempts": e.attempts, "error": e.error, "retry_at": e.retry_at}


def _recent_withdrawals(s: Session) -> list[JournalEntry]:
    return list(s.scalars(select(JournalEntry).where(JournalEntry.kind == "withdrawal")
                          .order_by(JournalEntry.seq.desc()).limit(RECENT)))


def _summary(c: Coordinator, chain: Chain) -> dict[str, Any]:
    delay = chain.dep.challenge_delay
    with c.db.read() as s:
        epochs = s.scalars(select(ChainEpoch).options(defer(ChainEpoch.leaves))
                           .order_by(ChainEpoch.id.desc()).limit(RECENT)).all()
        deposits = s.scalars(select(ChainDeposit).order_by(ChainDeposit.id.desc())
                             .limit(RECENT)).all()
        dep_total = s.scalar(select(func.coalesce(func.sum(ChainDeposit.amount), 0))) or 0
        dep_count = s.scalar(select(func.count(ChainDeposit.id))) or 0
        wds = _recent_withdrawals(s)
        wd_count, wd_total = rail.withdrawn(s)
        outbox = dict(s.execute(select(ChainOutbox.status, func.count(ChainOutbox.id))
                                .group_by(ChainOutbox.status)).all())
        reserve = rail.reserve(s)
        # The largest stakes, to compare with the vault's (a call to the node each); the
        # whole comparison is the audit's (``deai ledger audit --chain``).
        stake = {b.account.removeprefix("stake:"): int(b.amount) for b in
                 s.scalars(select(Balance).where(Balance.account.like("stake:%"))
                           .order_by(Balance.amount.desc(), Balance.account)
                           .limit(STAKES_SHOWN))}
        out: dict[str, Any] = {
            "enabled": True, "deployment": chain.dep.public(),
            "epochs": [_epoch_out(e, delay) for e in epochs],
            "latest_epoch": next((_epoch_out(e, delay) for e in epochs
                                  if e.status == "posted" and e.revoked_at is None), None),
            "deposits": {"count": int(dep_count), "total": int(dep_total),
                         "recent": [{"account": d.account, "amount": d.amount, "tx": d.tx_hash,
                                     "log_index": d.log_index, "block": d.block,
                                     "journal_seq": d.journal_seq} for d in deposits]},
            "withdrawals": {"count": wd_count, "total": wd_total,
                            "recent": [{"account": w.body["account"], "amount": w.body["amount"],
                                        "address": w.body["address"], "journal_seq": w.seq}
                                       for w in wds]},
            "reserve": reserve,
            "outbox": {k: int(v) for k, v in outbox.items()},
        }
    try:  # what the chain itself says; the page still shows the rest if the node is away
        st, v = chain.settlement.functions, chain.vault.functions
        out["chain"] = {
            "block": chain.block_number(),
            "deposited": int(st.total_deposited().call()),
            "withdrawn": int(st.total_withdrawn().call()),
            "held": chain.token_balance(chain.dep.settlement),
            "epoch_count": int(st.epoch_count().call()),
            "staked": chain.token_balance(chain.dep.vault),
            "slashed": int(v.total_slashed().call()),
        }
        out["stake"] = [{"provider": p, "journal": amount,
                         "chain": int(v.stake(bytes.fromhex(p)).call())}
                        for p, amount in sorted(stake.items())]
    except Exception as exc:  # noqa: BLE001 - any node failure is shown, not raised
        out["chain_error"] = str(exc)[:200]
    return out


SUMMARY: Shared[dict[str, Any]] = Shared(ttl=1.0, keys=1)


@router.get("")
async def chain_summary(request: Request, c: C) -> dict[str, Any]:
    """Anonymous, and it costs several reads of the chain (a stake each for up to
    ``STAKES_SHOWN`` providers, each waiting on a node that may be slow) and sums over
    deposits and withdrawals: computed once for every caller asking meanwhile, kept a
    second, under a public read's slot (``public_reads.shared_read``)."""
    chain: Chain | None = getattr(request.app.state, "chain", None)
    if chain is None:
        return {"enabled": False}
    return await shared_read(request, SUMMARY, c, "summary", lambda: _summary(c, chain),
                             lambda: None)


_TREES: dict[tuple[str, int | None], merkle.Tree] = {}  # the latest epochs' trees, built once


def _tree(settlement: str, epoch: int | None, leaves: dict[str, int]) -> merkle.Tree:
    """The epoch's Merkle tree, built once per process: every address's proof request
    built the whole tree again (an anonymous request, O(addresses) hashes each)."""
    key = (settlement, epoch)
    tree = _TREES.get(key)
    if tree is None:
        tree = merkle.Tree(settlement, leaves)
        if len(_TREES) >= 4:
            _TREES.pop(next(iter(_TREES)))
        _TREES[key] = tree
    return tree


@router.get("/proof/{address}")
def proof(address: str, request: Request, c: C) -> dict[str, Any]:
    chain = chain_of(request)
    if not books.is_address(address):
        raise InvalidInput("address: an EVM address, 0x and 40 hex digits", field="address")
    with c.db.read() as s:
        e = rail.latest_epoch(s)
        if e is None:
            raise NotFound("no epoch has been committed yet", field="epoch")
        epoch, leaves, root, head_seq, posted_at = (e.epoch, dict(e.leaves), e.root, e.head_seq,
                                                    e.posted_at)
    tree = _tree(chain.dep.settlement, epoch, leaves)
    key = tree.address(address)
    if key is None:
        raise NotFound(f"epoch {epoch} holds nothing for {address}", field="address")
    return {"epoch": epoch, "address": key, "cumulative": tree.amounts[key],
            "proof": ["0x" + p.hex() for p in tree.proof(key)], "root": root,
            "head_seq": head_seq, "matures_at": (posted_at or 0) + chain.dep.challenge_delay}


# --- withdrawals ----------------------------------------------------------------------------

def withdraw(c: Coordinator, me: str, body: WithdrawIn) -> dict[str, Any]:
    if body.amount < c.settings.min_withdrawal:
        raise InvalidInput(f"amount: at least {c.settings.min_withdrawal} µ a withdrawal",
                           field="amount", minimum=c.settings.min_withdrawal)
    with c.db.write() as s:
        # Withdrawals one at a time (PostgreSQL: an advisory lock; SQLite's write lock
        # already is one): two at once each checked the reserve before the other's
        # entry, and together took more than it holds. Only withdrawals lower it, so the
        # journal's head (every payment waits on it) is not held while it is summed.
        if not c.db.is_sqlite:
            s.execute(text("SELECT pg_advisory_xact_lock(hashtext('deai-withdraw'))"))
        held = rail.reserve(s)
        if body.amount > held:
            raise Conflict(f"amount: the settlement contract holds {held} µ for DeAI "
                           f"accounts; {body.amount} µ cannot be withdrawn", field="amount",
                           reserve=held)
        entry = _poster(c)(s, ledger.withdrawal(me, body.amount, body.address))
        c.emit(s, "withdrawal", me, amount=body.amount, address=body.address)
        left = journal.balance(s, ledger.acct(me))
    return {"account": me, "amount": body.amount, "address": body.address,
            "journal_seq": entry.seq, "available": left}


@router.post("/withdraw")
async def withdraw_route(body: WithdrawIn, request: Request, c: C,
                         me: Signer) -> dict[str, Any]:
    chain_of(request)
    return await run_in_threadpool(withdraw, c, me, body)
