"""A training run on a spot lease is preempted, checkpoints on its notice and resumes on a
lease on another host, ending with bitwise the same weights as an uninterrupted run.

A real coordinator and two lease hosts (one CPU each, so one lease fills a host):
``cheap`` takes the spot lease; ``dear`` costs more than the preempting lease may pay.
``deai lease run-resumable`` runs the bundled ``lease_train.py`` there; once its first
checkpoint exists, a non-spot lease that only fits on ``cheap`` by preempting is created.
The script gets SIGTERM (and ``~/.deai/preempt``), saves and exits 75; the runner copies
the checkpoint out during the notice, resumes on ``dear`` and copies the weights out.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from deai.client import lease_resume
from deai.client.lease_resume import ScriptFailed, run_resumable
from deai.client.leases import Leases
from deai.client.sdk import Client
from deai.core.errors import DeAIError
from tests.helpers import audit_ok
from tests.netutil import Network
from tests.test_lease_e2e import DEAI, wait_hosts

pytestmark = pytest.mark.slow
T = TypeVar("T")
CHEAP = "cpu=100000,memory_gb=10000"  # 110,000 µ/h for 1 CPU + 1 GiB; spot 55,000
DEAR = "cpu=360000,memory_gb=36000"  # 396,000 µ/h; spot 198,000
TRAINER = Path(lease_resume.__file__).with_name("lease_train.py")  # not imported: it
# installs a SIGTERM handler when run as a script
TRAIN = ["--steps", "300", "--every", "20", "--step-seconds", "0.1"]


def start_host(net: Network, name: str, prices: str) -> None:
    net.start_provider(name, 1000, "--models", "bwrap-sandbox", "--lease-prices", prices,
                       "--lease-cpus", "1", "--lease-memory-mb", "2048",
                       "--stake", "50000000")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    n = Network(tmp_path_factory.mktemp("resume"), heartbeat_timeout=4.0, verify=False)
    n.env.update({"DEAI_LEASE_GRACE": "10", "DEAI_LEASE_SETTLE": "1",
                  "DEAI_LEASE_TICK": "0.25", "DEAI_LEASE_NOTICE": "10"})
    try:
        try:
            n.start_coordinator()
        except TimeoutError:  # a busy machine: the coordinator's imports alone take a minute
            n.wait_ready(timeout=300)
        start_host(n, "cheap", CHEAP)
        start_host(n, "dear", DEAR)
        wait_hosts(n, 2)
        yield n
    finally:
        n.close()


def reference(tmp: Path) -> Path:
    """The same run, uninterrupted, on this machine."""
    out = tmp / "reference.pt"
    subprocess.run([sys.executable, str(TRAINER), *TRAIN[:4], "--checkpoint",
                    str(tmp / "ref-ckpt.pt"), "--output", str(out)], check=True, timeout=600,
                   capture_output=True)
    return out


def wait_for(what: str, probe: Callable[[], T | None], proc: subprocess.Popen[bytes],
             log: Path, timeout: float = 240.0) -> T:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, f"the runner exited early:\n{log.read_text()}"
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen:\n{log.read_text()}")


def test_training_resumes_on_another_lease_with_the_same_weights(
        net: Network, tmp_path: Path) -> None:
    alice: Client = net.client("alice")
    alice.faucet(100_000_000)
    leases = Leases(alice)
    hosts = {net.key(n).id: n for n in ("cheap", "dear")}
    log = tmp_path / "runner.log"
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            [DEAI, "lease", "run-resumable", "--workdir", str(tmp_path / "run"),
             "--max-price-hour", "1", "--memory", "1G", "--", *TRAIN],
            env={**net.env, "DEAI_COORDINATOR": net.url, "DEAI_KEY": "alice"},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        first = wait_for("the spot lease", lambda: next(
            (x for x in leases.list() if x.status == "active"), None), runner, log)
        assert hosts[first.provider_id] == "cheap" and first.spot

        def has_checkpoint() -> bool | None:
            try:
                return len(leases.get(first.id, "ckpt.pt")) > 0
            except DeAIError:  # not written yet
                return None

        wait_for("the first periodic checkpoint", has_checkpoint, runner, log)
        # pays more per hour than the spot lease, cannot afford `dear`: it preempts
        full = leases.create(cpus=1, memory_mb=1024, hours=1, max_price_hour=110_000)
        assert hosts[full.provider_id] == "cheap"
        ref = reference(tmp_path)
        assert runner.wait(timeout=600) == 0, log.read_text()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)
    text = log.read_text()
    assert "preemption notice" in text and "copied the checkpoint in" in text, text
    stopped = re.search(r"checkpoint at step (\d+), exiting", text)
    resumed = re.search(r"resumed at step (\d+) from", text)
    assert stopped and resumed and stopped.group(1) == resumed.group(1), text
    assert 0 < int(resumed.group(1)) < 300, text

    gone = leases.wait_ended(first.id, timeout=60)
    assert gone.end_reason == "preempted" and gone.penalty == 0, gone
    kinds = [e["kind"] for e in gone.events]
    assert kinds.index("lease_preempt_notice") < kinds.index("lease_ended")
    second = [x for x in leases.list() if x.spot and x.id != gone.id]
    assert len(second) == 1 and hosts[second[0].provider_id] == "dear", second
    assert second[0].end_reason == "owner ended" and second[0].refunded > 0

    weights = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    uninterrupted = torch.load(ref, weights_only=True)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)
    assert (tmp_path / "run" / "final.pt").read_bytes() == ref.read_bytes()

    leases.end(full.id)
    audit_ok(alice)


def test_a_failing_script_ends_its_lease(net: Network, tmp_path: Path) -> None:
    bob = net.client("bob")
    bob.faucet(10_000_000)
    leases = Leases(bob)
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint('boom')\nsys.exit(3)\n")
    with pytest.raises(ScriptFailed, match="status 3") as err:
        run_resumable(leases, bad, [], lease={"cpus": 1, "memory_mb": 512, "hours": 1,
                                              "max_price_hour": 1_000_000, "spot": True},
                      workdir=tmp_path / "run")
    assert "boom" in err.value.message
    (lease,) = leases.list()
    assert lease.status == "ended" and lease.end_reason == "owner ended", lease
    assert lease.refunded == lease.escrow - lease.charged > 0
    assert not (tmp_path / "run" / "final.pt").exists()
    audit_ok(bob)


def test_the_notice_file_stops_the_script_and_resuming_changes_no_weight(
        tmp_path: Path) -> None:
    """The script alone: ``~/.deai/preempt`` appearing mid-run -> a checkpoint and status
    75; resumed, the same bytes as a run never stopped."""
    home = tmp_path / "home"
    (home / ".deai").mkdir(parents=True)
    args = [sys.executable, str(TRAINER), "--steps", "200", "--every", "20",
            "--checkpoint", "ckpt.pt", "--output", "final.pt"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    first = subprocess.Popen([*args, "--step-seconds", "0.05"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 300
        while not (tmp_path / "ckpt.pt").exists():
            assert time.time() < end and first.poll() is None, "no periodic checkpoint"
            time.sleep(0.1)
        (home / ".deai" / "preempt").write_text('{"at": 0, "seconds": 10}')
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == lease_resume.RESUME_ME, out
    stopped = re.search(rb"checkpoint at step (\d+), exiting", out)
    assert stopped and 20 <= int(stopped.group(1)) < 200, out
    assert not (tmp_path / "final.pt").exists()
    (home / ".deai" / "preempt").unlink()
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again
    assert f"resumed at step {int(stopped.group(1))}".encode() in again.stdout, again
    ref = tmp_path / "ref"
    ref.mkdir()
    clean = subprocess.run(args, cwd=ref, env=env, capture_output=True, timeout=600)
    assert clean.returncode == 0, clean
    assert (tmp_path / "final.pt").read_bytes() == (ref / "final.pt").read_bytes()
