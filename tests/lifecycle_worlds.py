"""Two worlds that apply the lifecycle's effects, driven by one history.

``MachineWorld`` is core's in-memory ``Machine`` (what the simulator reads its
rules from); ``DbWorld`` is the coordinator's own applier (``effects.apply``)
against a real SQLite database through the settlement port. ``drive`` plays a
history of outcomes (drawn by hypothesis) in either world, asking
``core.lifecycle.decide`` for the effects of each: the same history must leave
both worlds with the same statuses and the same money.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from deai.coordinator import admission, effects
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from deai.core.lifecycle.effects import Effect
from deai.core.lifecycle.machine import Machine
from deai.core.money import cost_for_units
from deai.core.verify.params import VerifyParams
from deai.core.verify.policy import Fault
from deai.store import migrate
from deai.store.models import Assignment, Job, Provider, Task

STAKE = 10_000_000
UNITS = 1_000
MAX_PRICE = 2_000
ESCROW = cost_for_units(UNITS, MAX_PRICE)
FUNDS = 100_000_000
TREASURY = 10**12
FEE_BPS = 500
PARAMS = VerifyParams()


def price(i: int) -> int:
    return 900 + 10 * i


@dataclass
class Seat:
    id: str
    provider: str
    role: Role


class World(Protocol):
    seats: list[Seat]

    def ctx(self) -> D.TaskCtx: ...
    def need(self) -> Role | None: ...
    def status(self, seat: Seat) -> AssignmentStatus: ...
    def seat(self, role: Role) -> Seat: ...
    def apply(self, todo: list[Effect]) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


Draw = Callable[[list[Any]], Any]


def drive(w: World, draw: Draw, steps: int = 12) -> None:
    """Play up to ``steps`` outcomes in ``w``, each chosen by ``draw`` among those possible."""
    for _ in range(steps):
        ctx = w.ctx()
        if ctx.task_status == TaskStatus.DONE:  # provisional: it may be audited
            moves = [("result", s) for s in w.seats if s.role == Role.AUDIT
                     and w.status(s) == AssignmentStatus.LEASED]
            if w.need() == Role.AUDIT and not moves and len(w.seats) < 9:
                moves.append(("place", Role.AUDIT))
            if not moves:
                return
            kind, arg = draw(moves)
            w.apply(_decide(w, ctx, kind, arg, draw))
            continue
        if not ctx.job_active:
            return
        moves = [("cancel", None), ("deadline", None)]
        if ctx.task_status == TaskStatus.QUEUED and len(w.seats) < 8:
            moves.append(("place", Role.PRIMARY))
        need = w.need()
        if need is not None and len(w.seats) < 8:
            moves += [("place", need), ("abandon", need)]
        for s in w.seats:
            if w.status(s) == AssignmentStatus.LEASED:
                moves += [("result", s), ("rejected", s), ("failed", s), ("expired", s)]
        if len(moves) == 2 and not ctx.canary:
            return
        kind, arg = draw(moves)
        w.apply(_decide(w, ctx, kind, arg, draw))


def _subject(w: World) -> Seat | None:
    return next((s for s in w.seats if s.role in (Role.PRIMARY, Role.CANARY)
                 and w.status(s) == AssignmentStatus.SUBMITTED), None)


def _decide(w: World, ctx: D.TaskCtx, kind: str, arg: Any, draw: Draw) -> list[Effect]:
    if kind == "cancel":
        return D.on_cancel(ctx.job_status)
    if kind == "deadline":
        return D.on_deadline(ctx.job_status)
    if kind == "place":
        if arg in (Role.PRIMARY, Role.AUDIT) or _subject(w) is not None:
            w.seat(arg)
        return D.on_placed(ctx, arg)
    if kind == "abandon":
        subject = _subject(w)
        submitted = [s for s in w.seats if w.status(s) == AssignmentStatus.SUBMITTED]
        return D.on_check_abandoned(ctx, arg, _party(subject) if subject else None,
                                    [_party(s) for s in submitted], required=draw([True, False]),
                                    accept_unverified=draw([False, True]),
                                    served=draw([False, True]))
    seat: Seat = arg
    if kind == "rejected":
        return D.on_rejected(ctx, _party(seat), "units: wrong")
    if kind == "failed":
        return D.on_failed(ctx, _party(seat), "it broke")
    if kind == "expired":
        return D.on_expired(ctx, _party(seat), "lease deadline passed")
    return _result(w, ctx, seat, draw)


def _result(w: World, ctx: D.TaskCtx, seat: Seat, draw: Draw) -> list[Effect]:
    if seat.role == Role.PRIMARY:
        return D.on_primary(ctx, _party(seat), replicate=draw([True, False]), rho=1.0,
                            audit=draw([False, True]))
    if seat.role == Role.AUDIT:
        stood = [s for s in w.seats if w.status(s) == AssignmentStatus.ACCEPTED
                 and s.role in (Role.PRIMARY, Role.CANARY, Role.REPLICA)]
        return D.on_audit(ctx, _party(seat), [_party(s) for s in stood],
                          match=draw([True, False]), evidence={})
    if seat.role == Role.CANARY:
        return D.on_canary(ctx, _party(seat), match=draw([True, False]), evidence={})
    subject = _subject(w)
    if subject is None:
        return D.on_orphan_check(_party(seat))
    if seat.role == Role.REPLICA and draw([False, True]):  # a forced error was planted
        return D.on_forced(ctx, _party(seat), noticed=draw([True, False]), evidence={})
    if seat.role == Role.REPLICA:
        return D.on_replica(ctx, _party(seat), _party(subject), match=draw([True, False]),
                            evidence={}, audit=draw([False, True]))
    checker = next((s for s in w.seats if s.role == Role.REPLICA
                    and w.status(s) == AssignmentStatus.SUBMITTED), None)
    fault = draw(list(Fault))
    return D.on_verdict(ctx, fault, _party(seat), _party(subject),
                        _party(checker) if checker else None, reexec=draw([True, False]),
                        evidence={"fault": fault.value})


def _party(s: Seat) -> D.Party:
    return D.Party(s.id, s.provider, s.role)


# --- the simulator's world --------------------------------------------------------------------

class MachineWorld:
    def __init__(self, canary: bool = False) -> None:
        self.m = Machine(escrow=0 if canary else ESCROW, fee_bps=FEE_BPS, params=PARAMS,
                         stakes={f"p{i}": STAKE for i in range(9)}, canary=canary,
                         treasury=TREASURY)
        self.seats: list[Seat] = []
        if canary:
            self.m.task_status = TaskStatus.QUEUED
            self.seat(Role.CANARY)
            self.m.apply(D.on_placed(self.ctx(), Role.PRIMARY))

    def ctx(self) -> D.TaskCtx:
        return self.m.ctx()

    def need(self) -> Role | None:
        return self.m.need

    def status(self, seat: Seat) -> AssignmentStatus:
        return self.m.seats[seat.id].status

    def seat(self, role: Role) -> Seat:
        i = len(self.seats)
        s = Seat(f"a{i}", f"p{i}", role)
        self.seats.append(s)
        self.m.seat(s.id, s.provider, role, cost_for_units(UNITS, price(i)))
        return s

    def apply(self, todo: list[Effect]) -> None:
        self.m.apply(todo)

    def snapshot(self) -> dict[str, Any]:
        money = {k: v for k, v in self.m.money.items() if v}
        money["fee"] = money.get("fee", 0) - TREASURY
        for i in range(9):
            money[f"stake:p{i}"] = money.get(f"stake:p{i}", 0) - STAKE
        return {"job": self.m.job_status.value, "task": self.m.task_status.value,
                "need": self.m.need, "seats": [self.status(s).value for s in self.seats],
                "money": {k: v for k, v in money.items() if v}}


# --- the coordinator's world ------------------------------------------------------------------

def _output() -> bytes:
    row = {"custom_id": "r0", "embeddings": [[0.5] * 384], "prompt_tokens": 4}
    return json.dumps(row).encode() + b"\n"


class DbWorld:
    """The coordinator's applier on a real database (SQLite in ``root`` unless
    ``database_url`` names another), one job of one task."""

    def __init__(self, root: Path, canary: bool = False, database_url: str | None = None
                 ) -> None:
        settings = Settings(data_dir=root, devnet=True, fee_bps=FEE_BPS, verify=PARAMS,
                            **({"database_url": database_url} if database_url else {}))
        self.c = Coordinator(settings, clock=ManualClock())
        migrate.upgrade(self.c.db.engine)
        self.client = "c" * 64
        self.providers = [f"{i:x}" * 64 for i in range(1, 10)]
        self.seats: list[Seat] = []
        shard = self.c.blobs.put(b'{"custom_id": "r0", "input": ["hello"]}\n')
        self.out = self.c.blobs.put(_output())
        with self.c.db.write() as s:
            self.c.settlement.grant(s, TREASURY, "test")
            self.c.settlement.faucet(s, self.client, FUNDS)
            for pid in self.providers:
                s.add(Provider(id=pid, name=pid[:4], hardware={}, benchmark={}, registered_at=0.0,
                               last_seen=0.0))
                s.flush()
                self.c.settlement.faucet(s, pid, STAKE)
                self.c.settlement.bond(s, pid, STAKE)
            spec = {"kind": "embeddings", "model": "all-MiniLM-L6-v2", "max_price": MAX_PRICE}
            job, (task,) = admission.create(
                self.c, s, owner=admission.NETWORK if canary else self.client,
                kind="embeddings", model="all-MiniLM-L6-v2", spec=spec, input_digest=shard,
                max_price=MAX_PRICE, shards=[admission.ShardIn(shard, 1, UNITS)],
                escrow=0 if canary else ESCROW, deadline=3600.0)
            self.job_id, self.task_id = job.id, task.id
        self.base = self._money()
        if canary:
            self.seat(Role.CANARY)
            self.apply(D.on_placed(self.ctx(), Role.PRIMARY))

    def ctx(self) -> D.TaskCtx:
        with self.c.db.read() as s:
            job, task = s.get(Job, self.job_id), s.get(Task, self.task_id)
            assert job is not None and task is not None
            return effects.ctx(self.c, job, task)

    def need(self) -> Role | None:
        with self.c.db.read() as s:
            task = s.get(Task, self.task_id)
            assert task is not None
            return Role(task.pending_role) if task.pending_role else None

    def status(self, seat: Seat) -> AssignmentStatus:
        with self.c.db.read() as s:
            a = s.get(Assignment, seat.id)
            assert a is not None
            return AssignmentStatus(a.status)

    def seat(self, role: Role) -> Seat:
        i = len(self.seats)
        seat = Seat(f"asg_{i}", self.providers[i], role)
        with self.c.db.write() as s:
            s.add(Assignment(id=seat.id, task_id=self.task_id, job_id=self.job_id,
                             provider_id=seat.provider, role=role,
                             status=AssignmentStatus.LEASED, price=price(i), leased_at=0.0,
                             lease_deadline=10**9, delivered=True, units=UNITS,
                             output_digest=self.out))
        self.seats.append(seat)
        return seat

    def apply(self, todo: list[Effect]) -> None:
        with self.c.db.write() as s:
            job, task = s.get(Job, self.job_id), s.get(Task, self.task_id)
            assert job is not None and task is not None
            effects.apply(self.c, s, job, task, todo)

    def _money(self) -> dict[str, int]:
        with self.c.db.read() as s:
            accounts = [ledger.acct(self.client), ledger.escrow(self.job_id), ledger.FEE]
            for pid in self.providers:
                accounts += [ledger.pending(pid), ledger.stake(pid), ledger.acct(pid)]
            return {a: self.c.settlement.balance(s, a) for a in accounts}

    def snapshot(self) -> dict[str, Any]:
        now, base = self._money(), self.base
        names = {self.client: "client"} | {pid: f"p{i}" for i, pid in enumerate(self.providers)}
        money: dict[str, int] = {}
        for account, value in now.items():
            delta = value - base[account]
            if account == ledger.escrow(self.job_id):
                delta = value  # the machine's escrow starts full; compare what is left
                name = "escrow"
            elif account == ledger.FEE:
                name = "fee"
            else:
                prefix, _, who = account.partition(":")
                name = names[who] if prefix == "acct" and who == self.client else (
                    f"{prefix}:{names[who]}")
            if delta:
                money[name] = delta
        with self.c.db.read() as s:
            job, task = s.get(Job, self.job_id), s.get(Task, self.task_id)
            assert job is not None and task is not None
            seats = [s.scalars(select(Assignment.status).where(Assignment.id == x.id)).one()
                     for x in self.seats]
            return {"job": job.status, "task": task.status,
                    "need": Role(task.pending_role) if task.pending_role else None,
                    "seats": seats, "money": money}
