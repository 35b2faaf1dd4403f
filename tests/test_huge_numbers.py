"""JSON integers past float's range, from a client's body or a provider's output, are
refused or compared as a mismatch: ``math.isfinite`` and ``float`` raise
``OverflowError`` on them, which was a 500 (a chat request's temperature, a checker's
margins, a sealed check's verdict)."""

from __future__ import annotations

import json

import pytest

from deai.core import batch, sealed
from deai.core.errors import InvalidInput
from deai.core.kinds.chat import ChatKind

HUGE = 10**400
KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": "SmolLM2-135M-Instruct", "max_price": 500})


@pytest.mark.parametrize("x, ok", [(1, True), (1.5, True), (-0.0, True), (HUGE, False),
                                   (-HUGE, False), (float("nan"), False),
                                   (float("inf"), False), (True, False), ("1", False),
                                   (None, False)])
def test_finite_is_a_json_number_with_a_finite_float_value(x: object, ok: bool) -> None:
    assert batch.finite(x) is ok


def line(**body: object) -> bytes:
    return json.dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **body}}).encode()


def test_a_huge_temperature_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput) as bad:
        KIND.split(SPEC, line(temperature=HUGE) + b"\n")
    assert bad.value.field is not None and bad.value.field.endswith("temperature")


def test_a_checkers_huge_margins_are_a_mismatch_not_a_crash() -> None:
    (shard,) = KIND.split(SPEC, line(temperature=0) + b"\n")
    claimed = json.dumps({"custom_id": "a", "token_ids": [5, 6], "text": "hi",
                          "finish_reason": "stop", "prompt_tokens": 9,
                          "completion_tokens": 2}).encode() + b"\n"
    check = json.dumps({"custom_id": "a", "text": "hi", "room": 100, "finish": "stop",
                        "early": False, "prompt_tokens": 9,
                        "margins": [0.0, HUGE]}).encode() + b"\n"
    got = KIND.check(SPEC, shard.payload, claimed, check)
    assert not got.match and "margins" in got.detail
    fine = check.replace(b'"margins": [0.0, ' + str(HUGE).encode() + b"]", b'"margins": [0.0, 0.0]')
    assert not KIND.compare_checks(SPEC, shard.payload, fine, check).match


def test_a_sealed_verdicts_huge_statistic_is_refused() -> None:
    with pytest.raises(InvalidInput):
        sealed._verdict({"subject": True, "statistic": HUGE, "detail": ""}, "output")
