"""Text a request carries is text: a lone UTF-16 surrogate or a NUL never gets in.

``"\\ud800"`` is valid JSON, yet no string UTF-8 (a response, PostgreSQL) can carry.
Before, it got in: ``/v1/batches`` metadata holding one committed the batch and
escrowed its job, then answered 500, and the account's batch list answered 500 from
then on; a chat message's content raised ``UnicodeEncodeError`` (500); a role holding
one was echoed into an error that could not be encoded. A NUL in a URL path parameter
(``/api/volumes/{ref}``, ``/api/clusters/{cluster_id}``, ...) was a 500 on PostgreSQL.
Now ``json_scan.json_problem`` refuses a body holding a lone surrogate in any string or
key (422, 400 on /v1, naming the field), ``limits.plain_url`` refuses a NUL in any
route's path parameter or query string (naming the parameter), and the chat kind
refuses both in batch files and provider output. ``metadata`` is bounded as OpenAI
bounds it (16 pairs, keys of 64 characters, values of 512).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from deai.client.sdk import Client
from deai.coordinator.json_scan import json_problem
from deai.coordinator.openai import compat
from deai.coordinator.openai import schemas as S
from deai.coordinator.openai.errors import ApiError
from deai.core.errors import InvalidInput
from deai.core.kinds.chat import URL, ChatKind, check_output
from tests.helpers import CHAT, MODEL, HandProvider, api_key, funded
from tests.netutil import Network

# --- the body check, alone ----------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    (b'{"a": "\\ud800"}', "a"),
    (b'{"a": "x\\uDFFF"}', "a"),
    (b'{"a": ["x", {"b": "\\udc00 y"}]}', "a[1].b"),
    (b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
     "messages[0].content"),
    (b'{"metadata": {"\\ud800": "v"}}', "metadata"),  # a key: its object is named
    (b'{"a": "\xed\xa0\x80"}', "a"),  # raw surrogate bytes: Python's parser takes them
    (b'["\\ud83d"]', "[0]"),  # a high half whose low half never comes
])
def test_a_lone_surrogate_is_named(body: bytes, field: str) -> None:
    problem = json_problem(body)
    assert problem is not None and problem.field == field, problem
    assert "surrogate" in problem.message


@pytest.mark.parametrize("body", [
    b'{"a": "\\ud83d\\ude00"}',  # a pair: one character (an emoji), as json.dumps writes it
    b'{"a": "\\\\ud800"}',  # an escaped backslash, then the letters "ud800"
    '{"a": "caf\u00e9 \U0001f600"}'.encode(),
    '{"a": "x"}'.encode("utf-16"),
])
def test_text_that_is_text_passes(body: bytes) -> None:
    assert json_problem(body) is None


def test_the_other_checks_still_hold() -> None:
    nan = json_problem(b'{"a": NaN}')
    assert nan is not None and nan.field == "body" and "NaN" in nan.message
    deep = json_problem(b"[" * 100 + b"]" * 100)
    assert deep is not None and "nested" in deep.message


def test_an_unknown_role_is_quoted_not_echoed() -> None:
    body = S.ChatIn(model=CHAT, messages=[S.MessageIn(role="\ud800", content="hi")])
    with pytest.raises(ApiError) as exc:
        compat.check_chat(body)
    assert exc.value.code == "invalid_value" and "\\ud800" in exc.value.message
    JSONResponse(exc.value.body())  # encodes (UTF-8): no lone surrogate in it


# --- the chat kind: batch files and provider output ----------------------------------------

KIND = ChatKind()
SPEC = KIND.parse_spec({"kind": "chat", "model": CHAT, "max_price": 500})


def _file(**body: Any) -> bytes:
    b = {"model": CHAT, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
         **body}
    return json.dumps({"custom_id": "r1", "method": "POST", "url": URL, "body": b}).encode()


@pytest.mark.parametrize(("body", "field"), [
    ({"messages": [{"role": "user", "content": "x\ud800"}]}, "messages[0].content"),
    ({"stop": ["\udfff"]}, "stop"),
])
def test_a_batch_file_with_a_lone_surrogate_is_invalid_input(body: dict[str, Any],
                                                             field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        KIND.split(SPEC, _file(**body))
    assert (exc.value.field or "").endswith(field), exc.value.field


def _output(text: str, token: str = "Hello") -> bytes:
    return json.dumps({"custom_id": "r1", "token_ids": [19556], "text": text,
                       "finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 1,
                       "logprobs": [{"token": token, "logprob": -0.5, "bytes": [72],
                                     "top_logprobs": []}]}).encode() + b"\n"


def test_provider_output_that_is_not_text_is_refused() -> None:
    (shard,) = KIND.split(SPEC, _file(logprobs=True))
    assert check_output(shard.payload, _output("Hello"))[0]["text"] == "Hello"
    for bad in (_output("Hello \ud800"), _output("Hello", token="\ud800")):
        with pytest.raises(InvalidInput):
            check_output(shard.payload, bad)


# --- NUL in a URL, on both databases (PostgreSQL refuses a NUL in text) --------------------
# (``devnet_app``, from conftest: the app in process, on SQLite and then on PostgreSQL)

@pytest.mark.parametrize(("method", "path", "field"), [
    ("GET", "/api/volumes/a%00b", "ref"), ("DELETE", "/api/volumes/a%00b", "ref"),
    ("GET", "/api/clusters/a%00b", "cluster_id"),
    ("POST", "/api/clusters/a%00b/end", "cluster_id"),
    ("POST", "/api/leases/a%00b/snapshot", "lease_id"),
    ("GET", "/api/jobs/a%00b", "job_id"),
    ("GET", "/api/ledger/balances?after=a%00b", "after"),
    ("GET", "/api/accounts/a%00b", "account"),
])
def test_a_nul_in_a_url_is_a_422_naming_it(devnet_app: TestClient, method: str, path: str,
                                           field: str) -> None:
    r = devnet_app.request(method, path, content=b"{}" if method == "POST" else None,
                           headers={"content-type": "application/json"})
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.json()["error"]["field"] == field, r.text


def test_a_nul_in_a_v1_url_is_a_400_naming_it(devnet_app: TestClient) -> None:
    r = devnet_app.get("/v1/files/file-a%00b", headers={"authorization": "Bearer sk-deai-x"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "file_id", r.text


# --- over a real coordinator: nothing is committed, nothing breaks afterwards -------------

@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("json-strings"), verify=False, heartbeat_timeout=120.0)
    n.start_coordinator()
    yield n
    n.close()


def _raw(net: Network, path: str, key: str, body: str) -> httpx.Response:
    return httpx.post(net.url + path, content=body.encode(), timeout=60,
                      headers={"authorization": f"Bearer {key}",
                               "content-type": "application/json"})


def _batch_file(net: Network, offer: tuple[str, str], url: str, body: dict[str, Any]
                ) -> tuple[Client, str, str]:
    """A provider of ``offer`` online; a funded owner, a key of its, and the id of the
    batch input file it uploaded: one request, ``body`` to ``url``."""
    HandProvider(net, offer=offer).c.heartbeat([])
    owner = funded(net)
    key = api_key(owner, "b")
    line = json.dumps({"custom_id": "a", "method": "POST", "url": url, "body": body}) + "\n"
    f = httpx.post(net.url + "/v1/files", headers={"authorization": f"Bearer {key}"},
                   data={"purpose": "batch"}, files={"file": ("in.jsonl", line.encode())},
                   timeout=60)
    assert f.status_code == 200, f.text
    return owner, key, f.json()["id"]


def test_batch_metadata_with_a_lone_surrogate_commits_nothing(net: Network) -> None:
    owner, key, fid = _batch_file(net, ("embeddings", MODEL), "/v1/embeddings",
                                  {"model": MODEL, "input": "hi"})
    h = {"authorization": f"Bearer {key}"}
    before = owner.balance().available
    # json.dumps writes the lone surrogate as the escape "\\ud800" (ensure_ascii)
    r = _raw(net, "/v1/batches", key, json.dumps({"input_file_id": fid,
                                                  "endpoint": "/v1/embeddings",
                                                  "metadata": {"k": "\ud800"}}))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "metadata.k", r.text
    assert owner.balance().available == before  # nothing escrowed
    listed = httpx.get(net.url + "/v1/batches", headers=h, timeout=60)
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
    for meta, param in [({f"k{i}": "v" for i in range(17)}, "metadata"),
                        ({"k" * 65: "v"}, "metadata"), ({"k": "v" * 513}, "metadata.k")]:
        r = httpx.post(net.url + "/v1/batches", headers=h, timeout=60,
                       json={"input_file_id": fid, "endpoint": "/v1/embeddings",
                             "metadata": meta})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith(param), r.text
    ok = httpx.post(net.url + "/v1/batches", headers=h, timeout=60,
                    json={"input_file_id": fid, "endpoint": "/v1/embeddings",
                          "metadata": {f"k{i}": "v" * 512 for i in range(16)}})
    assert ok.status_code == 200, ok.text
    assert httpx.get(net.url + "/v1/batches", headers=h, timeout=60).status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    (json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi \ud800 there"}]}),
     "messages[0].content"),
    (json.dumps({"model": CHAT, "messages": [{"role": "\ud800", "content": "hi"}]}),
     "messages[0].role"),
])
def test_a_chat_message_with_a_lone_surrogate_is_a_400(net: Network, body: str,
                                                       param: str) -> None:
    key = api_key(funded(net), "s")
    r = _raw(net, "/v1/chat/completions", key, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_a_native_body_with_a_lone_surrogate_is_a_422(net: Network) -> None:
    r = httpx.post(net.url + "/api/jobs", content=b'{"spec": {"kind": "\\ud800"}}',
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "spec.kind", r.text


def test_a_batch_file_with_a_lone_surrogate_is_a_400(net: Network) -> None:
    _, key, fid = _batch_file(net, ("chat", CHAT), "/v1/chat/completions",
                              {"model": CHAT, "messages": [{"role": "user",
                                                            "content": "x\ud800"}]})
    r = httpx.post(net.url + "/v1/batches", headers={"authorization": f"Bearer {key}"},
                   timeout=60, json={"input_file_id": fid, "endpoint": "/v1/chat/completions"})
    assert r.status_code == 400, r.text
    assert "surrogate" in r.json()["error"]["message"], r.text
