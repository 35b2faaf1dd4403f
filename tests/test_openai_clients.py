"""Clients nobody here wrote, unmodified, against a live network: the official ``openai``
client (sync and async), ``langchain-openai`` with its defaults and ``litellm``.

One coordinator and one provider process serving all-MiniLM-L6-v2, SmolLM2-135M-
Instruct and a training recipe (which /v1/models must not list). Verification is
off here; ``test_options_are_verified_end_to_end`` runs the new chat options under
full replication and checks that honest work completes unflagged. What each client
does on each path is summarised in docs/compatibility.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from deai.client.sdk import Client
from tests.helpers import LENIENT_HW
from tests.netutil import Network

pytestmark = pytest.mark.slow
EMB, CHAT = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"
HI = [{"role": "user", "content": "What is the capital of France?"}]
CAT = [{"role": "user", "content": "Describe a cat as a JSON object with name and age."}]
# litellm fetches a price list from GitHub at import unless told to use its own copy;
# its bundled copy of tiktoken's cl100k_base is what LangChain's default tokenizer needs.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _tiktoken_cache() -> None:
    import litellm

    folder = Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("clients"), verify=False, challenge_window=1.0)
    n.env.update(LENIENT_HW)
    n.start_coordinator()
    n.start_provider("all", 1000, "--models", f"{EMB},{CHAT},mlp-digits")
    try:
        n.wait_providers(1, timeout=600)
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def key(net: Network) -> str:
    c: Client = net.client("clients")
    c.faucet(10_000_000_000)
    made = c.create_api_key("clients").key
    assert made is not None
    return made


@pytest.fixture(scope="module")
def api(net: Network, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{net.url}/v1", api_key=key, max_retries=0) as client:
        yield client


# --- openai, sync ---------------------------------------------------------------------------

def test_models_are_only_models(api: openai.OpenAI) -> None:
    assert {m.id for m in api.models.list()} == {EMB, CHAT}
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("mlp-digits")


def test_chat_parameters(api: openai.OpenAI) -> None:
    r = api.chat.completions.create(model=CHAT, messages=HI, max_tokens=12, temperature=0,
                                    stop=["."], logprobs=True, top_logprobs=2, n=2, seed=5,
                                    response_format={"type": "text"})
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.finish_reason in ("stop", "length") and "." not in (c.message.content or "")
        assert c.logprobs is not None and c.logprobs.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in c.logprobs.content)
    assert "".join(t.token for t in r.choices[0].logprobs.content) == r.choices[0].message.content
    j = api.chat.completions.create(model=CHAT, messages=CAT, max_tokens=60, temperature=0,
                                    response_format={"type": "json_object"})
    text = j.choices[0].message.content or ""
    assert text.startswith("{")
    if j.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_streamed_choices_match_the_answer(api: openai.OpenAI) -> None:
    whole = api.chat.completions.create(model=CHAT, messages=HI, max_tokens=10, temperature=0,
                                        n=2, stop=["Paris"])
    chunks = list(api.chat.completions.create(model=CHAT, messages=HI, max_tokens=10,
                                              temperature=0, n=2, stop=["Paris"], stream=True))
    for c in whole.choices:
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks
                           if ch.choices and ch.choices[0].index == c.index)
        assert streamed == c.message.content and "Paris" not in streamed


@pytest.mark.parametrize(("kw", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     "response_format.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"n": 99}, "n"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"temperature": "hot"}, "temperature"),
])
def test_refusals_are_openai_shaped(api: openai.OpenAI, kw: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=CHAT, messages=HI, max_tokens=4, **kw)
    assert exc.value.param == param and param.split(".")[0] in exc.value.message
    assert "Input should" not in exc.value.message


def test_embeddings_from_token_ids(api: openai.OpenAI) -> None:
    from deai.coordinator.openai import tokens

    ids = tokens._tokenizer(EMB).encode("hello world", add_special_tokens=False).ids
    by_ids = api.embeddings.create(model=EMB, input=[ids], encoding_format="float")
    by_text = api.embeddings.create(model=EMB, input=["hello world"], encoding_format="float")
    assert by_ids.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError) as exc:
        api.embeddings.create(model=EMB, input=[[9906, 1917, 11, 420, 374, 264, 1296, 13]])
    assert "check_embedding_ctx_length=False" in exc.value.message


def test_files_list_and_delete(api: openai.OpenAI) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": EMB, "input": "x"}}
    made = [api.files.create(file=(f"f{i}.jsonl", io.BytesIO(json.dumps(line).encode())),
                             purpose="batch") for i in range(3)]
    listed = [f.id for f in api.files.list(limit=2)]  # auto-paging over pages of two
    assert [f.id for f in reversed(made)] == [x for x in listed if x in {f.id for f in made}]
    gone = api.files.delete(made[0].id)
    assert gone.deleted and gone.id == made[0].id
    assert made[0].id not in [f.id for f in api.files.list()]
    with pytest.raises(openai.NotFoundError):
        api.files.retrieve(made[0].id)
    with pytest.raises(openai.NotFoundError):
        api.files.delete(made[0].id)


# --- openai, async --------------------------------------------------------------------------

def test_async_client(net: Network, key: str) -> None:
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=f"{net.url}/v1", api_key=key,
                                      max_retries=0) as client:
            chat, emb = await asyncio.gather(
                client.chat.completions.create(model=CHAT, messages=HI, max_tokens=8,
                                               temperature=0, stop=["\n"], n=2),
                client.embeddings.create(model=EMB, input=["a", "b"]))
            assert len(chat.choices) == 2 and len(emb.data) == 2
            stream = await client.chat.completions.create(
                model=CHAT, messages=HI, max_tokens=8, temperature=0, stream=True,
                stream_options={"include_usage": True})
            text = "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices])
            assert text == chat.choices[0].message.content or text.startswith(
                chat.choices[0].message.content or "")
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model=CHAT, messages=HI, tools=[
                    {"type": "function", "function": {"name": "f", "parameters": {}}}])
            page = await client.files.list()
            assert page.object == "list"

    asyncio.run(main())


# --- langchain-openai, defaults -------------------------------------------------------------

def test_langchain_chat(net: Network, key: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=CHAT, base_url=f"{net.url}/v1", api_key=key, max_retries=0)
    answer = llm.invoke("What is the capital of France?")  # sampled: temperature 1
    assert str(answer.content) and answer.response_metadata["finish_reason"] in ("stop",
                                                                                 "length")
    greedy = ChatOpenAI(model=CHAT, base_url=f"{net.url}/v1", api_key=key, max_retries=0,
                        temperature=0)
    assert "Paris" in str(greedy.invoke("What is the capital of France?").content)
    assert "".join(str(c.content) for c in llm.stream("Say hi."))
    stopped = llm.bind(stop=["\n"]).invoke("Count from 1 to 5.")
    assert "\n" not in str(stopped.content)
    # greedy: a sampled tiny model may write one long string until the token limit, which
    # langchain's structured path turns into LengthFinishReasonError
    json_llm = greedy.bind(response_format={"type": "json_object"}, max_tokens=200)
    assert str(json_llm.invoke("A cat as JSON with name and age.").content).startswith("{")
    with pytest.raises(openai.BadRequestError) as exc:
        llm.bind_tools([{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {}}}}]).invoke("hi")
    assert exc.value.param == "tools"


@pytest.mark.filterwarnings("ignore::UserWarning:pydantic.*")  # litellm, for tiktoken's file
def test_langchain_embeddings(net: Network, key: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    _tiktoken_cache()
    default = OpenAIEmbeddings(model=EMB, base_url=f"{net.url}/v1", api_key=key,
                               max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:  # tiktoken ids: told what to set
        default.embed_query("The quick brown fox jumps over the lazy dog.")
    assert "check_embedding_ctx_length=False" in exc.value.message
    text = OpenAIEmbeddings(model=EMB, base_url=f"{net.url}/v1", api_key=key, max_retries=0,
                            check_embedding_ctx_length=False)
    vecs = text.embed_documents(["hello", "world"])
    assert len(vecs) == 2 and len(vecs[0]) == 384


# --- litellm --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning:pydantic.*")  # raised inside litellm
def test_litellm(net: Network, key: str) -> None:
    import litellm

    kw = {"api_base": f"{net.url}/v1", "api_key": key}
    r = litellm.completion(model=f"openai/{CHAT}", messages=HI, max_tokens=8, temperature=0,
                           stop=["\n"], n=2, **kw)
    assert len(r.choices) == 2 and "Paris" in (r.choices[0].message.content or "")
    e = litellm.embedding(model=f"openai/{EMB}", input=["hello", "world"], **kw)
    assert len(e.data) == 2 and len(e.data[0]["embedding"]) == 384
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(model=f"openai/{CHAT}", messages=HI, max_tokens=4,
                           response_format={"type": "json_schema", "json_schema": {
                               "name": "x", "schema": {"type": "object"}}}, **kw)


# --- the options under verification ---------------------------------------------------------

@pytest.mark.timeout(1200)
def test_options_are_verified_end_to_end(tmp_path: Path) -> None:
    """Every new provider's work is replicated and re-checked: stop, n, logprobs and JSON
    results of honest providers complete, unflagged."""
    n = Network(tmp_path, challenge_window=1.0)
    n.env.update(LENIENT_HW)
    n.start_coordinator()
    try:
        for name in ("v1", "v2"):
            n.start_provider(name, 1000, "--models", CHAT)
        n.wait_providers(2, timeout=600)
        c = n.client("verified")
        c.faucet(1_000_000_000)
        key = c.create_api_key().key
        assert key is not None
        with openai.OpenAI(base_url=f"{n.url}/v1", api_key=key, max_retries=0) as client:
            jobs = []
            for kw in ({"temperature": 0, "stop": ["."], "logprobs": True, "top_logprobs": 1},
                       {"temperature": 0.8, "seed": 3, "n": 2, "stop": ["\n"]},
                       {"temperature": 0, "response_format": {"type": "json_object"}}):
                raw = client.chat.completions.with_raw_response.create(
                    model=CHAT, messages=CAT, max_tokens=16, **kw)
                raw.parse()
                jobs.append(raw.headers["x-deai-job"])
        for job_id in jobs:
            assert n.wait_job(c, job_id, timeout=300) == "completed", n.logs()
            assert len(c.job(job_id).providers) == 2  # the replica agreed
        assert all(p.stake > 0 and p.online for p in c.providers())
    finally:
        n.close()
