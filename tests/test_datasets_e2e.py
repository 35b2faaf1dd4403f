"""A dataset used by another account's training job, through real processes.

Account A publishes a CSV under terms and runs ``deai dataset serve`` (its own
process) to release the key; account B's training job on the dataset runs on a
real provider agent, which waits for the key, decrypts the rows and trains.
A is paid once; ``deai dataset uses`` lists the use with the model's checkpoint
chain head; after revocation B's next job is refused naming the term; the
ledger audit holds.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from deai.client import datasets
from deai.client.cli import app
from deai.client.sdk import Client
from deai.core import ledger
from deai.core.errors import DeAIError
from tests.helpers import audit_ok, journal
from tests.netutil import Network, Proc

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:sklearn.*")]

SPEC = {"kind": "train", "model": "mlp-digits", "max_price": 1000, "deadline": 600,
        "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 2, "batch_size": 16,
        "seed": 5, "checkpoint_every": 4}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=10.0, lease_ttl=120.0, challenge_window=1.0,
                verify=False)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def cli(net: Network, *args: str, ok: bool = True) -> str:
    r = CliRunner().invoke(app, [*args, "--coordinator", net.url])
    assert (r.exit_code == 0) == ok, r.output + net.logs()
    return r.output


def rows_csv(net: Network, seed: int, n: int, k: int) -> Path:
    """A labelled CSV of ``n`` rows and ``k`` features, written in the network's folder."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k)).round(3)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    data = net.root / "rows.csv"
    data.write_text("".join(",".join(f"{v:g}" for v in (*r, c)) + "\n"
                            for r, c in zip(x, y, strict=True)))
    return data


def train_served(net: Network, user: Client, ds: str, spec: Path, timeout: float) -> str:
    """Submit a training job on ``ds`` while the owner's ``deai dataset serve`` runs in its
    own process; the job id once it completed."""
    serve = Proc([sys.executable, "-m", "deai.client.cli", "dataset", "serve", "--key", "owner",
                  "--coordinator", net.url, "--interval", "0.5"],
                 net.root / "serve.log", net.env)
    try:
        out = cli(net, "dataset", "train", ds, str(spec), "--key", "user")
        job_id = re.search(r"submitted job (\S+)", out).group(1)  # type: ignore[union-attr]
        status = net.wait_job(user, job_id, timeout=timeout)
        assert status == "completed", net.logs() + serve.tail()
        return job_id
    finally:
        serve.stop()


def test_dataset_trains_another_accounts_model_and_pays_once(net: Network) -> None:
    data = rows_csv(net, 11, 80, 6)
    spec = net.root / "train.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    owner, user = net.client("owner"), net.client("user")
    user.faucet(1_000_000_000)
    net.start_provider("trainer", 500, "--models", "mlp-digits")
    net.wait_providers(1)

    out = cli(net, "dataset", "publish", str(data), "--price-per-use", "0.25",
              "--allow", "train", "--key", "owner")
    found = re.search(r"published dataset (ds_[0-9a-f]{24})", out)
    assert found, out
    ds = found.group(1)
    assert ds in cli(net, "dataset", "list")
    before = owner.balance().available

    job_id = train_served(net, user, ds, spec, 600)

    # The owner is paid once, from the job's escrow, in a royalty entry naming both.
    royalties = [e for e in journal(user) if e.kind == "royalty"]
    assert [(e.body["dataset"], e.body["job"], e.body["owner"]) for e in royalties] == [
        (ds, job_id, owner._me())]
    assert owner.balance().available == before + 250_000
    job = user.job(job_id)
    assert job.cost + job.refunded == job.escrow
    assert audit_ok(user).balances.get(ledger.escrow(job_id), 0) == 0

    # Provenance: the use names the model and its checkpoint chain head from the result.
    result = json.loads(user.results(job_id).splitlines()[0])
    head = result["chain"][-1]["hash"]
    uses = cli(net, "dataset", "uses", ds, "--key", "owner")
    assert job_id in uses and head in uses and result["model_digest"] in uses, uses
    assert cli(net, "ledger", "audit")

    # The buyer reads the final model, not the checkpoints on the way: with few rows a
    # step, the change between two of them spells rows out.
    listed = user.checkpoints(job_id)
    assert {cp["digest"] for cp in listed} == {result["model_digest"]}, listed
    assert user.download(result["model_digest"])
    for link in result["chain"][:-1]:
        with pytest.raises(DeAIError) as exc:
            user.download(link["digest"])
        assert exc.value.status == 404
    too_small = {**SPEC, "batch_size": 8}
    spec.write_text(yaml.safe_dump(too_small))
    out = cli(net, "dataset", "train", ds, str(spec), "--key", "user", ok=False)
    assert "spec.batch_size" in out, out
    spec.write_text(yaml.safe_dump(SPEC))

    # Revoked: the next job is refused naming the term, and nothing moves.
    cli(net, "dataset", "revoke", ds, "--key", "owner")
    spent = user.balance().available
    out = cli(net, "dataset", "train", ds, str(spec), "--key", "user", ok=False)
    assert "spec.dataset_terms.revoked" in out, out
    assert user.balance().available == spent
    audit_ok(user)


@pytest.fixture
def checked_net(tmp_path: Path) -> Iterator[Network]:
    n = Network(tmp_path, heartbeat_timeout=10.0, lease_ttl=120.0, challenge_window=1.0,
                extra=("--verify-timeout", "120"), verifiers=1)
    n.start_coordinator()
    try:
        yield n
    finally:
        n.close()


def test_a_checked_dataset_job_releases_the_key_to_its_checker_too(checked_net: Network) -> None:
    """With verification on (new providers are fully replicated), the replica needs the
    dataset's key as much as the primary: the owner's serve loop releases it to both, the
    job completes checked, and the use names both providers and one royalty."""
    net = checked_net
    data = rows_csv(net, 12, 60, 5)
    spec = net.root / "train.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "epochs": 1}))
    owner, user = net.client("owner"), net.client("user")
    user.faucet(1_000_000_000)
    net.start_verifier("verifier-1", "--models", "mlp-digits")
    for name, price in (("trainer-a", 500), ("trainer-b", 520)):
        net.start_provider(name, price, "--models", "mlp-digits")
    net.wait_providers(2)
    out = cli(net, "dataset", "publish", str(data), "--price-per-use", "0.1",
              "--allow", "train", "--key", "owner")
    ds = re.search(r"published dataset (ds_[0-9a-f]{24})", out).group(1)  # type: ignore[union-attr]
    before = owner.balance().available
    job_id = train_served(net, user, ds, spec, 900)
    checks = [e for e in journal(user) if e.kind == "check_fee"]
    assert checks, "the job was not checked: " + net.logs()
    (use,) = datasets.uses(owner, ds)
    # The key went to the primary and its checker (and the verifier if it audited).
    assert {net.key("trainer-a").id, net.key("trainer-b").id} <= set(use.released_to), use
    assert use.job_id == job_id and use.chain_head, use
    assert owner.balance().available == before + 100_000
    audit_ok(user)
