"""Every request and response body of the OpenAI-compatible API (/v1), in one place.

Inputs forbid unknown fields (OpenAI answers "Unrecognized request argument"
too). Fields are typed loosely where OpenAI's are, so that a parameter DeAI
does not implement (tools, json_schema, penalties) reaches ``compat`` and is
refused there in OpenAI's words, naming it; it is accepted only at its
default, so a request never silently means something else here than at
OpenAI. ``compat.parse`` turns validation errors into OpenAI's wording too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


# OpenAI's bounds on ``metadata``: 16 pairs, keys of 64 characters, values of 512 at most.
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)],
                          Annotated[str, Field(max_length=512)]], Field(max_length=16)]


# --- models -------------------------------------------------------------------------------

class ModelOut(Out):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "deai"


class ModelList(Out):
    object: Literal["list"] = "list"
    data: list[ModelOut]


# --- embeddings ---------------------------------------------------------------------------

class EmbeddingsIn(In):
    model: str = Field(min_length=1, max_length=200)
    # Token ids (one list, or one per input) are read with the model's own tokenizer:
    # ``coordinator.openai.tokens``.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)


# --- chat ---------------------------------------------------------------------------------

class ContentPart(In):
    type: str
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


class MessageIn(In):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=64)
    # Sent back by clients that replay an assistant turn; DeAI refuses them when set.
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None
    audio: Any = None


class StreamOptions(In):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ResponseFormat(In):
    type: str
    json_schema: dict[str, Any] | None = None


class ChatIn(In):
    model: str = Field(min_length=1, max_length=200)
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    service_tier: str | None = None
    user: str | None = Field(default=None, max_length=256)
    store: bool | None = None
    metadata: Metadata | None = None

    def deai_body(self) -> dict[str, Any]:
        """The body of a DeAI chat input line (``core.kinds.chat``); ``compat.check_chat``
        has refused whatever it cannot express."""
        msgs = []
        for m in self.messages:
            text = m.content if isinstance(m.content, str) else "".join(
                p.text or "" for p in m.content or [])
            msgs.append({"role": "system" if m.role == "developer" else m.role,
                         "content": text})
        body: dict[str, Any] = {"model": self.model, "messages": msgs}
        for key in ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                    "stop", "n"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.logprobs:
            body["logprobs"] = True
            if self.top_logprobs is not None:
                body["top_logprobs"] = self.top_logprobs
        if self.response_format is not None and self.response_format.type != "text":
            body["response_format"] = {"type": self.response_format.type}
        return body


# --- files and batches --------------------------------------------------------------------

class FileOut(Out):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None


class FileList(Out):
    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(Out):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class SealedBatchIn(In):
    """DeAI's extra field (``extra_body={"sealed": ...}``): the input file is a sealed job's
    manifest (``deai.client.sealed_batches``), which the coordinator cannot read for the
    model, so the batch names it; ``sealed_for``: the parties that hold the job key."""

    model: str = Field(min_length=1, max_length=200)
    sealed_for: list[str] = Field(min_length=1, max_length=64)


class BatchIn(In):
    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: str
    completion_window: str = "24h"
    metadata: Metadata | None = None
    output_expires_after: dict[str, Any] | None = None
    sealed: SealedBatchIn | None = None


class RequestCounts(Out):
    total: int
    completed: int
    failed: int


class BatchError(Out):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchErrors(Out):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchOut(Out):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    model: str | None = None


class BatchList(Out):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
