"""Sealed OpenAI batches: the ``/v1`` batch API with the coordinator kept blind.

An OpenAI batch uploads its requests as a plaintext file. The sealed option
keeps the API and changes what travels: the client splits and seals the
requests as a sealed job (``deai.client.sealed``), uploads the shard envelopes
and then the manifest as ``/v1/files`` (purpose ``batch``), and creates the
batch with the manifest as its input file and DeAI's extra field
``sealed: {model, sealed_for}`` (the coordinator cannot read the model from a
sealed file). The batch's output file is the sealed job's result file; the
client decrypts it into the usual OpenAI batch output lines.

    import openai
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    b = sealed_batches.create(api, identity, requests_jsonl, sealed_for=parties)
    ...                                   # poll api.batches.retrieve(b.id) as usual
    lines = sealed_batches.output(api, identity, api.batches.retrieve(b.id))

``api`` is an ``openai.OpenAI`` client (any object with its ``files`` and
``batches`` methods); ``identity`` is the key of the account the API key
belongs to (the job key is wrapped to it, and to each of ``sealed_for``: pick
them with ``deai.client.sealed.parties``, which adds the network's verifiers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deai.client import sealed as sealing
from deai.core import batch, specs
from deai.core.errors import InvalidInput

if TYPE_CHECKING:
    from deai.client.keys import Identity

ENDPOINTS = {"/v1/embeddings": "embeddings"}
"""The batch endpoints whose kind seals (``core.sealed.KINDS``)."""


def _spec(endpoint: str, model: str, sealed_for: list[str] | None = None) -> dict[str, Any]:
    kind = ENDPOINTS.get(endpoint)
    if kind is None:
        raise InvalidInput(f"endpoint: sealed batches run {', '.join(ENDPOINTS)}",
                           field="endpoint")
    spec: dict[str, Any] = {"kind": kind, "model": model, "max_price": 0}
    if sealed_for is not None:
        spec.update(sealed=True, sealed_for=sorted(set(sealed_for)))
    return spec


def _model(requests: bytes) -> str:
    for _, obj in batch.jsonl(requests):
        body = obj.get("body") if isinstance(obj, dict) else None
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return str(body["model"])
        break
    raise InvalidInput("input: the first line needs body.model", field="input")


def create(api: Any, identity: Identity, requests: bytes, *, sealed_for: list[str],
           endpoint: str = "/v1/embeddings", metadata: dict[str, str] | None = None) -> Any:
    """Seal ``requests`` (OpenAI batch JSONL) to ``sealed_for`` and the owner, upload the
    envelopes and the manifest, and create the batch; returns the ``Batch``."""
    model = _model(requests)
    spec = _spec(endpoint, model, sealed_for)
    si = sealing.seal_input(specs.parse_spec(spec), requests, identity.id)
    for i, (blob, _, _) in enumerate(si.shards):
        api.files.create(file=(f"sealed-{si.seal}-{i}.json", blob), purpose="batch")
    manifest = api.files.create(file=(f"sealed-{si.seal}.json", si.manifest().to_bytes()),
                                purpose="batch")
    return api.batches.create(
        input_file_id=manifest.id, endpoint=endpoint, completion_window="24h",
        metadata=metadata,
        extra_body={"sealed": {"model": model, "sealed_for": spec["sealed_for"]}})


def output(api: Any, identity: Identity, done: Any) -> bytes:
    """A completed sealed batch's output file, decrypted: OpenAI batch output lines."""
    if not done.output_file_id:
        raise InvalidInput(f"batch {done.id} has no output file (status {done.status})",
                           field="batch")
    raw = api.files.content(done.output_file_id).read()
    return sealing.open_results(raw, done.id, _spec(done.endpoint, done.model), identity)
