"""The journal's replay, one entry at a time and fast: the checks of ``ledger.audit``.

``Replay`` carries what ``ledger.audit`` keeps while it walks the journal (the
sequence and hash reached, the replayed balances, the problems found) so that a
caller can feed entries as they arrive (a client streaming pages, the server
replaying only what was appended since its last call) and read the state at any
entry. Every check is the one ``ledger.audit`` makes, with the same messages:
the sequence has no gap, every entry carries its predecessor's hash, every
hash recomputes, every entry balances and moves what its body says
(``ledger.postings_problem``), no account but the mint goes below zero after an
entry. ``finish`` adds the conservation of supply.

The hash is ``ledger.entry_hash``'s canonical JSON made by the standard
library's C encoder built once (``entry_hash`` builds one per call, which costs
more than the hashing); at import it is checked byte for byte against
``ledger.entry_hash`` on awkward probes and, should they ever differ,
``ledger.entry_hash`` itself is used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deai.core import ledger

HashFn = Callable[[int, str, int, str, Mapping[str, Any], Any], str]


def _fast_hash() -> HashFn:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return ledger.entry_hash
    enc = make(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii,
               None, ":", ",", True, False, True)
    sha = hashlib.sha256

    def entry_hash(seq: int, prev_hash: str, ts_ms: int, kind: str, body: Mapping[str, Any],
                   postings: Any) -> str:
        # A tuple encodes as a JSON list, postings' pairs included, as in entry_hash.
        return sha("".join(enc((seq, prev_hash, ts_ms, kind, body, postings), 0))
                   .encode()).hexdigest()

    probes: list[tuple[Any, ...]] = [
        (7, "ab" * 32, 123, "probe", {"z": [1, "é"], "a": {"b": None}}, (("x", -5), ("y", 5))),
        (1, ledger.GENESIS, 0, 'a"b\\', {"f": 0.1, "t": True, "q": "\x01\x7f\u2028\U0001f600",
                                          "big": 10**30, "l": (1, [2.5e300, -0.0])},
         [["acct:é", -(10**20)], ["mint", 10**20]]),
        (2, "", 5, "", {}, ()),
    ]
    try:
        if all(entry_hash(*p) == ledger.entry_hash(*p) for p in probes):
            return entry_hash
    except Exception:  # noqa: BLE001 - any disagreement means: use the reference
        pass
    return ledger.entry_hash


entry_hash: HashFn = _fast_hash()


class Replay:
    """``ledger.audit``'s walk, resumable: feed entries in order, read the state."""

    def __init__(self) -> None:
        self.seq = 0  # the last entry replayed
        self.head = ledger.GENESIS  # its hash
        self.entries = 0
        self.balances: dict[str, int] = {}
        self.problems: list[str] = []

    def fail(self, problem: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(problem)

    def feed(self, seq: int, prev_hash: str, ts_ms: int, kind: str, body: Mapping[str, Any],
             postings: Sequence[Any], hash_: str) -> None:
        """One entry, already of the right types (``ledger.Entry``'s fields)."""
        if seq != self.seq + 1:
            self.fail(f"entry {seq}: expected seq {self.seq + 1}")
        if prev_hash != self.head:
            self.fail(f"entry {seq}: prev_hash does not match entry {seq - 1}")
        if entry_hash(seq, prev_hash, ts_ms, kind, body, postings) != hash_:
            self.fail(f"entry {seq}: hash does not recompute")
        bal = self.balances
        total = 0
        for account, delta in postings:
            bal[account] = bal.get(account, 0) + delta
            total += delta
        if total != 0:
            self.fail(f"entry {seq}: postings do not balance")
        if kind in ledger.CANONICAL:
            mismatch = ledger.postings_problem(seq, kind, body, postings)
            if mismatch is not None:
                self.fail(mismatch)
        # An entry is atomic: judge balances after all its postings, as check_funds does.
        for account, _ in postings:
            if bal[account] < 0 and account != ledger.MINT:
                self._negative(seq, postings)
                break
        self.seq, self.head, self.entries = seq, hash_, self.entries + 1

    def _negative(self, seq: int, postings: Sequence[Any]) -> None:
        for account in dict.fromkeys(a for a, _ in postings):
            if account != ledger.MINT and self.balances[account] < 0:
                self.fail(f"entry {seq}: {account} went negative ({self.balances[account]})")

    def feed_entry(self, e: ledger.Entry) -> None:
        self.feed(e.seq, e.prev_hash, e.ts_ms, e.kind, e.body, e.postings, e.hash)

    def feed_dict(self, d: Mapping[str, Any]) -> None:
        """An entry as the journal endpoint serves it; of the right JSON types it is fed
        as it is, otherwise through ``ledger.Entry.from_dict``'s conversions."""
        seq, prev, ts, kind, body, hash_ = (d["seq"], d["prev_hash"], d["ts_ms"], d["kind"],
                                            d["body"], d["hash"])
        postings = d["postings"]
        if (type(seq) is int and type(ts) is int and type(prev) is str and type(kind) is str
                and type(hash_) is str and type(body) is dict and type(postings) is list
                and all(type(p) is list and len(p) == 2 and type(p[0]) is str
                        and type(p[1]) is int for p in postings)):
            self.feed(seq, prev, ts, kind, body, postings, hash_)
        else:
            self.feed_entry(ledger.Entry.from_dict(d))

    def finish(self) -> ledger.AuditReport:
        """The verdict so far, supply conservation included, as ``ledger.audit`` gives it."""
        rep = ledger.AuditReport(entries=self.entries, head=self.head,
                                 balances=self.balances)
        for p in self.problems:
            rep.fail(p)
        total = sum(self.balances.values())
        if total != 0:
            rep.fail(f"supply not conserved: balances sum to {total}")
        rep.supply = -self.balances.get(ledger.MINT, 0)
        rep.accounts = len(self.balances)
        return rep
