"""Forced errors: a chat checker handed a claim made wrong on purpose must notice it.

The real SmolLM2 re-scores a forged claim (one token swapped): an honest check
shows a margin above tolerance at the planted token; a rubber-stamp (zero margins,
the text copied) does not, and the decision slashes it without a referee.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from deai.core.kinds.chat import ChatKind
from deai.core.lifecycle import JobStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from deai.core.lifecycle import effects as E
from deai.workloads import chat

pytestmark = pytest.mark.slow  # CPU decoding
MODEL = "SmolLM2-135M-Instruct"
KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": MODEL, "max_price": 500, "shard_size": 10})


@pytest.fixture(scope="module")
def claim() -> Iterator[tuple[bytes, bytes]]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    body = {"messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 12, "temperature": 0}
    data = json.dumps({"custom_id": "r0", "url": "/v1/chat/completions",
                       "body": body}).encode() + b"\n"
    (sh,) = KIND.split(SPEC, data)
    out, _ = chat.WORKLOAD.run(MODEL, sh.payload)
    yield sh.payload, out
    torch.set_num_threads(before)


def rubber_stamp(payload: bytes) -> bytes:
    """What a checker that does no work answers: every token fine."""
    rows: list[dict[str, Any]] = [json.loads(x) for x in payload.splitlines()]
    return b"".join(json.dumps({"custom_id": r["custom_id"], "margins": [0.0] * len(
        r["token_ids"]), "prompt_tokens": 1}).encode() + b"\n" for r in rows)


def test_an_honest_checker_notices_the_planted_token(claim: tuple[bytes, bytes]) -> None:
    shard, out = claim
    payload = KIND.check_payload(SPEC, shard, out)
    assert payload is not None
    forged = KIND.forge(SPEC, payload, 0.37)
    assert forged is not None
    bad, marker = forged
    assert bad != payload
    checked, _ = chat.check(MODEL, bad)
    assert KIND.noticed(SPEC, marker, checked)
    honest, _ = chat.check(MODEL, payload)  # the unforged claim: nothing to notice there
    assert not KIND.noticed(SPEC, marker, honest)
    assert not KIND.noticed(SPEC, marker, rubber_stamp(bad))


def test_a_rubber_stamp_is_slashed_without_a_referee() -> None:
    ctx = D.TaskCtx("t", "j", 0, JobStatus.VERIFYING, TaskStatus.VERIFYING, 1, 5)
    check = D.Party("a1", "p1", Role.REPLICA)
    missed = D.on_forced(ctx, check, noticed=False, evidence={})
    assert E.Slash("p1", None, Role.REPLICA) in missed
    assert any(isinstance(e, E.RecordVerdict) for e in missed)
    assert missed[-1] == E.NeedCheck(Role.REPLICA), "the task still gets a real check"
    kept = D.on_forced(ctx, check, noticed=True, evidence={})
    assert not any(isinstance(e, E.Slash) for e in kept) and E.PayCheck("a1") in kept
