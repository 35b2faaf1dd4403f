"""Chat jobs: conversations in, one chat completion per line out, priced per 1,000 tokens.

Spec::

    kind: chat
    model: SmolLM2-135M-Instruct
    max_price: 500         # micro-units per 1,000 tokens (prompt + completion)
    deadline: 900          # seconds from submission
    shard_size: 8          # input lines per task

Input lines: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body": {"model"?, "messages": [{"role", "content"}, ...], "max_tokens"?,
"temperature"?, "top_p"?, "seed"?, "stop"?, "n"?, "logprobs"?, "top_logprobs"?,
"response_format"?}}``. Roles are system, user or assistant and content is a string.
``max_tokens`` (alias ``max_completion_tokens``) is 1 to 2,048, default 128;
``temperature`` 0 to 2, default 1 (0 is greedy);
``top_p`` in (0, 1], default 1. Sampling is seeded per line: a line without a
``seed`` gets one derived from its ``custom_id``, so every line's result can
be reproduced and checked. ``stop`` is a string or up to 4 strings: the
completion ends (finish "stop") at the first token whose text completes one,
and the text is cut before it. ``n`` (1 to 16) asks for that many choices: a
line becomes ``n`` shard lines, choice ``i`` seeded ``(seed + i) mod 2**63``,
each billed as its own completion (prompt included). ``logprobs`` with
``top_logprobs`` (0 to 20) returns the model's log-probabilities (of its
untempered distribution) of every completion token and its top alternatives.
``response_format`` ``{"type": "json_object"}`` constrains decoding to one JSON
object (``core.jsonprefix``): greedy lines take the best token that keeps the
text a JSON prefix, sampled lines draw from the distribution restricted to such
tokens (seeded, so replicas repeat it), and the end-of-turn token is allowed
only once the object is complete. Any other body field is refused, naming it;
so is ``json_schema``.

A shard travels to the provider as self-contained lines::

    {"custom_id", "messages", "max_tokens", "temperature", "top_p", "seed",
     "stop"?, "logprobs"?, "top_logprobs"?, "response_format"?, "index"?}

and its output is one line per input line, in order::

    {"custom_id", "token_ids": [int, ...], "text": str,
     "finish_reason": "stop" | "length", "prompt_tokens": int, "completion_tokens": int,
     "logprobs"?: [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}

``token_ids`` are the generated ids, the end-of-turn token included when the
model stopped (so a verifier can rescore the decision to stop);
``completion_tokens == len(token_ids)``; ``logprobs`` has one entry per token id
(responses show those of the returned text: not the end-of-turn token's, which
has no bytes, nor those of a stop sequence cut from the text). Units are
prompt + completion tokens. The ``n`` lines of one request follow each other
with the same ``custom_id`` and are assembled into one response's choices.

Checks (``check``): the checker re-scores or re-generates every line under the
same constraints and reports the text, the finish reason the claimed tokens
imply (a stop sequence or end-of-turn token must end them, not sit inside
them) and, where asked, the log-probabilities, compared within
``LOGPROB_TOLERANCE``.

Escrow without a tokenizer: every catalog chat model uses a byte-level BPE
tokenizer with no normalizer, so a run of text never takes more tokens than
its UTF-8 bytes. The chat template adds, per message, a few special and role
tokens (at most ``MESSAGE_OVERHEAD``) and, per prompt, a default system prompt
and the assistant header (at most ``PROMPT_OVERHEAD``). A line's bound is
therefore ``sum(bytes(content) + MESSAGE_OVERHEAD) + PROMPT_OVERHEAD +
max_tokens`` (``line_bound``), a shard's ``max_units`` is the sum over its
lines, and ``meter`` refuses a line whose usage exceeds its bound; ``check_output``
refuses one whose prompt alone exceeds the bound less ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from deai.core import batch, catalog
from deai.core.errors import InvalidInput
from deai.core.kinds.base import Comparison, Kind, Shard, SpecBase

URL = "/v1/chat/completions"
ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 256
MAX_PROMPT_BYTES = 16_384
MAX_TOKENS = 2048
# Logit margin below the top token within which a claimed token still counts as the
# greedy choice: an incremental decode and a teacher-forced pass round differently.
# Honest runs on one machine measure exactly 0; a different token is typically > 0.5.
GREEDY_TOLERANCE = 1e-2
FORGE_VOCAB = 49_152  # SmolLM2's vocabulary: a forged token id stays a real token
DEFAULT_MAX_TOKENS = 128
MESSAGE_OVERHEAD = 16
PROMPT_OVERHEAD = 64
BODY_FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens",
                         "temperature", "top_p", "seed", "stream", "stop", "n", "logprobs",
                         "top_logprobs", "response_format"})
FINISH_REASONS = ("stop", "length")
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
RESPONSE_FORMATS = ("text", "json_object")
# Log-probabilities of an incremental decode and a teacher-forced pass differ by float
# rounding (~1e-5 on one machine); a made-up number is typically off by far more.
LOGPROB_TOLERANCE = 1e-2


class ChatSpec(SpecBase):
    kind: Literal["chat"]
    shard_size: int = Field(default=8, ge=1, le=10_000, strict=True)


@dataclass(frozen=True)
class Request:
    """One input line, checked, with every sampling parameter resolved."""

    index: int
    custom_id: str
    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool = False
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: str = "text"

    @property
    def max_units(self) -> int:
        return line_bound(self.messages, self.max_tokens) * self.n

    def payload(self, choice: int = 0) -> dict[str, Any]:
        """Choice ``choice``'s shard line; a plain request keeps its original bytes."""
        out: dict[str, Any] = {
            "custom_id": self.custom_id,
            "messages": [{"role": r, "content": c} for r, c in self.messages],
            "max_tokens": self.max_tokens, "temperature": self.temperature,
            "top_p": self.top_p, "seed": (self.seed + choice) % 2**63,
            **({"stream": True} if self.stream else {})}
        if self.stop:
            out["stop"] = list(self.stop)
        if self.logprobs:
            out["logprobs"], out["top_logprobs"] = True, self.top_logprobs
        if self.response_format != "text":
            out["response_format"] = self.response_format
        if self.n > 1:
            out["index"] = choice
        return out

    def payloads(self) -> list[dict[str, Any]]:
        return [self.payload(i) for i in range(self.n)]


def line_bound(messages: tuple[tuple[str, str], ...] | list[dict[str, str]],
               max_tokens: int) -> int:
    """The most tokens a line can bill: see the module docstring."""
    pairs = [(m["role"], m["content"]) if isinstance(m, dict) else m for m in messages]
    return (sum(len(c.encode("utf-8")) + MESSAGE_OVERHEAD for _, c in pairs)
            + PROMPT_OVERHEAD + max_tokens)


def default_seed(custom_id: str) -> int:
    """The seed of a line that names none: stable, and different from line to line."""
    return int.from_bytes(hashlib.sha256(custom_id.encode()).digest()[:4], "big")


def greedy_ok(margins: list[float], tolerance: float) -> bool:
    """Whether a completion is what greedy decoding would produce, within ``tolerance``.

    ``margins`` are, for each completion token, the logit of the model's top
    token minus the logit of the claimed token (``workloads.chat.rescore``): 0
    where the claimed token is the argmax. A token within ``tolerance`` of the
    top logit passes, because an incremental decode and a teacher-forced pass
    differ in float rounding and may break a near tie differently.
    """
    return all(math.isfinite(m) and m <= tolerance for m in margins)


def parse_input(data: bytes, spec: SpecBase) -> list[Request]:
    """Parse and check every input line; the first bad line is reported by number."""
    model = catalog.lookup(spec.model, field="spec.model").name

    def body(cid: str, b: dict[str, Any], where: str, index: int) -> Request:
        extra = sorted(set(b) - BODY_FIELDS)
        if extra:
            raise InvalidInput(f"{where}.body.{extra[0]}: not supported; use "
                               f"{', '.join(sorted(BODY_FIELDS))}",
                               field=f"{where}.body.{extra[0]}")
        line_model = b.get("model", model)
        if not isinstance(line_model, str) or catalog.lookup(
                line_model, field=f"{where}.body.model").name != model:
            raise InvalidInput(f"{where}.body.model: {line_model!r} differs from the job's "
                               f"{model!r}", field=f"{where}.body.model")
        return Request(index=index, custom_id=cid, messages=_messages(b, where),
                       max_tokens=_max_tokens(b, where),
                       temperature=_number(b, "temperature", where, 1.0, 0.0, 2.0),
                       top_p=_top_p(b, where), seed=_seed(b, where, cid),
                       stream=_flag(b, "stream", where), stop=_stop(b, where),
                       n=_bounded(b, "n", where, 1, MAX_CHOICES),
                       logprobs=_flag(b, "logprobs", where), top_logprobs=_top_logprobs(b, where),
                       response_format=_response_format(b, where))

    return batch.parse_lines(data, URL, "chat", body)


def _messages(b: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    field = f"{where}.body.messages"
    msgs = b.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise InvalidInput(f"{field}: must be a non-empty list of messages", field=field)
    if len(msgs) > MAX_MESSAGES:
        raise InvalidInput(f"{field}: at most {MAX_MESSAGES} messages", field=field)
    out: list[tuple[str, str]] = []
    size = 0
    for i, m in enumerate(msgs):
        at = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise InvalidInput(f"{at}: must be an object with role and content", field=at)
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise InvalidInput(f"{at}.{extra[0]}: not supported", field=f"{at}.{extra[0]}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidInput(f"{at}.role: must be one of {', '.join(ROLES)}",
                               field=f"{at}.role")
        if not isinstance(content, str):
            raise InvalidInput(f"{at}.content: must be a string", field=f"{at}.content")
        size += len(_utf8(content, f"{at}.content"))
        out.append((role, content))
    if size > MAX_PROMPT_BYTES:
        raise InvalidInput(f"{field}: contents total {size} bytes, over {MAX_PROMPT_BYTES}",
                           field=field)
    if out[-1][0] == "assistant":
        raise InvalidInput(f"{field}: the last message must be from the user or system",
                           field=f"{field}[{len(out) - 1}].role")
    return tuple(out)


def _utf8(text: str, field: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (``"\\ud800"`` is valid JSON) is bad input."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field}: holds a lone UTF-16 surrogate, which is not text",
                           field=field) from None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stop(b: dict[str, Any], where: str) -> tuple[str, ...]:
    field = f"{where}.body.stop"
    value = b.get("stop")
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(x, str) and 0 < len(x) <= MAX_STOP_CHARS for x in stops)):
        raise InvalidInput(f"{field}: must be a string or a list of up to {MAX_STOP} "
                           f"non-empty strings of at most {MAX_STOP_CHARS} characters",
                           field=field)
    for x in stops:
        _utf8(x, field)
    return tuple(stops)


def _bounded(b: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = _int(b, key, where)
    if value is None:
        return lo
    if not lo <= value <= hi:
        raise InvalidInput(f"{where}.body.{key}: must be an integer from {lo} to {hi}",
                           field=f"{where}.body.{key}")
    return value


def _top_logprobs(b: dict[str, Any], where: str) -> int:
    value = _bounded(b, "top_logprobs", where, 0, MAX_TOP_LOGPROBS)
    if b.get("top_logprobs") is not None and b.get("logprobs") is not True:
        raise InvalidInput(f"{where}.body.top_logprobs: needs logprobs set to true",
                           field=f"{where}.body.logprobs")
    return value


def _response_format(b: dict[str, Any], where: str) -> str:
    field = f"{where}.body.response_format"
    value = b.get("response_format")
    if value is None:
        return "text"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidInput(f"{field}: must be an object with a type", field=field)
    kind = value["type"]
    if kind not in RESPONSE_FORMATS:
        raise InvalidInput(f"{field}.type: {kind!r} is not supported; use "
                           f"{' or '.join(RESPONSE_FORMATS)}", field=f"{field}.type")
    extra = sorted(set(value) - {"type"})
    if extra:
        raise InvalidInput(f"{field}.{extra[0]}: not supported", field=f"{field}.{extra[0]}")
    return str(kind)


def _flag(b: dict[str, Any], key: str, where: str) -> bool:
    value = b.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.body.{key}: must be true or false",
                           field=f"{where}.body.{key}")
    return value


def _int(b: dict[str, Any], key: str, where: str) -> int | None:
    value = b.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{where}.body.{key}: must be an integer", field=f"{where}.body.{key}")
    return value


def _max_tokens(b: dict[str, Any], where: str) -> int:
    key = "max_tokens" if b.get("max_tokens") is not None else "max_completion_tokens"
    value = _int(b, key, where)
    if value is None:
        return DEFAULT_MAX_TOKENS
    if not 1 <= value <= MAX_TOKENS:
        raise InvalidInput(f"{where}.body.{key}: must be between 1 and {MAX_TOKENS}",
                           field=f"{where}.body.{key}")
    return value


def _number(b: dict[str, Any], key: str, where: str, default: float, lo: float,
            hi: float) -> float:
    value = b.get(key)
    if value is None:
        return default
    field = f"{where}.body.{key}"
    if not batch.finite(value) or not lo <= value <= hi:
        raise InvalidInput(f"{field}: must be a number from {lo:g} to {hi:g}", field=field)
    return float(value)


def _top_p(b: dict[str, Any], where: str) -> float:
    value = _number(b, "top_p", where, 1.0, 0.0, 1.0)
    if value <= 0.0:
        raise InvalidInput(f"{where}.body.top_p: must be above 0", field=f"{where}.body.top_p")
    return value


def _seed(b: dict[str, Any], where: str, cid: str) -> int:
    value = _int(b, "seed", where)
    if value is None:
        return default_seed(cid)
    if not 0 <= value < 2**63:
        raise InvalidInput(f"{where}.body.seed: must be from 0 to 2**63 - 1",
                           field=f"{where}.body.seed")
    return value


def encode_requests(requests: list[Request]) -> bytes:
    """The shard blob a provider receives: one self-contained line per choice."""
    return b"".join(batch.dumps(p) for r in requests for p in r.payloads())


def _count(line: dict[str, Any], key: str, where: str, least: int) -> int:
    value = line.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InvalidInput(f"{where}: {key} must be an integer >= {least}", field="output")
    return value


def check_output(shard_input: bytes, output: bytes) -> list[dict[str, Any]]:
    """Check a shard's output against its input; returns the parsed lines.

    One line per request, same custom_id and order; token ids that are
    non-negative integers, no more than ``max_tokens`` of them; a finish
    reason; a prompt count within its bytes and the template's tokens. Whether the
    tokens are what the model would produce is the verifier's job (``greedy_ok``).
    """
    inputs = [obj for _, obj in batch.jsonl(shard_input, "input")]
    lines = [obj for _, obj in batch.jsonl(output, "output")]
    if len(lines) != len(inputs):
        raise InvalidInput(f"output has {len(lines)} lines for {len(inputs)} inputs",
                           field="output")
    for n, (inp, line) in enumerate(zip(inputs, lines, strict=True), start=1):
        where = f"output line {n}"
        if not isinstance(line, dict) or line.get("custom_id") != inp["custom_id"]:
            raise InvalidInput(f"{where}: custom_id does not match the input", field="output")
        ids = line.get("token_ids")
        if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise InvalidInput(f"{where}: token_ids must be a list of token ids",
                               field="output")
        if not isinstance(line.get("text"), str) or not _encodes(line["text"]):
            # a lone surrogate: valid JSON, yet no answer (UTF-8) can carry it
            raise InvalidInput(f"{where}: text must be a string of Unicode text",
                               field="output")
        if line.get("finish_reason") not in FINISH_REASONS:
            raise InvalidInput(f"{where}: finish_reason must be stop or length", field="output")
        completion = _count(line, "completion_tokens", where, 0)
        prompt = _count(line, "prompt_tokens", where, 1)
        if completion != len(ids) or completion > inp["max_tokens"]:
            raise InvalidInput(f"{where}: completion_tokens must equal len(token_ids) and be "
                               f"at most max_tokens ({inp['max_tokens']})", field="output")
        # The prompt within the bound less max_tokens: a provider that stopped after one
        # token billed the rest of max_tokens as prompt (a 70x bill for "Say hello").
        most = line_bound(inp["messages"], inp["max_tokens"]) - inp["max_tokens"]
        if prompt > most:
            raise InvalidInput(f"{where}: prompt_tokens {prompt}, over the prompt's bound of "
                               f"{most} (its bytes and the template's tokens)", field="output")
        if inp.get("logprobs") and not _logprobs_shape(line.get("logprobs"), len(ids),
                                                        int(inp.get("top_logprobs", 0))):
            raise InvalidInput(f"{where}: logprobs must have one entry per token id, each "
                               f"with token, logprob, bytes and {inp.get('top_logprobs', 0)} "
                               "top_logprobs", field="output")
    return lines


def _entry_ok(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("token"), str) and _encodes(e["token"])
            and batch.finite(e.get("logprob")) and e["logprob"] <= 0
            and isinstance(e.get("bytes"), list)
            and all(isinstance(x, int) and 0 <= x < 256 for x in e["bytes"]))


def _logprobs_shape(value: Any, tokens: int, top: int) -> bool:
    return (isinstance(value, list) and len(value) == tokens
            and all(_entry_ok(e) and isinstance(e.get("top_logprobs"), list)
                    and len(e["top_logprobs"]) == top and all(
                        _entry_ok(t) for t in e["top_logprobs"]) for e in value))


def logprobs_agree(claimed: list[dict[str, Any]], checked: list[dict[str, Any]],
                   tolerance: float) -> str | None:
    """None when two logprobs lists agree, else why not.

    Tokens and bytes must match and log-probabilities lie within ``tolerance``;
    top alternatives are compared rank by rank, and two different tokens at one
    rank pass only when their log-probabilities are within ``tolerance`` (a
    near tie that two passes may order differently).
    """
    if len(claimed) != len(checked):
        return "a different number of logprobs"
    for i, (a, b) in enumerate(zip(claimed, checked, strict=True)):
        if a.get("token") != b.get("token") or a.get("bytes") != b.get("bytes"):
            return f"token {i}: logprobs name another token"
        if abs(float(a["logprob"]) - float(b["logprob"])) > tolerance:
            return f"token {i}: logprob {a['logprob']:.4g}, the model gives {b['logprob']:.4g}"
        ta, tb = a.get("top_logprobs") or [], b.get("top_logprobs") or []
        if len(ta) != len(tb):
            return f"token {i}: a different number of top_logprobs"
        for x, y in zip(ta, tb, strict=True):
            if abs(float(x["logprob"]) - float(y["logprob"])) > tolerance:
                return f"token {i}: top_logprobs differ from the model's"
    return None


def response_logprobs(line: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's ``choices[i].logprobs`` for an output line (None when not asked for)."""
    entries = line.get("logprobs")
    if not isinstance(entries, list):
        return None
    # The tokens of the text the caller gets: not the end-of-turn token (no bytes), not
    # the tokens of a stop sequence cut from the text.
    limit, at, shown = len(str(line.get("text", "")).encode()), 0, []
    for e in entries:
        if at >= limit:
            break
        if e.get("bytes"):
            shown.append(e)
            at += len(e["bytes"])
    return {"content": shown, "refusal": None}


def response_body(job_id: str, model: str, line: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completion object for one output line (one choice)."""
    return completion_body(job_id, model, [line])


def completion_body(job_id: str, model: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """An OpenAI chat-completion object for the output lines of one request, a choice each.

    ``created`` is 0: results are assembled by a pure function without a clock,
    and the job record carries its real times (``created_at``, ``finished_at``).
    Usage counts the prompt once, as OpenAI does; billing counts every choice's
    run (``meter``).
    """
    prompt = int(lines[0]["prompt_tokens"])
    completion = sum(int(x["completion_tokens"]) for x in lines)
    return {"id": f"chatcmpl-{job_id}-{lines[0]['custom_id']}", "object": "chat.completion",
            "created": 0, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": x["text"]},
                         "logprobs": response_logprobs(x),
                         "finish_reason": x["finish_reason"]}
                        for i, x in enumerate(lines)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def group_choices(lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive output lines of one request (the same custom_id), as its choices."""
    groups: list[list[dict[str, Any]]] = []
    for line in lines:
        if groups and groups[-1][0]["custom_id"] == line["custom_id"]:
            groups[-1].append(line)
        else:
            groups.append([line])
    return groups


def _line_problem(o: dict[str, Any], chk: Any, limit: int) -> str | None:
    """What is wrong with a claimed line besides its margins, by its check; None if nothing."""
    room = chk.get("room") if isinstance(chk, dict) else None
    if isinstance(room, int) and not isinstance(room, bool):
        limit = min(limit, room)  # the model's context may end a completion first
    if o["finish_reason"] == "length" and len(o["token_ids"]) < limit:
        # Every claimed token may be greedy, yet the completion stopped early.
        return f"cut off at {len(o['token_ids'])} of {limit} tokens without a stop token"
    if not isinstance(chk, dict) or chk.get("custom_id") != o["custom_id"]:
        return "the check is for another line"
    counted = chk.get("prompt_tokens")
    if isinstance(counted, int) and counted != o["prompt_tokens"]:
        # billed per token: a padded count is an overcharge the tokens alone never show
        return f"prompt_tokens {o['prompt_tokens']}, the model's tokenizer counts {counted}"
    if chk.get("text") != o["text"]:
        return "text does not match its tokens"
    if chk.get("early"):
        return "the tokens go on past a stop"
    finish = chk.get("finish")
    if finish is not None and finish != o["finish_reason"]:
        return f"finish_reason {o['finish_reason']!r} but the tokens end with {finish!r}"
    if isinstance(o.get("logprobs"), list):
        return logprobs_agree(o["logprobs"], chk.get("logprobs") or [], LOGPROB_TOLERANCE)
    return None


class ChatKind(Kind):
    name: ClassVar[str] = "chat"
    unit: ClassVar[str] = "token"
    spec_type: ClassVar[type[SpecBase]] = ChatSpec

    def quote_shards(self, spec: SpecBase, inputs: int) -> list[int]:
        """``shard_size`` inputs a shard, one unit each."""
        assert isinstance(spec, ChatSpec)
        n = spec.shard_size
        return [min(n, inputs - i) for i in range(0, inputs, n)]

    def split(self, spec: SpecBase, data: bytes) -> list[Shard]:
        assert isinstance(spec, ChatSpec)
        reqs = parse_input(data, spec)
        n = spec.shard_size
        return [Shard(encode_requests(sh), len(sh), sum(r.max_units for r in sh))
                for sh in (reqs[i:i + n] for i in range(0, len(reqs), n))]

    def payload_units(self, shard: bytes) -> int | None:
        """Each line (a choice) bills at most ``line_bound`` of its messages and
        ``max_tokens`` (``Request.max_units`` is that times its choices)."""
        total = 0
        for _, line in batch.jsonl(shard, "shard"):
            try:
                msgs = tuple((str(m["role"]), str(m["content"])) for m in line["messages"])
                total += line_bound(msgs, int(line["max_tokens"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidInput("shard: not a chat request line", field="shard") from None
        return total

    def meter(self, spec: SpecBase, shard_input: bytes, output: bytes) -> int:
        return sum(int(x["prompt_tokens"]) + int(x["completion_tokens"])
                   for x in check_output(shard_input, output))

    # --- verification: a check costs one forward pass, not a regeneration -----------------

    def compare(self, spec: SpecBase, shard: bytes, a: bytes, b: bytes) -> Comparison:
        """Two completions of one shard agree when every line has the same tokens."""
        try:
            la, lb = check_output(shard, a), check_output(shard, b)
        except InvalidInput as exc:
            return Comparison(False, 1.0, f"malformed output: {exc.message}")
        for n, (x, y) in enumerate(zip(la, lb, strict=True), start=1):
            if x["token_ids"] != y["token_ids"]:
                return Comparison(False, 1.0, f"line {n}: different tokens")
            if x["prompt_tokens"] != y["prompt_tokens"]:  # what each bills for the prompt
                return Comparison(False, 1.0, f"line {n}: different prompt token counts")
        return Comparison(True, 0.0, "same tokens on every line")

    def check_payload(self, spec: SpecBase, shard: bytes, claimed: bytes,
                      nonce: bytes = b"") -> bytes | None:
        """Each line's request with the claimed tokens, for the checker to re-score."""
        reqs = [obj for _, obj in batch.jsonl(shard, "shard")]
        try:
            outs = check_output(shard, claimed)
        except InvalidInput:
            return None  # malformed claims never get this far; re-execute to be safe
        return b"".join(batch.dumps({"check": True, **r, "token_ids": o["token_ids"]})
                        for r, o in zip(reqs, outs, strict=True))

    def check(self, spec: SpecBase, shard: bytes, claimed: bytes,
              check_output_: bytes) -> Comparison:
        """Greedy lines: every claimed token within ``GREEDY_TOLERANCE`` of the top logit.
        Sampled lines: the seeded re-generation gives the same tokens. Every line: the
        claimed text is what the claimed tokens decode to."""
        try:
            outs = check_output(shard, claimed)
            checks = [obj for _, obj in batch.jsonl(check_output_, "output")]
        except InvalidInput as exc:
            return Comparison(False, 1.0, f"malformed: {exc.message}")
        if len(checks) != len(outs):
            return Comparison(False, 1.0, "the check has the wrong number of lines")
        limits = [int(obj["max_tokens"]) for _, obj in batch.jsonl(shard, "shard")]
        worst = 0.0
        for n, (o, chk, limit) in enumerate(zip(outs, checks, limits, strict=True), start=1):
            why = _line_problem(o, chk, limit)
            if why is not None:
                return Comparison(False, 1.0, f"line {n}: {why}")
            margins = chk.get("margins")
            if isinstance(margins, list):
                if len(margins) != len(o["token_ids"]) or not all(
                        batch.finite(m) for m in margins):
                    return Comparison(False, 1.0, f"line {n}: malformed margins")
                worst = max([worst, *(float(m) for m in margins)])
                if not greedy_ok([float(m) for m in margins], GREEDY_TOLERANCE):
                    return Comparison(False, worst, f"line {n}: a token is not the greedy "
                                                    f"choice (margin {worst:.3g})")
            elif chk.get("token_ids") != o["token_ids"]:
                return Comparison(False, 1.0, f"line {n}: seeded sampling gives other tokens")
        return Comparison(True, worst, f"max greedy margin {worst:.3g} "
                                       f"(tolerance {GREEDY_TOLERANCE:g})")

    def compare_checks(self, spec: SpecBase, payload: bytes, a: bytes, b: bytes
                       ) -> Comparison:
        """Two checkers of the same claims agree on texts, tokens and (within tolerance)
        margins."""
        la = [obj for _, obj in batch.jsonl(a, "output")]
        lb = [obj for _, obj in batch.jsonl(b, "output")]
        if len(la) != len(lb):
            return Comparison(False, 1.0, "checks differ in length")
        for n, (x, y) in enumerate(zip(la, lb, strict=True), start=1):
            if any(x.get(k) != y.get(k) for k in ("text", "token_ids", "room", "finish",
                                                  "early", "prompt_tokens")):
                return Comparison(False, 1.0, f"line {n}: checks disagree")
            if isinstance(x.get("logprobs"), list) and logprobs_agree(
                    x["logprobs"], y.get("logprobs") or [], LOGPROB_TOLERANCE) is not None:
                return Comparison(False, 1.0, f"line {n}: logprobs disagree")
            mx, my = x.get("margins") or [], y.get("margins") or []
            if not all(batch.finite(m) for m in [*mx, *my]):
                return Comparison(False, 1.0, f"line {n}: malformed margins")
            if len(mx) != len(my) or any(abs(float(p) - float(q)) > GREEDY_TOLERANCE
                                         for p, q in zip(mx, my, strict=True)):
                return Comparison(False, 1.0, f"line {n}: margins disagree")
        return Comparison(True, 0.0, "checks agree")

    def forge(self, spec: SpecBase, payload: bytes, draw: float) -> tuple[bytes, Any] | None:
        """One claimed token of one greedy line replaced by another vocabulary entry: an
        honest re-scoring shows a margin above tolerance there; a rubber-stamp does not."""
        lines = [obj for _, obj in batch.jsonl(payload, "payload")]
        spots = [(n, k) for n, obj in enumerate(lines) if not obj.get("temperature")
                 for k in range(len(obj.get("token_ids") or []))]
        if not spots:
            return None
        n, k = spots[min(int(draw * len(spots)), len(spots) - 1)]
        ids = list(lines[n]["token_ids"])
        ids[k] = (ids[k] + 1 + int(draw * 997) % 500) % FORGE_VOCAB
        lines[n] = {**lines[n], "token_ids": ids}
        return b"".join(batch.dumps(obj) for obj in lines), {"line": n, "token": k}

    def noticed(self, spec: SpecBase, marker: Any, output: bytes) -> bool:
        checks = [obj for _, obj in batch.jsonl(output, "output")]
        try:
            margins = checks[int(marker["line"])]["margins"]
            return float(margins[int(marker["token"])]) > GREEDY_TOLERANCE
        except (IndexError, KeyError, TypeError, ValueError):
            return True  # a check that does not even have the shape is no rubber-stamp

    def meter_check(self, spec: SpecBase, payload: bytes, output: bytes) -> int:
        """A check bills the prompt plus the tokens it re-scored or re-generated."""
        reqs = [obj for _, obj in batch.jsonl(payload, "shard")]
        checks = [obj for _, obj in batch.jsonl(output, "output")]
        if len(reqs) != len(checks):
            raise InvalidInput("the check needs one line per claimed line", field="output")
        units = 0
        for r, chk in zip(reqs, checks, strict=True):
            if not isinstance(chk, dict) or chk.get("custom_id") != r["custom_id"]:
                raise InvalidInput("check lines must follow the payload", field="output")
            prompt = chk.get("prompt_tokens")
            if not isinstance(prompt, int) or isinstance(prompt, bool) or prompt < 0:
                raise InvalidInput("prompt_tokens must be a non-negative integer",
                                   field="output")
            regenerated = chk.get("token_ids")
            done: list[Any] = regenerated if isinstance(regenerated, list) else r["token_ids"]
            units += prompt + len(done)
        return units

    def assemble(self, job_id: str, spec: SpecBase, outputs: list[bytes]) -> bytes:
        model = self.model(spec).name
        lines = [line for out in outputs for _, line in batch.jsonl(out, "output")]
        return b"".join(
            batch.dumps(batch.output_line(job_id, group[0]["custom_id"],
                                          completion_body(job_id, model, group)))
            for group in group_choices(lines))
