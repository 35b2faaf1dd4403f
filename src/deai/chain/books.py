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
