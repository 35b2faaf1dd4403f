"""What the journal says the chain should hold: pure functions of journal entries.

The coordinator's rail uses them to decide what to send, and ``deai ledger audit
--chain`` uses the same functions on a journal it fetched itself, so both sides
agree on the rules:

- every posting on a ``stake:<provider>`` account is mirrored in the stake vault:
  ``bond`` entries as bonds, ``unbond`` entries as unbond requests, any other
  entry that takes stake (a slash, a lease's downtime penalty) as a slash whose
  evidence hash is ``evidence_hash(entry.body)``;
- ``withdrawal`` entries add up, per address, to the cumulative amounts whose
  Merkle root each epoch commits (``withdrawable``); one whose address or amount
  is not valid (``unpayable``) is left out of every root, so it cannot stop the
  epochs of everyone else: its amount stays in the settlement contract, claimable
  by no one, and the audit reports it;
- ``deposit`` entries name the (tx hash, log index) of the chain event they credit.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from eth_utils.address import to_checksum_address

from deai.core.ledger import Entry

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")  # whole strings only: ``is_address``


def is_address(value: object) -> bool:
    """An EVM address, 0x and 40 hex digits, nothing before or after (not even a
    newline: ``re.match`` with ``$`` accepts one, and the checksum then refuses it)."""
    return isinstance(value, str) and ADDRESS.fullmatch(value) is not None


def evidence_hash(body: Mapping[str, Any], provider: str | None = None) -> str:
    """sha256 of the entry's body in the journal's canonical JSON (0x-prefixed hex).

    A slash entry names one provider; should an entry ever take several providers'
    stake, each one's hash also covers its id (``provider`` differs from the body's)."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if provider is not None and body.get("provider") != provider:
        payload += ":" + provider
    return "0x" + hashlib.sha256(payload.encode()).hexdigest()


def stake_moves(entry: Entry) -> dict[str, int]:
    moves: dict[str, int] = {}
    for account, delta in entry.postings:
        if account.startswith("stake:") and delta:
            pid = account.removeprefix("stake:")
            moves[pid] = moves.get(pid, 0) + delta
    return {p: d for p, d in moves.items() if d}


def mirror_ops(entry: Entry) -> list[tuple[str, dict[str, Any]]]:
    """The vault calls that mirror one journal entry: (op, args), one per provider moved."""
    ops: list[tuple[str, dict[str, Any]]] = []
    for pid, delta in sorted(stake_moves(entry).items()):
        if delta > 0:
            ops.append(("bond", {"provider": pid, "amount": delta, "ref": ref(entry, pid)}))
        elif entry.kind == "unbond":
            ops.append(("unbond", {"provider": pid, "amount": -delta, "ref": ref(entry, pid)}))
        else:
            ops.append(("slash", {"provider": pid, "amount": -delta, "kind": entry.kind,
                                  "evidence": evidence_hash(entry.body, pid)}))
    return ops


def ref(entry: Entry, provider: str) -> str:
    """The vault's once-only key for mirroring ``entry``'s move of ``provider``'s stake."""
    return "0x" + hashlib.sha256(f"{entry.hash}:{provider}".encode()).hexdigest()


def payable(entry: Entry) -> tuple[str, int] | None:
    """A ``withdrawal`` entry's (checksummed address, amount); None if either is not
    valid, so that no epoch can commit it."""
    address, amount = entry.body.get("address"), entry.body.get("amount")
    if not is_address(address) or type(amount) is not int or amount <= 0:
        return None
    return str(to_checksum_address(str(address))), amount


def withdrawable(entries: Iterable[Entry], upto_seq: int | None = None) -> dict[str, int]:
    """Cumulative amounts sent to each address by ``withdrawal`` entries up to ``upto_seq``
    (those ``payable`` refuses are left out: see ``unpayable``)."""
    out: dict[str, int] = {}
    for e in entries:
        if upto_seq is not None and e.seq > upto_seq:
            break
        if e.kind == "withdrawal":
            got = payable(e)
            if got is not None:
                out[got[0]] = out.get(got[0], 0) + got[1]
    return out


def unpayable(entries: Iterable[Entry]) -> list[str]:
    """A problem for each ``withdrawal`` entry no epoch can commit (its address or amount
    is not valid): the money left the journal, and nobody can claim it on chain."""
    return [f"entry {e.seq}: withdrawal of {e.body.get('amount')!r} µ to "
            f"{str(e.body.get('address'))[:60]!r}, not a valid amount and EVM address; "
            "no epoch commits it, so nobody can claim it"
            for e in entries if e.kind == "withdrawal" and payable(e) is None]


def deposits(entries: Iterable[Entry]) -> list[tuple[tuple[str, int], str, int, int]]:
    """``((tx hash, log index), account, amount, seq)`` for every ``deposit`` entry whose
    body names them (one that does not is for the audit to report: ``malformed_deposits``)."""
    out = []
    for e in entries:
        if e.kind == "deposit":
            got = _deposit(e)
            if got is not None:
                out.append(got)
    return out


def malformed_deposits(entries: Iterable[Entry]) -> list[int]:
    """The seqs of ``deposit`` entries whose body does not name a chain event."""
    return [e.seq for e in entries if e.kind == "deposit" and _deposit(e) is None]


def _deposit(e: Entry) -> tuple[tuple[str, int], str, int, int] | None:
    b = e.body
    tx, idx, account, amount = b.get("tx"), b.get("log_index"), b.get("account"), \
        b.get("amount")
    if not (isinstance(tx, str) and isinstance(account, str) and type(idx) is int
            and type(amount) is int):
        return None
    return (tx.lower(), idx), account, amount, e.seq
