"""``deai market quote`` answers for every spec in examples/, with and without its input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from deai.client.cli import app
from tests.helpers import HandProvider
from tests.netutil import Network

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "examples").glob("*.yaml"))
INPUTS = {"embeddings": "sentences.jsonl", "chat": "chat.jsonl", "train": "digits.json",
          "command": "commands.jsonl"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("quote"), verify=False)
    n.start_coordinator()
    HandProvider(n)  # one provider, so every quote has someone to explain
    yield n
    n.close()


def quote(net: Network, *args: str) -> Result:
    return CliRunner().invoke(app, ["market", "quote", *args, "--coordinator", net.url])


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_quote_every_example(net: Network, spec: Path) -> None:
    for args in (["--units", "10"], ["--input", str(ROOT / "examples" / INPUTS[spec.stem])]):
        r = quote(net, str(spec), *args)
        assert r.exit_code == 0, r.output
        assert "maximum cost" in r.output and r.exception is None
