"""One tenant cannot take down the other leases of a host, nor leave its limits.

Real ``LeaseSandbox``es in real bubblewrap and a real ``LeaseRunner``; only the
coordinator's answers are scripted (``ScriptedApi``: the runner's one I/O
interface, ``lease_sdk.Leases``). Covers: a lease whose home nests folders past
Python's recursion limit ends without stopping the runner's loops or the other
leases; the CPUs of a lease are put back when a program widens its affinity;
a PTY shell does not inherit the init's control socket.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator

import pytest

from deai.core import wire_leases as wl
from deai.provider import lease_init
from deai.provider.lease_runner import HostOffer, LeaseRunner, LeaseSandbox, available

OFFER = HostOffer(cpus=2, memory_mb=4096, prices={"cpu": 1}, max_processes=64)
DEEP = "import os\nfor _ in range(1200):\n    os.mkdir('d'); os.chdir('d')\nprint('deep')"


@pytest.fixture(autouse=True)
def need_bwrap() -> None:
    ok, why = available()
    if not ok:
        pytest.fail(f"bubblewrap is required for leases: {why}. `make test` installs it "
                    "(apt-get install -y bubblewrap).")


def session(box: LeaseSandbox, req: dict[str, object], stdin: bytes | None = None,
            on_output: bytes | None = None, then: object = None) -> tuple[str, int | None]:
    """One exec session: (output, exit code). Once ``on_output`` shows in the output,
    ``then()`` is called and ``stdin`` sent (with an eof)."""
    out, code = b"", None
    with box.connect(30) as s:
        ch = lease_init.Channel(s)
        ch.text(**req)
        waiting = on_output is not None

        def release() -> None:
            if callable(then):
                then()
            if stdin is not None:
                ch.data(lease_init.STDIN, stdin)
            ch.send(b"T", json.dumps({"type": "eof"}).encode())

        if not waiting:
            release()
        while (frame := ch.recv()) is not None:
            kind, body = frame
            if kind == b"B":
                out += body[1:]
                if waiting and on_output is not None and on_output in out:
                    waiting = False
                    release()
                continue
            msg = json.loads(body)
            if msg.get("type") in ("exit", "error"):
                code = msg.get("code")
                break
    return out.decode(errors="replace"), code


@pytest.fixture
def boxes() -> Iterator[list[LeaseSandbox]]:
    made: list[LeaseSandbox] = []
    yield made
    for b in made:
        b.stop()


def new_box(boxes: list[LeaseSandbox], lid: str, cpus: list[int]) -> LeaseSandbox:
    b = LeaseSandbox(wl.LeaseSpec(id=lid, cpus=1, memory_mb=256), OFFER, cpus)
    boxes.append(b)
    b.start()
    return b


def test_stop_removes_a_home_nested_past_the_recursion_limit(
        boxes: list[LeaseSandbox]) -> None:
    box = new_box(boxes, "lease_deep", [])
    assert session(box, {"op": "exec", "argv": ["/usr/bin/python3", "-c", DEEP]}) == (
        "deep\n", 0)
    box.stop()  # raised RecursionError (shutil.rmtree) before
    assert not box.dir.exists()


class ScriptedApi:
    """The coordinator's lease answers, scripted: polls come from ``polls``."""

    def __init__(self) -> None:
        self.polls: queue.Queue[wl.LeasePollOut] = queue.Queue()
        self.beats: list[list[str]] = []

    def set_host(self, h: wl.HostIn) -> wl.HostOut:
        return wl.HostOut(provider_id="p", cpus=h.cpus, memory_mb=h.memory_mb, gpus=0,
                          gpu_model=None, network=False, prices=h.prices,
                          heartbeat_interval=0.2, grace=60)

    def poll(self, wait: float, known: list[str], noticed: list[str],
             saving: list[str]) -> wl.LeasePollOut:
        try:
            return self.polls.get(timeout=min(wait, 0.2))
        except queue.Empty:
            return wl.LeasePollOut()

    def heartbeat(self, running: list[str], failed: dict[str, str]) -> wl.LeaseBeatOut:
        self.beats.append(list(running))
        return wl.LeaseBeatOut()


def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("how", ["end", "init_killed"])
def test_one_lease_ending_leaves_the_others_running(how: str) -> None:
    """A tenant nests 1,200 folders, then ends its lease (the poll loop stops it) or kills
    its own init (the heartbeat loop stops it): the other lease and both loops go on."""
    api = ScriptedApi()
    runner = LeaseRunner(client=None, identity=None, offer=OFFER,  # type: ignore[arg-type]
                         poll_wait=0.2)
    runner.api = api  # type: ignore[assignment]
    stop = threading.Event()
    t = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    t.start()
    try:
        api.polls.put(wl.LeasePollOut(start=[wl.LeaseSpec(id=i, cpus=1, memory_mb=256)
                                             for i in ("lease_a", "lease_b")]))
        wait_for(lambda: {"lease_a", "lease_b"} <= set(runner.state.boxes), "both leases")
        a, b = runner.state.boxes["lease_a"], runner.state.boxes["lease_b"]
        assert session(a, {"op": "exec", "argv": ["/usr/bin/python3", "-c", DEEP]})[1] == 0
        if how == "end":
            api.polls.put(wl.LeasePollOut(stop=["lease_a"]))
        else:
            a.kill()  # what `kill -9` of its init inside the lease comes to
        wait_for(lambda: "lease_a" not in runner.state.boxes and not a.dir.exists(),
                 "lease a to be stopped and removed")
        beats = len(api.beats)
        wait_for(lambda: len(api.beats) >= beats + 2, "two more heartbeats")
        assert api.beats[-1] == ["lease_b"]
        assert t.is_alive() and b.alive()
        assert session(b, {"op": "exec", "argv": ["/bin/echo", "still here"]}) == (
            "still here\n", 0)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()


def test_a_program_that_widens_its_cpus_is_put_back(boxes: list[LeaseSandbox]) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one CPU here: an affinity cannot be widened")
    box = new_box(boxes, "lease_pin", [cores[0]])
    prog = ("import os, sys\n"
            "print('given', sorted(os.sched_getaffinity(0)))\n"
            "os.sched_setaffinity(0, range(os.cpu_count()))\n"
            "print('widened', len(os.sched_getaffinity(0)), flush=True)\n"
            "sys.stdin.readline()\n"
            "print('now', sorted(os.sched_getaffinity(0)))\n")
    moved: list[int] = []
    out, code = session(box, {"op": "exec", "argv": ["/usr/bin/python3", "-c", prog]},
                        stdin=b"go\n", on_output=b"widened",
                        then=lambda: moved.append(box.pin()))
    assert code == 0, out
    assert f"given [{cores[0]}]" in out and f"widened {len(cores)}" in out
    assert moved and moved[0] >= 1
    assert f"now [{cores[0]}]" in out


def test_a_pty_shell_does_not_get_the_control_socket(boxes: list[LeaseSandbox]) -> None:
    box = new_box(boxes, "lease_ptyfd", [])
    assert box._listener is not None
    fd = box._listener.fileno()  # the init's listening socket keeps the agent's number
    probe = f"readlink /proc/$$/fd/{fd} || echo none-{fd}"
    out, code = session(box, {"op": "exec", "pty": True, "argv": ["/bin/sh", "-c", probe]})
    assert code == 0, out
    assert "socket:" not in out and f"none-{fd}" in out, out
