"""Property tests over the coordinator's whole OpenAPI: no input produces a server error.

A live coordinator process on loopback (SQLite) serves ``/openapi.json``;
schemathesis generates valid and invalid requests for every operation. Native
routes are signed by a funded account (the signature is computed over the
exact bytes sent, as the SDK does), ``/v1`` carries a bearer API key. Each
response must come back within the client timeout and be below 500, except the
two 5xx answers ``/v1`` documents (503 no capacity, 504 timeout).

``DEAI_FUZZ_EXAMPLES`` sets examples per operation and mode (valid, invalid;
default 25, a few thousand cases in all); ``docs/security.md`` records a longer
run (``python -m tests.test_schemathesis URL N`` against a running coordinator).

The event stream is left out (it streams until the client leaves; its
parameters are covered in ``test_bounds``), and a long-poll's ``wait`` is cut
to zero so a valid poll does not hold the run for a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from deai.client.keys import Identity
from deai.client.sdk import Client
from tests.helpers import running
from tests.netutil import Network

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("DEAI_FUZZ_EXAMPLES", "25"))
DOCUMENTED_5XX = {503, 504}
TIMEOUT = 30.0


class Signed(requests.auth.AuthBase):
    """Sign a prepared request the way ``core.auth`` verifies it: over the decoded path
    (what the server sees as ``scope["path"]``) and the exact body bytes."""

    def __init__(self, ident: Identity, network: str) -> None:
        self.ident, self.network = ident, network

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        path = unquote(urlsplit(r.url or "").path)
        r.headers.update(self.ident.headers(r.method or "GET", path, bytes(body),
                                            network=self.network))
        return r


@pytest.fixture(scope="module")
def fuzz_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    yield from running(Network(tmp_path_factory.mktemp("fuzz"), verify=False))


@pytest.fixture(scope="module")
def fuzz_auth(fuzz_net: Network) -> dict[str, Any]:
    ident = Identity.generate()
    with Client(fuzz_net.url, ident) as c:
        c.faucet(1_000_000_000)
        key = c.create_api_key("fuzz").key
    session = requests.Session()
    return {"signed": Signed(ident, fuzz_net.network_id), "bearer": f"Bearer {key}",
            "session": session}


def _operations(url: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json").exclude(
        path="/api/events/stream")
    return [r.ok() for r in schema.get_all_operations()]


def _call(case: schemathesis.Case, url: str, auth: dict[str, Any]) -> str | None:
    """Send one case; the problem, if the answer is a server error."""
    if case.path.endswith("/poll") and isinstance(case.body, dict):
        case.body["wait"] = 0  # a long-poll (an absent ``wait`` means 20 s)
    kwargs: dict[str, Any] = {"session": auth["session"], "timeout": TIMEOUT}
    if case.path.startswith("/v1/"):
        headers = dict(case.headers or {})
        headers.setdefault("authorization", auth["bearer"])
        kwargs["headers"] = headers
    else:
        kwargs["auth"] = auth["signed"]
    response = case.call(base_url=url, **kwargs)
    status = response.status_code
    if status < 500 or (case.path.startswith("/v1/") and status in DOCUMENTED_5XX):
        return None
    return f"{case.method} {case.formatted_path} -> {status}: {response.text[:300]}"


def fuzz(url: str, auth: dict[str, Any], examples: int) -> tuple[int, list[str]]:
    """Run ``examples`` valid and ``examples`` invalid cases per operation; returns the
    number of cases sent and the server errors seen (each operation stops at its first)."""
    sent, problems = 0, []
    for op in _operations(url):
        # Invalid cases need a body or a query to put them in (a path segment is any string).
        takes_input = len(op.body) > 0 or any(p.location.value in ("query", "header")
                                              for p in op.iter_parameters())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:1 + takes_input]:
            found: list[str] = []
            sent += _fuzz_one(op, mode, url, auth, examples, found)
            problems += found
    return sent, problems


def _fuzz_one(op: schemathesis.APIOperation, mode: GenerationMode, url: str,
              auth: dict[str, Any], examples: int, found: list[str]) -> int:
    sent = 0

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        if found:
            return
        sent += 1
        problem = _call(case, url, auth)
        if problem:
            found.append(problem)

    try:
        run()
    except Unsatisfiable:
        pass  # nothing invalid can be made for this operation
    except Exception as exc:  # noqa: BLE001 - a transport error or hang is a finding too
        found.append(f"{op.label} ({mode.value}): {type(exc).__name__}: {exc}")
    return sent


def test_no_input_makes_a_server_error(fuzz_net: Network, fuzz_auth: dict[str, Any]) -> None:
    sent, problems = fuzz(fuzz_net.url, fuzz_auth, EXAMPLES)
    assert not problems, "\n".join(problems)
    assert sent >= 1000 or EXAMPLES < 20, sent


def main() -> None:
    """``python -m tests.test_schemathesis URL [EXAMPLES]``: fuzz a running coordinator
    (a devnet, for the faucet) and print the cases sent and every server error."""
    import sys
    import time

    url, examples = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else EXAMPLES
    ident = Identity.generate()
    with Client(url, ident) as c:
        c.faucet(1_000_000_000)
        key = c.create_api_key("fuzz").key
        network = c.network_id
    auth = {"signed": Signed(ident, network), "bearer": f"Bearer {key}",
            "session": requests.Session()}
    t0 = time.perf_counter()
    sent, problems = fuzz(url, auth, examples)
    print(f"{sent} cases in {time.perf_counter() - t0:.0f} s, {len(problems)} server errors")
    for p in problems:
        print(" ", p)


if __name__ == "__main__":
    main()
