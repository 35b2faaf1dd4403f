"""Run a checkpointing script on spot leases until it finishes, moving it to a new lease
whenever one is preempted (``deai lease run-resumable``).

    result = run_resumable(Leases(client), Path("train.py"), ["--steps", "400"],
                           lease={"cpus": 1, "memory_mb": 1024, "hours": 1,
                                  "max_price_hour": 200_000, "spot": True},
                           checkpoint="ckpt.pt", output="final.pt", workdir=Path("run"))

Each round creates a lease, copies the script in (and the last checkpoint, if there is
one), and runs ``python3 SCRIPT ARGS`` in the lease's home as an ``exec`` session, while
this side follows the lease (``show``) for a ``lease_preempt_notice``. The script keeps
the contract of ``client.lease_train`` (the bundled example): it resumes from
``checkpoint`` when the file is there, saves it atomically now and then, and on the
notice (SIGTERM, ``~/.deai/preempt``) saves it and exits with status 75.

- exit 0: ``output`` is copied out to ``workdir``, the lease is ended (the rest of its
  escrow comes back) and the run is done;
- exit 75, or a notice seen: the checkpoint is copied out while the lease is still active
  (the notice period), and the next round starts on a new lease; the preempted lease is
  left to end as ``preempted`` at its ``preempt_at``;
- the lease lost without a notice (``provider lost``): the next round resumes from the
  last checkpoint copied out, if any;
- any other exit status ends the lease and raises ``ScriptFailed``.

A new lease is placed by the coordinator's usual choice: the preempting host is full, so
it lands elsewhere. Copies go through ``cp`` (``Leases.put``/``get``), not volumes.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deai.client.leases import TERMINAL, Leases
from deai.core import money
from deai.core.errors import DeAIError

RESUME_ME = 75
SCRIPT_NAME = "resumable.py"


class ScriptFailed(DeAIError):
    """The script exited with a status that is neither done (0) nor resume me (75)."""

    status = 422
    code = "script_failed"


@dataclass
class Round:
    lease_id: str
    provider_id: str
    exit_code: int | None  # None: the session was lost with the lease
    noticed: bool
    checkpoint_bytes: int = 0


@dataclass
class Result:
    output: Path
    rounds: list[Round] = field(default_factory=list)


class _Exec(threading.Thread):
    """The script's exec session, run beside the loop that follows the lease."""

    def __init__(self, leases: Leases, lease_id: str, argv: list[str]) -> None:
        super().__init__(name=f"deai-resumable-{lease_id}", daemon=True)
        self.leases, self.lease_id, self.argv = leases, lease_id, argv
        self.code: int | None = None
        self.error: Exception | None = None
        self.out = io.BytesIO()

    def run(self) -> None:
        try:
            self.code = self.leases.exec(self.lease_id, self.argv, stdout=self.out,
                                         stderr=self.out)
        except Exception as exc:  # the lease ended under the session: judged by the caller
            self.error = exc


def run_resumable(leases: Leases, script: Path, args: list[str], *, lease: dict[str, Any],
                  checkpoint: str = "ckpt.pt", output: str = "final.pt",
                  workdir: Path = Path("."), max_rounds: int = 10, poll: float = 0.5,
                  log: Callable[[str], None] = lambda _m: None) -> Result:
    """Run ``script`` to completion across as many leases as preemptions need (see module doc)."""
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / Path(checkpoint).name
    result = Result(output=workdir / Path(output).name)
    source = script.read_bytes()
    for _ in range(max_rounds):
        made = leases.create(**lease)
        lid = made.id
        active = leases.wait_active(lid, timeout=120)
        log(f"lease {lid} active on provider {active.provider_id[:12]}")
        leases.put(lid, source, SCRIPT_NAME)
        if saved.exists():
            n = leases.put(lid, saved.read_bytes(), checkpoint)
            log(f"copied the checkpoint in ({n} bytes): resuming")
        runner = _Exec(leases, lid, ["python3", SCRIPT_NAME, *args])
        runner.start()
        noticed = _follow(leases, lid, runner, poll, log)
        rnd = Round(lid, active.provider_id, runner.code, noticed)
        result.rounds.append(rnd)
        for line in runner.out.getvalue().decode(errors="replace").splitlines():
            if not line.startswith("step "):  # its notes, not its progress
                log(f"  | {line}")
        if runner.code == 0:
            result.output.write_bytes(leases.get(lid, output))
            ended = leases.end(lid)
            log(f"done; {output} copied out; lease {lid} ended, refunded "
                f"{money.fmt(ended.refunded)} DEAI")
            return result
        if runner.code is not None and runner.code != RESUME_ME and not noticed:
            leases.end(lid)
            raise ScriptFailed(f"the script exited with status {runner.code}: "
                               f"{runner.out.getvalue()[-2000:].decode(errors='replace')}")
        rnd.checkpoint_bytes = _save_checkpoint(leases, lid, checkpoint, saved, log)
        if not noticed:  # stopped without a notice: do not leave the lease running
            _end_quietly(leases, lid)
    raise DeAIError(f"the run did not finish within {max_rounds} leases")


def _follow(leases: Leases, lid: str, runner: _Exec, poll: float,
            log: Callable[[str], None]) -> bool:
    """Until the script exits or the lease ends; whether a preemption notice came."""
    noticed = False
    while True:
        alive = runner.is_alive()
        try:
            lease = leases.show(lid)  # once more after the exit: the notice may come first
        except httpx.TransportError as exc:  # a blip: the session itself carries on
            log(f"could not follow lease {lid} ({exc}); retrying")
            time.sleep(poll)
            continue
        if lease.preempt_at is not None and not noticed:
            noticed = True
            at = time.strftime("%H:%M:%S", time.gmtime(lease.preempt_at))
            log(f"lease {lid}: preemption notice, it ends at {at} UTC")
        if not alive or lease.status == TERMINAL:
            break
        runner.join(poll)
    runner.join(5.0)
    return noticed


def _save_checkpoint(leases: Leases, lid: str, checkpoint: str, saved: Path,
                     log: Callable[[str], None]) -> int:
    """Copy the checkpoint out while the lease is still active; 0 if it could not be."""
    try:
        data = leases.get(lid, checkpoint)
    except (DeAIError, OSError) as exc:
        log(f"no checkpoint from lease {lid} ({exc}); resuming from the last one saved")
        return 0
    tmp = saved.with_name(saved.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(saved)
    log(f"checkpoint copied out of lease {lid} ({len(data)} bytes)")
    return len(data)


def _end_quietly(leases: Leases, lid: str) -> None:
    try:
        if leases.show(lid).status != TERMINAL:
            leases.end(lid)
    except DeAIError:
        pass  # it ended meanwhile
