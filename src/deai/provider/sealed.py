"""Running a sealed job's lease (``core.sealed``): unwrap, decrypt, run, compare, seal.

A shard envelope: unwrap the job key with this provider's identity (only a
party of ``sealed_for`` can), decrypt shard ``idx`` (the task id's index, bound
as associated data, so a shard moved to another task does not open), run it as
any shard, and return the output encrypted to the job key with its units.

A check payload (a replica, referee or audit of a sealed job): the coordinator
cannot compare ciphertexts, so the checker does. It re-runs the shard,
decrypts the claimed output (and a referee the first checker's), compares with
the kind's own comparator, checks that the claimed units are what the claimed
output shows, and returns its own output sealed with its verdict; the result
signature covers both.
"""

from __future__ import annotations

from collections.abc import Callable

from deai.client import sealed as crypto
from deai.client.keys import Identity
from deai.core import kinds, sealed, wire
from deai.core.errors import InvalidInput


def is_sealed(blob: bytes) -> bool:
    return sealed.is_envelope(blob) or sealed.is_check(blob)


def run(identity: Identity, a: wire.AssignmentOut, blob: bytes,
        fetch: Callable[[str], bytes], run_plain: Callable[[bytes], tuple[bytes, int]]
        ) -> tuple[bytes, int]:
    """The sealed output and its units for lease ``a`` whose input is ``blob``."""
    idx = sealed.task_index(a.task_id)
    check = sealed.parse_check(blob) if sealed.is_check(blob) else None
    env = sealed.parse_envelope(fetch(check.shard) if check else blob, "input")
    key = crypto.open_key(env.keys, identity)
    shard = crypto.open_shard(key, env, idx)
    output, units = run_plain(shard)
    if units > a.units:  # the client declared the units; the coordinator cannot count them
        raise crypto.SealError(f"the shard holds {units} units, its task declares {a.units}")
    verdict = _verdict(key, env.seal, idx, a, check, shard, output, fetch) if check else None
    return crypto.seal_output(key, env.seal, idx, output, units, verdict), units


def _open(key: bytes, seal: str, idx: int, digest: str,
          fetch: Callable[[str], bytes]) -> bytes | None:
    try:
        return crypto.open_output(key, sealed.parse_envelope(fetch(digest)), seal, idx)
    except (InvalidInput, crypto.SealError):
        return None


def _verdict(key: bytes, seal: str, idx: int, a: wire.AssignmentOut,
             check: sealed.CheckPayload, shard: bytes, mine: bytes,
             fetch: Callable[[str], bytes]) -> sealed.Verdict:
    kind = kinds.get(a.workload)
    spec = kind.parse_spec({k: v for k, v in check.spec.items()
                            if k not in ("sealed", "sealed_for")})
    claimed = _open(key, seal, idx, check.claimed, fetch)
    if claimed is None:
        return sealed.Verdict(False, None, 1.0, "the claimed output does not decrypt")
    cmp = kind.check(spec, shard, claimed, mine)
    subject = cmp.match
    detail = cmp.detail
    if subject:
        try:
            shown = kind.meter(spec, shard, claimed)
        except InvalidInput as exc:
            shown, detail = -1, exc.message
        if shown != check.claimed_units:
            subject, detail = False, f"claimed {check.claimed_units} units, output shows {shown}"
    checker = None
    if check.checker is not None:
        other = _open(key, seal, idx, check.checker, fetch)
        checker = other is not None and kind.compare_checks(spec, shard, other, mine).match
    return sealed.Verdict(subject, checker, cmp.statistic, detail)
