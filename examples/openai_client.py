"""Use DeAI through the official openai client: only the base URL and the key change.

    deai keys api-key create --key client           # prints sk-deai-...
    python examples/openai_client.py --base-url http://127.0.0.1:8000/v1 --api-key sk-deai-...

``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` work too. ``main(base_url, api_key)``
returns an exit status, so ``make demo`` can call it against its devnet.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import openai

EMB, CHAT = "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct"


def main(base_url: str, api_key: str) -> int:
    client = openai.OpenAI(base_url=base_url, api_key=api_key)
    served = [m.id for m in client.models.list()]
    print("models served:", ", ".join(served) or "none")

    if EMB in served:
        r = client.embeddings.create(model=EMB, input=["DeAI runs on idle GPUs.",
                                                      "Verified compute, paid per use."])
        print(f"embeddings: {len(r.data)} vectors of {len(r.data[0].embedding)} dims, "
              f"{r.usage.prompt_tokens} tokens")

    if CHAT in served:
        question = [{"role": "user", "content": "What is the capital of France?"}]
        r = client.chat.completions.create(model=CHAT, messages=question,  # type: ignore[arg-type]
                                           max_tokens=16, temperature=0)
        print("chat:", r.choices[0].message.content)
        print("stream: ", end="", flush=True)
        for chunk in client.chat.completions.create(
                model=CHAT, messages=question, max_tokens=16, temperature=0,  # type: ignore[arg-type]
                stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()

    model, url = (EMB, "/v1/embeddings") if EMB in served else (CHAT, "/v1/chat/completions")
    body = ({"model": model, "input": "batch line {i}"} if model == EMB else
            {"model": model, "messages": [{"role": "user", "content": "Say {i}."}],
             "max_tokens": 4})
    lines = "".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": url,
                                "body": json.loads(json.dumps(body).replace("{i}", str(i)))})
                    + "\n" for i in range(3))
    f = client.files.create(file=("example.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=url,  # type: ignore[arg-type]
                              completion_window="24h")
    while b.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.5)
        b = client.batches.retrieve(b.id)
    print(f"batch {b.id}: {b.status}")
    if b.status != "completed" or not b.output_file_id:
        return 1
    for line in client.files.content(b.output_file_id).text.splitlines():
        out = json.loads(line)
        print(f"  {out['custom_id']}: HTTP {out['response']['status_code']}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL",
                                                         "http://127.0.0.1:8000/v1"))
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    a = ap.parse_args()
    if not a.api_key:
        ap.error("give --api-key or set OPENAI_API_KEY (deai keys api-key create)")
    sys.exit(main(a.base_url, a.api_key))
