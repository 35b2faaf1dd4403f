"""What the journal says the chain should hold: pure functions of journal entries.

The coordinator's rail uses them to decide what to send, and ``deai ledger audit
--chain`` uses the same functions on a journal it fetched itself, so both sides
agree on the rules:

- every posting on a ``stake:<provider>`` account is mirrored in the stake vault:
  ``bond`` entries as bonds, ``unbond`` entries as unbond requests, any other
  entry that takes stake (a slash, a lease's downtime penalty) as a slash whose
  evidence hash is ``evidence_hash(entry.body)``;
- ``withdrawal`` entries add up, per address, to the cumulative amounts whose
  Merkle root each epoch commits (``withdrawable``);
- ``deposit`` entries name the (tx hash, log index) of the chain event they credit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from eth_utils.address import to_checksum_address

from deai.core.ledger import Entry


def evidence_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the entry's body in the journal's canonical JSON (0x-prefixed hex)."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "0x" + hashlib.sha256(payload.encode()).hexdigest()


def stake_moves(entry: Entry) -> dict[str, int]:
    moves: dict[str, int] = {}
    for account, delta in entry.postings:
        if account.startswith("stake:") and delta:
            pid = account.removeprefix("stake:")
            moves[pid] = moves.get(pid, 0) + delta
    return {p: d for p, d in moves.items() if d}


def mirror_ops(entry: Entry) -> list[tuple[str, dict[str, Any]]]:
    """The vault calls that mirror one journal entry: (op, args), at most one per op."""
    ops: dict[str, dict[str, Any]] = {}
    for pid, delta in sorted(stake_moves(entry).items()):
        if delta > 0:
            op, args = "bond", {"provider": pid, "amount": delta, "ref": "0x" + entry.hash}
        elif entry.kind == "unbond":
            op, args = "unbond", {"provider": pid, "amount": -delta, "ref": "0x" + entry.hash}
        else:
            op, args = "slash", {"provider": pid, "amount": -delta,
                                 "evidence": evidence_hash(entry.body), "kind": entry.kind}
        if op in ops:  # one entry moving several providers' stake the same way
            raise ValueError(f"entry {entry.seq} moves stake of several providers")
        ops[op] = args
    return list(ops.items())


def withdrawable(entries: Iterable[Entry], upto_seq: int | None = None) -> dict[str, int]:
    """Cumulative amounts sent to each address by ``withdrawal`` entries up to ``upto_seq``."""
    out: dict[str, int] = {}
    for e in entries:
        if upto_seq is not None and e.seq > upto_seq:
            break
        if e.kind == "withdrawal":
            addr = to_checksum_address(str(e.body["address"]))
            out[addr] = out.get(addr, 0) + int(e.body["amount"])
    return out


def deposits(entries: Iterable[Entry]) -> list[tuple[tuple[str, int], str, int, int]]:
    """``((tx hash, log index), account, amount, seq)`` for every ``deposit`` entry."""
    return [((str(e.body["tx"]).lower(), int(e.body["log_index"])), str(e.body["account"]),
             int(e.body["amount"]), e.seq) for e in entries if e.kind == "deposit"]
