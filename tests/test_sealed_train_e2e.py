"""Sealed training against real processes: a coordinator, two providers and the network's
verifier in the sealed set, and a cheaper provider left out of it.

A sealed training job on a user's CSV completes and verifies: its replica in the
set audits a segment of the claimed checkpoint chain, replaying it from the
recorded checkpoint it decrypts, and returns a signed verdict. The coordinator
records the chain (hashes linked from the manifest's genesis) but stores only
sealed checkpoints: reading its database, WAL and blob store byte by byte finds
neither the input's numbers nor the trained weights, though the owner decrypts
the model (``deai job results``) and it is bitwise the model an unsealed run of
the same payload ends in. The outsider holds no wrapped key and cannot open the
shard or a checkpoint. The books and the ledger audit hold.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from deai.client import keys
from deai.client import sealed as sealing
from deai.client.cli import app
from deai.core import kinds, sealed, specs
from deai.workloads import train as workload
from tests.helpers import audit_ok, check_books
from tests.netutil import Network
from tests.test_sealed_e2e import scan

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")]
MODELS = ("--models", "mlp-digits")
SPEC: dict[str, Any] = {
    "kind": "train", "model": "mlp-digits", "max_price": 1000, "deadline": 900,
    "dataset": "file", "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 3,
    "batch_size": 16, "seed": 11, "checkpoint_every": 15, "replicate": True,
}


def data() -> tuple[bytes, np.ndarray]:
    """A learnable CSV of 300 samples whose numbers are distinctive (9 decimals)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 6))
    y = ((x[:, 0] + 0.5 * x[:, 1]) > 0).astype(int)
    text = "\n".join(",".join(f"{v:.9f}" for v in row) + f",{label}"
                     for row, label in zip(x, y, strict=True)) + "\n"
    return text.encode(), x


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("sealed-train"), heartbeat_timeout=4.0,
                challenge_window=60.0, extra=("--verify-timeout", "60"), verifiers=1)
    try:
        n.start_coordinator()
    except TimeoutError:  # a heavily loaded machine is slow to start it, not broken
        n.wait_ready(timeout=900)
    try:
        for i, price in enumerate((900, 950), start=1):
            n.start_provider(f"honest-{i}", price, *MODELS)
        n.start_provider("outsider", 100, *MODELS)  # the cheapest: left out of the set
        n.start_verifier("verifier-1", *MODELS)
        n.wait_providers(3, timeout=900)  # patient: the test machine is shared
        verifier = n.key("verifier-1").id
        end = time.time() + 900
        while not any(p.id == verifier and p.online for p in n.client().providers()):
            assert time.time() < end, "the verifier did not come online"
            time.sleep(0.5)
        yield n
    finally:
        n.close()


def assignments(net: Network, job_id: str) -> list[tuple[str, str, str, str | None]]:
    db = net.root / "coordinator" / "deai.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return list(conn.execute("SELECT provider_id, role, status, output_digest "
                                 "FROM assignments WHERE job_id = ?", (job_id,)))


def weight_slices(model: bytes) -> list[bytes]:
    """The safetensors header and a few 32-byte runs of raw tensor bytes."""
    (size,) = struct.unpack("<Q", model[:8])
    body = model[8 + size:]
    runs = [body[i:i + 32] for i in range(64, len(body) - 32, max(1, len(body) // 5))]
    return [model[8:8 + min(size, 120)], *[r for r in runs if len(set(r)) > 8]]


def test_a_sealed_training_job_verifies_and_the_coordinator_holds_no_plaintext(
        net: Network) -> None:
    c = net.client("client")
    c.faucet(1_000_000_000)
    outsider = keys.load("outsider")
    verifier = keys.load("verifier-1").id
    honest = [keys.load(f"honest-{i}").id for i in (1, 2)]
    parties = [*honest, verifier]
    csv, x = data()

    job = sealing.submit(c, SPEC, csv, sealed_for=parties)
    assert job.spec["sealed"] is True and job.spec["kind"] == "train"
    assert net.wait_job(c, job.id, timeout=900) == "completed", net.logs()

    # Verified inside the set: the replica's segment audit agreed, under its signature.
    rows = assignments(net, job.id)
    assert {r[0] for r in rows} <= set(parties), rows
    replicas = [r for r in rows if r[1] == "replica" and r[2] == "accepted"]
    assert replicas, rows
    env = sealed.parse_envelope(c.download(replicas[0][3] or ""))
    assert env.verdict is not None and env.verdict.subject, env.verdict
    assert "replay bitwise" in env.verdict.detail

    # The chain is recorded; every checkpoint blob is an envelope, the chain's digests are
    # the plaintext's, stated beside it.
    cps = c.checkpoints(job.id)
    primary = [cp for cp in cps if cp["role"] == "primary"]
    assert [cp["step"] for cp in primary] == [15, 30, 45]
    for cp in primary:
        assert sealed.is_envelope(c.download(cp["digest"]))
        assert set(cp["meta"]) == {"start", "seed", "plain"}

    # The owner decrypts the result and the model; both are an unsealed run's, bitwise.
    result = json.loads(sealing.results(c, job.id))
    payload = kinds.get("train").split(specs.parse_spec(SPEC), csv)[0].payload
    clean = json.loads(workload.train(payload)[0])
    assert result["chain"] == clean["chain"] and result["model_digest"] == clean["model_digest"]
    assert [cp["meta"]["plain"] for cp in primary] == [ln["digest"] for ln in clean["chain"]]
    model = sealing.model(c, job.id, result)
    assert model is not None and workload.metadata(model)["deai"]
    raw = c.results(job.id)
    assert b"model_digest" not in raw and b"chain" not in raw
    out = net.root / "r.jsonl"
    said = CliRunner().invoke(app, ["job", "results", job.id, "-o", str(out),
                                    "--coordinator", net.url, "--key", "client"])
    assert said.exit_code == 0, said.output
    assert (net.root / "r.model.safetensors").read_bytes() == model

    # Nothing the coordinator stores holds the input's numbers or the weights.
    numbers = [f"{v:.9f}".encode() for v in x[:3].ravel()]
    packed = json.loads(payload)["x"]
    raw_x = base64.b64decode(packed)
    needles = [*numbers, csv[:60], packed[100:160].encode(), raw_x[64:96],
               *weight_slices(model)]
    patterns = [re.compile(rb"deai\.train\.ckpt\.v1"), re.compile(rb'"format":"deai\.train'),
                re.compile(rb'"test_accuracy"'), re.compile(rb'"model\.[a-z0-9_.]+"')]
    root = net.root / "coordinator"
    assert len(needles) > 10
    assert scan(root, needles, patterns) == []
    marker = b"control plaintext that the scan must find 51c2"
    c.upload(marker)
    assert scan(root, [marker], []) != []  # the scan does read what is there

    # A provider outside the set holds no key to the shard nor to any checkpoint.
    db = net.root / "coordinator" / "deai.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (manifest,) = conn.execute("SELECT input_digest FROM jobs WHERE id = ?",
                                   (job.id,)).fetchone()
    shard_env = sealed.parse_envelope(c.download(
        sealed.parse_manifest(c.download(manifest), c._me(), tuple(parties)).shards[0].digest))
    assert outsider.id not in shard_env.keys
    for wrapped in shard_env.keys.values():
        with pytest.raises(sealing.SealError):
            sealing.unwrap(wrapped, outsider)
    with pytest.raises(sealing.SealError):
        sealing.open_key(shard_env.keys, outsider)
    key = sealing.open_key(shard_env.keys, keys.load("honest-1"))  # a party can
    ckpt = sealed.parse_envelope(c.download(primary[0]["digest"]))
    plain = sealing.open_checkpoint(key, ckpt, shard_env.seal, 0)
    assert workload.metadata(plain)["deai"]
    with pytest.raises(sealing.SealError):  # a key that is not the job's opens nothing
        sealing.open_checkpoint(bytes(32), ckpt, shard_env.seal, 0)

    check_books(c, job.id)
    audit_ok(c)
