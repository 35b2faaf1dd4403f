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

A sealed training task writes its checkpoints sealed too: the workload's
``ctx.checkpoint`` is wrapped so the blob uploaded is the checkpoint encrypted
to the job key, recorded with its plaintext digest (``meta.plain``, the digest
the chain commits to); a resumed task fetches and decrypts it. A check of a
training task is a segment audit (``kind.check_payload``) replayed from the
recorded checkpoints, which the checker decrypts and matches against the
claimed chain's digests; nothing is re-trained in full.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from deai.client import sealed as crypto
from deai.client.keys import Identity
from deai.core import kinds, sealed, wire
from deai.core.errors import InvalidInput
from deai.workloads.base import TaskContext

RunPlain = Callable[[bytes], tuple[bytes, int]]
"""Runs a plaintext shard with the lease's ``TaskContext`` (which ``run`` adjusts in place:
the agent's closure holds that very object)."""


def is_sealed(blob: bytes) -> bool:
    return sealed.is_envelope(blob) or sealed.is_check(blob)


def run(identity: Identity, a: wire.AssignmentOut, blob: bytes,
        ctx: TaskContext | Callable[[str], bytes], run_plain: RunPlain) -> tuple[bytes, int]:
    """The sealed output and its units for lease ``a`` whose input is ``blob``; ``ctx``: the
    context ``run_plain`` runs with (or only a blob fetcher, for a task without one)."""
    if not isinstance(ctx, TaskContext):
        ctx = TaskContext(fetch=ctx)
    idx = sealed.task_index(a.task_id)
    check = sealed.parse_check(blob) if sealed.is_check(blob) else None
    env = sealed.parse_envelope(ctx.fetch(check.shard) if check else blob, "input")
    key = crypto.open_key(env.keys, identity)
    shard = crypto.open_shard(key, env, idx)
    if check is not None:
        audited = _audit(key, env.seal, idx, a, check, shard, ctx, run_plain)
        if audited is not None:
            return audited
    if check is None:  # before the work: an under-declared shard ran, then went unpaid
        try:
            bound = kinds.get(a.workload).payload_units(shard)
        except InvalidInput as exc:
            raise crypto.SealError(f"the shard is not a {a.workload} shard: {exc.message}"
                                   ) from None
        if bound is not None and bound > a.units:
            raise crypto.SealError(f"the shard can bill {bound} units, its task declares "
                                   f"{a.units}: not run")
    _seal_context(ctx, key, env.seal, idx)
    output, units = run_plain(shard)
    if units > a.units:  # the client declared the units; the coordinator cannot count them
        raise crypto.SealError(f"the shard holds {units} units, its task declares {a.units}")
    verdict = (_verdict(key, env.seal, idx, a, check, shard, output, ctx.fetch)
               if check else None)
    return crypto.seal_output(key, env.seal, idx, output, units, verdict), units


def _seal_context(ctx: TaskContext, key: bytes, seal: str, idx: int) -> None:
    """Make ``ctx`` seal checkpoints on the way out and open the one to resume from."""
    opened: dict[str, bytes] = {}
    upload, download = ctx.checkpoint, ctx.fetch

    def checkpoint(step: int, data: bytes, chain_hash: str, meta: dict[str, Any]) -> None:
        plain = hashlib.sha256(data).hexdigest()
        keep: dict[str, Any] = {k: meta[k] for k in ("start", "seed") if k in meta}  # no metrics
        upload(step, crypto.seal_checkpoint(key, seal, idx, step, data), chain_hash,
               {**keep, "plain": plain})

    def fetch(digest: str) -> bytes:
        return opened[digest] if digest in opened else download(digest)

    resume = ctx.resume
    if resume:
        plain = (resume.get("meta") or {}).get("plain")
        env = sealed.parse_envelope(download(str(resume.get("digest"))), "resume")
        data = crypto.open_checkpoint(key, env, seal, idx)
        if not isinstance(plain, str) or hashlib.sha256(data).hexdigest() != plain:
            raise crypto.SealError("the checkpoint to resume from is not the one recorded")
        opened[plain] = data
        resume = {**resume, "digest": plain}
    ctx.checkpoint, ctx.fetch, ctx.resume = checkpoint, fetch, resume


def _audit(key: bytes, seal: str, idx: int, a: wire.AssignmentOut,
           check: sealed.CheckPayload, shard: bytes, ctx: TaskContext, run_plain: RunPlain
           ) -> tuple[bytes, int] | None:
    """A check by segment audit, for kinds that have one (training): replay the segments
    the claim's hash and the coordinator's nonce draw, from the recorded checkpoints,
    decrypted here. None: the kind re-runs the shard instead."""
    kind = kinds.get(a.workload)
    if type(kind).check_payload is kinds.Kind.check_payload:
        return None
    spec = _spec(kind, check)
    claimed = _open(key, seal, idx, check.claimed, ctx.fetch)
    request = (kind.check_payload(spec, shard, claimed, bytes.fromhex(check.nonce))
               if claimed is not None else None)
    if claimed is None or request is None:
        return _sealed_verdict(key, seal, idx, b"{}", 0, sealed.Verdict(
            False, None, 1.0, "the claimed output does not decrypt or has no chain"))
    opened = {hashlib.sha256(shard).hexdigest(): shard}
    missing = []
    for seg in json.loads(request)["segments"]:
        plain = seg["from"]
        if not plain or plain in opened:
            continue
        data = _open_ckpt(key, seal, idx, check.checkpoints.get(plain), ctx.fetch)
        if data is None or hashlib.sha256(data).hexdigest() != plain:
            missing.append(seg["start"])
        else:
            opened[plain] = data
    if missing:
        return _sealed_verdict(key, seal, idx, b"{}", 0, sealed.Verdict(
            False, None, 1.0, f"the claimed checkpoint at step {missing[0]} was not recorded"))
    download = ctx.fetch
    ctx.fetch = lambda d: opened[d] if d in opened else download(d)
    output, units = run_plain(request)
    if units > a.units:
        raise crypto.SealError(f"the audit used {units} units, the task declares {a.units}")
    cmp = kind.check(spec, shard, claimed, output)
    subject, detail = cmp.match, cmp.detail
    if subject:
        subject, detail = _units_shown(kind, spec, shard, claimed, check, detail)
    checker = None
    if check.checker is not None:
        other = _open(key, seal, idx, check.checker, ctx.fetch)
        checker = other is not None and kind.compare_checks(spec, request, other, output).match
    return _sealed_verdict(key, seal, idx, output, units,
                           sealed.Verdict(subject, checker, cmp.statistic, detail))


def _sealed_verdict(key: bytes, seal: str, idx: int, output: bytes, units: int,
                    verdict: sealed.Verdict) -> tuple[bytes, int]:
    return crypto.seal_output(key, seal, idx, output, units, verdict), units


def _open_ckpt(key: bytes, seal: str, idx: int, digest: str | None,
               fetch: Callable[[str], bytes]) -> bytes | None:
    if digest is None:
        return None
    try:
        return crypto.open_checkpoint(key, sealed.parse_envelope(fetch(digest)), seal, idx)
    except (InvalidInput, crypto.SealError, LookupError):
        return None


def _spec(kind: kinds.Kind, check: sealed.CheckPayload) -> kinds.SpecBase:
    return kind.parse_spec({k: v for k, v in check.spec.items()
                            if k not in ("sealed", "sealed_for")})


def _units_shown(kind: kinds.Kind, spec: kinds.SpecBase, shard: bytes, claimed: bytes,
                 check: sealed.CheckPayload, detail: str) -> tuple[bool, str]:
    """Whether the claimed units are what the claimed output shows (its structure too)."""
    try:
        shown = kind.meter(spec, shard, claimed)
    except InvalidInput as exc:
        return False, exc.message
    if shown != check.claimed_units:
        return False, f"claimed {check.claimed_units} units, output shows {shown}"
    return True, detail


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
    spec = _spec(kind, check)
    claimed = _open(key, seal, idx, check.claimed, fetch)
    if claimed is None:
        return sealed.Verdict(False, None, 1.0, "the claimed output does not decrypt")
    cmp = kind.check(spec, shard, claimed, mine)
    subject, detail = cmp.match, cmp.detail
    if subject:
        subject, detail = _units_shown(kind, spec, shard, claimed, check, detail)
    checker = None
    if check.checker is not None:
        other = _open(key, seal, idx, check.checker, fetch)
        checker = other is not None and kind.compare_checks(spec, shard, other, mine).match
    return sealed.Verdict(subject, checker, cmp.statistic, detail)
