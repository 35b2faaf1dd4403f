"""An account keeps at most ``MAX_LIVE_FILES`` uploaded /v1 files.

The same bytes uploaded again cost no quota (``blob_quota`` counts a digest once per
account), yet each upload added a file record: an account that holds no money could
make records without end (as it could API keys, before their cap). Now an upload past
``batches.MAX_LIVE_FILES`` is refused (409, naming ``file``) until one is deleted.
The account is brought to the cap by writing records into the coordinator's database
directly (ten thousand uploads would only make the test slow), then uploads go over
HTTP to the real coordinator.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from deai.client.keys import Identity
from deai.client.sdk import Client
from deai.coordinator.openai.batches import MAX_LIVE_FILES
from tests.netutil import Network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("v1-files"), verify=False,
                extra=("--blob-quota-bytes", "1000"))
    n.start_coordinator()
    yield n
    n.close()


def test_file_records_stop_at_the_cap_and_free_up_on_delete(net: Network) -> None:
    me = Identity.generate()
    poor = Client(net.url, me)  # never funded
    key = poor.create_api_key("k").key
    assert key is not None
    with httpx.Client(base_url=net.url, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as h:
        def upload() -> httpx.Response:
            return h.post("/v1/files", data={"purpose": "batch"},
                          files={"file": ("f.jsonl", b"x" * 900)})

        first = upload()
        assert first.status_code == 200, first.text
        with sqlite3.connect(net.root / "coordinator" / "deai.sqlite3", timeout=60) as db:
            (digest,) = db.execute("SELECT digest FROM api_files WHERE id = ?",
                                   (first.json()["id"],)).fetchone()
            now = time.time()
            db.executemany(
                "INSERT INTO api_files (id, account, purpose, filename, size, digest, "
                "created_at) VALUES (?, ?, 'batch', 'f.jsonl', 900, ?, ?)",
                [(f"file-{secrets.token_hex(12)}", me.id, digest, now - 1)
                 for _ in range(MAX_LIVE_FILES - 2)])
        last = upload()  # the account's MAX_LIVE_FILES-th: still taken
        assert last.status_code == 200, last.text
        over = upload()
        assert over.status_code == 409, over.text
        err = over.json()["error"]
        assert err["param"] == "file" and err["code"] == "files_limit", err
        other = h.post("/v1/files", data={"purpose": "batch"},
                       files={"file": ("g.jsonl", b"y" * 10)})
        assert other.status_code == 409, other.text  # new bytes too: the cap is on records
        assert h.delete(f"/v1/files/{last.json()['id']}").status_code == 200
        again = upload()
        assert again.status_code == 200, again.text
        listed = h.get("/v1/files", params={"limit": 10_000}).json()
        assert len(listed["data"]) == MAX_LIVE_FILES and not listed["has_more"]
