"""The OpenAI-compatible routes under /v1, authenticated with ``Authorization: Bearer``.

    GET  /v1/models                     embeddings and chat models online providers serve
    POST /v1/embeddings                 one request = one one-task job (gateway)
    POST /v1/chat/completions           the same; "stream": true answers server-sent events
    POST /v1/files                      multipart upload, purpose "batch"
    GET  /v1/files, GET /v1/files/{id}[/content], DELETE /v1/files/{id}
    POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel

JSON bodies are read as plain JSON and checked by ``compat``, so every refusal
reads like OpenAI's and names its parameter.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from deai.coordinator import idempotency, provider_index
from deai.coordinator.auth import coordinator
from deai.coordinator.openai import batches, compat, files, gateway, keys, tokens
from deai.coordinator.openai import schemas as S
from deai.coordinator.openai.errors import ApiError, to_api_error
from deai.coordinator.openai.relay import Relay, budget, relay_of
from deai.coordinator.service import Coordinator
from deai.core import batch, catalog
from deai.core.errors import AuthError, InvalidInput, PayloadTooLarge
from deai.core.kinds import chat as chat_kind
from deai.core.kinds import embeddings as emb_kind

log = logging.getLogger("deai.v1")
router = APIRouter(prefix="/v1")
C = Annotated[Coordinator, Depends(coordinator)]


async def api_key(request: Request) -> keys.KeyInfo:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("You didn't provide an API key. Send it as 'Authorization: Bearer "
                        "sk-deai-...' (mint one with `deai keys api-key create`).")
    c: Coordinator = request.app.state.coordinator
    return await run_in_threadpool(keys.authenticate, c, token.strip())


Key = Annotated[keys.KeyInfo, Depends(api_key)]
Json = Annotated[Any, Body()]
SERVED_WORKLOADS = frozenset(gateway.URLS)  # what /v1 runs: not sandboxes, not training


async def _start(c: Coordinator, key: keys.KeyInfo, workload: str,
                 payload: dict[str, Any]) -> gateway.Started:
    """``gateway.start``, its refusals worded as OpenAI words them."""
    try:
        return await run_in_threadpool(gateway.start, c, key, workload, payload)
    except InvalidInput as exc:
        if exc.field in (None, "stream") or type(exc) is not InvalidInput:
            raise
        msg = exc.message.removeprefix(f"{exc.field}: ").rstrip(".")
        raise ApiError(400, f"Invalid value for '{exc.field}': {msg}.", code="invalid_value",
                       param=exc.field) from None


# --- models -------------------------------------------------------------------------------

def _served(c: Coordinator) -> list[str]:
    with c.db.read() as s:
        providers = provider_index.of(c).states(s)
    names = {o.model for p in providers for o in p.offers}
    return [m.name for m in catalog.CATALOG
            if m.name in names and m.workload in SERVED_WORKLOADS]


@router.get("/models", response_model=S.ModelList)
def models(c: C, _: Key) -> S.ModelList:
    return S.ModelList(data=[S.ModelOut(id=m) for m in _served(c)])


@router.get("/models/{model:path}", response_model=S.ModelOut)
def model(model: str, c: C, _: Key) -> S.ModelOut:
    if model not in _served(c):
        raise ApiError(404, f"The model `{model}` does not exist or is not served by any "
                            "online provider.", code="model_not_found", param="model")
    return S.ModelOut(id=model)


# --- embeddings ---------------------------------------------------------------------------

def _f32_base64(vec: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


@router.post("/embeddings")
async def embeddings(raw: Json, request: Request, c: C, key: Key) -> JSONResponse:
    body = compat.parse(S.EmbeddingsIn, raw)
    info = catalog.lookup(body.model, field="model", workload="embeddings")
    if body.dimensions is not None and body.dimensions != info.dims:
        raise ApiError(400, f"{info.name} has {info.dims} dimensions; it cannot be shortened",
                       param="dimensions")
    texts: Any = body.input
    if tokens.is_token_input(body.input):
        texts = await run_in_threadpool(tokens.texts, info.name, body.input)  # type: ignore[arg-type]
    started = await _start(c, key, "embeddings", {"model": body.model, "input": texts})
    out = await gateway.wait_output(c, started, key.account, request)
    line = next(obj for _, obj in batch.jsonl(out, "output"))
    resp = emb_kind.response_body(started.model, line)
    if body.encoding_format == "base64":
        for d in resp["data"]:
            d["embedding"] = _f32_base64(d["embedding"])
    return JSONResponse(resp, headers={"x-deai-job": started.job_id})


# --- chat ---------------------------------------------------------------------------------

def _chat_id(job_id: str) -> str:
    return f"chatcmpl-{job_id}"


@router.post("/chat/completions", response_model=None)
async def chat_completions(raw: Json, request: Request, c: C, key: Key,
                           relay: Annotated[Relay, Depends(relay_of)]) -> Response:
    body = compat.parse(S.ChatIn, raw)
    compat.check_chat(body)
    payload = body.deai_body()
    if body.stream:
        payload["stream"] = True  # the provider reports tokens as it makes them
    try:
        started = await _start(c, key, "chat", payload)
    except InvalidInput as exc:
        if exc.field == "stream":  # a chat kind without streaming: fall back to whole chunks
            payload.pop("stream")
            started = await _start(c, key, "chat", payload)
        else:
            raise
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(c, relay, started, key.account, usage, request,
                                         choices=body.n or 1,
                                         max_tokens=body.max_tokens
                                         or body.max_completion_tokens
                                         or chat_kind.DEFAULT_MAX_TOKENS),
                                 media_type="text/event-stream",
                                 headers={"x-deai-job": started.job_id,
                                          "cache-control": "no-cache"})
    out = await gateway.wait_output(c, started, key.account, request)
    lines = [obj for _, obj in batch.jsonl(out, "output")]
    resp = chat_kind.completion_body(started.job_id, started.model, lines)
    resp["id"], resp["created"] = _chat_id(started.job_id), int(time.time())
    return JSONResponse(resp, headers={"x-deai-job": started.job_id})


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(c: Coordinator, relay: Relay, started: gateway.Started, owner: str,
                  include_usage: bool, request: Request | None = None, *, choices: int = 1,
                  max_tokens: int = chat_kind.MAX_TOKENS) -> AsyncIterator[bytes]:
    """The answer as server-sent events. A caller that hangs up before any text reached it
    cancels the job (its escrow comes back whole, the provider is told to drop the task);
    once a delta was relayed the caller holds part of the answer, so the job runs on and
    is billed like an answered request (``gateway.mark_streamed``, before the first delta
    leaves). Starlette notices a disconnect only when it next sends, so a quiet stream asks
    every second. Only deltas of the ``choices`` asked for are relayed."""
    created = int(time.time())
    cid = _chat_id(started.job_id)

    def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0,
              logprobs: Any = None) -> bytes:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": started.model, "system_fingerprint": None,
                     "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                  "finish_reason": finish}]})

    queue = relay.open(started.task_id, budget(max_tokens, choices))
    sent: dict[int, str] = {}
    marked = False  # the job is recorded as streamed (``jobs.STREAMED``): not cancelled

    async def delta(event: dict[str, Any]) -> list[bytes]:
        """A relayed event's chunks (a choice's opening one first), noted in ``sent``; an
        event of a choice not asked for (an index not in ``range(choices)``) is dropped."""
        nonlocal marked
        got = _relayable(event, choices)
        if got is None:
            return []
        index, text = got
        marked = marked or await run_in_threadpool(gateway.mark_streamed, c, started.job_id)
        out = ([chunk({"role": "assistant", "content": ""}, index=index)]
               if index not in sent and index else [])
        sent[index] = sent.get(index, "") + text
        return [*out, chunk({"content": text}, index=index)]

    finished = False
    result = asyncio.ensure_future(gateway.wait_output(c, started, owner))
    try:
        yield chunk({"role": "assistant", "content": ""})
        while not result.done():
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({result, get}, timeout=1.0,
                               return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                if request is not None and await request.is_disconnected():
                    return  # the caller left: ``finally`` cancels the job if no text reached it
                continue
            for part in await delta(get.result()):
                yield part
        while not queue.empty():  # deltas that came in with the result, in order, first
            for part in await delta(queue.get_nowait()):
                yield part
        try:
            out = result.result()
        except Exception as exc:
            finished = True
            yield _sse(to_api_error(exc).body())
            return
        lines = [obj for _, obj in batch.jsonl(out, "output")]
        ending, diverged = _ending(started.job_id, lines, sent, chunk)
        for part in ending:
            yield part
        if diverged:
            finished = True
            return
        if include_usage:
            p = int(lines[0]["prompt_tokens"])
            k = sum(int(x["completion_tokens"]) for x in lines)
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                        "model": started.model, "system_fingerprint": None, "choices": [],
                        "usage": {"prompt_tokens": p, "completion_tokens": k,
                                  "total_tokens": p + k}})
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        relay.close(started.task_id)
        result.cancel()
        if not finished and not marked:  # the caller hung up before any text: it pays
            with anyio.CancelScope(shield=True):  # nothing (even when the stream was
                await run_in_threadpool(gateway.cancel, c, owner, started.job_id)  # cancelled)


def _relayable(event: dict[str, Any], choices: int) -> tuple[int, str] | None:
    """A progress event's (choice, text), or None for one not to relay: no text, or an index
    that is not one of the ``choices`` asked for (not an integer, a boolean, out of range)."""
    text, index = event.get("text"), event.get("index", 0)
    if (isinstance(text, str) and text and isinstance(index, int)
            and not isinstance(index, bool) and 0 <= index < choices):
        return index, text
    return None


def _ending(job_id: str, lines: list[dict[str, Any]], sent: dict[int, str],
            chunk: Callable[..., bytes]) -> tuple[list[bytes], bool]:
    """The chunks that finish a stream from its recorded result ``lines``: what the relayed
    deltas (``sent``) did not cover, and each choice's finish. The deltas are the primary's
    word and the result its record: text it streamed that the record does not start with
    cannot be taken back, so the caller is told to drop the stream (a ``stream_diverged``
    error, and True) rather than left believing it; so is text streamed under a choice the
    record does not have."""
    diverged = [i for i, line in enumerate(lines)
                if not str(line["text"]).startswith(sent.get(i, ""))]
    diverged += sorted(i for i in sent if not 0 <= i < len(lines))
    if diverged:
        log.warning("job %s: streamed text differs from the recorded result (choices %s)",
                    job_id, diverged)
        return [_sse(ApiError(502, "the text streamed so far is not the provider's recorded "
                                   f"result; discard it (job {job_id} holds the result, as a "
                                   "request without stream)", "server_error",
                              "stream_diverged").body())], True
    out: list[bytes] = []
    for index, line in enumerate(lines):
        if index and index not in sent:
            out.append(chunk({"role": "assistant", "content": ""}, index=index))
        rest = str(line["text"])[len(sent.get(index, "")):]
        if rest:
            out.append(chunk({"content": rest}, index=index))
        out.append(chunk({}, str(line["finish_reason"]), index,
                         chat_kind.response_logprobs(line)))
    return out, False


# --- files --------------------------------------------------------------------------------

@router.post("/files", response_model=S.FileOut)
async def upload_file(c: C, key: Key, file: Annotated[UploadFile, File()],
                      purpose: Annotated[str, Form()], request: Request,
                      response: Response) -> S.FileOut:
    limit = c.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file is over the {limit}-byte limit", field="file",
                              limit=limit)
    name = file.filename or ""
    claim = idempotency.claim(request, key.account, "POST /v1/files", purpose.encode(),
                              name.encode(), hashlib.sha256(data).digest())
    out, replayed = await run_in_threadpool(
        idempotency.once, c, claim,
        lambda hook: batches.upload(c, key.account, name, purpose, data, hook),
        lambda file_id: batches.get_file(c, key.account, file_id))
    if replayed:
        response.headers[idempotency.REPLAYED] = "true"
    return out


@router.get("/files", response_model=S.FileList)
def list_files(c: C, key: Key, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
               order: Literal["asc", "desc"] = "desc",
               purpose: str | None = None) -> S.FileList:
    return files.list_files(c, key.account, after, limit, order, purpose)


@router.delete("/files/{file_id}", response_model=S.FileDeleted)
def delete_file(file_id: str, c: C, key: Key) -> S.FileDeleted:
    return files.delete(c, key.account, file_id)


@router.get("/files/{file_id}", response_model=S.FileOut)
def get_file(file_id: str, c: C, key: Key) -> S.FileOut:
    return batches.get_file(c, key.account, file_id)


@router.get("/files/{file_id}/content")
def file_content(file_id: str, c: C, key: Key) -> Response:
    length, pieces = batches.file_content(c, key.account, file_id)
    return StreamingResponse(pieces, media_type="application/jsonl",
                             headers={"content-length": str(length)})


# --- batches ------------------------------------------------------------------------------

@router.post("/batches", response_model=S.BatchOut)
def create_batch(raw: Json, c: C, key: Key, request: Request, response: Response
                 ) -> S.BatchOut:
    body = compat.parse(S.BatchIn, raw)
    claim = idempotency.claim(request, key.account, "POST /v1/batches",
                              idempotency.canonical(body.model_dump(mode="json")))
    out, replayed = idempotency.once(c, claim, lambda hook: batches.create(c, key, body, hook),
                                     lambda batch_id: batches.get(c, key.account, batch_id))
    if replayed:
        response.headers[idempotency.REPLAYED] = "true"
    return out


@router.get("/batches", response_model=S.BatchList)
def list_batches(c: C, key: Key, after: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> S.BatchList:
    return batches.list_batches(c, key.account, after, limit)


@router.get("/batches/{batch_id}", response_model=S.BatchOut)
def get_batch(batch_id: str, c: C, key: Key) -> S.BatchOut:
    return batches.get(c, key.account, batch_id)


@router.post("/batches/{batch_id}/cancel", response_model=S.BatchOut)
def cancel_batch(batch_id: str, c: C, key: Key) -> S.BatchOut:
    return batches.cancel(c, key.account, batch_id)
