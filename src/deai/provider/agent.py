"""The provider agent: join the network, then long-poll for shards, run them, submit results.

    agent = ProviderAgent("http://127.0.0.1:8000", keys.load("gpu1"), threads=4)
    agent.run(stop)            # blocks until ``stop`` is set and running tasks finish

Joining: set torch's thread count, probe the hardware, benchmark it, load every
offered model (so the first task does not pay for loading), read the network
parameters, top up from the faucet on a devnet, register the offers and bond
stake up to the desired amount.

Offers: one per model, by default every catalog model whose workload this
machine can run (``available_models``: the workload is registered and, where
it has an ``available(model)`` check, says yes). Each is priced at
``prices[model]`` when given, else at ``price`` (micro-units per 1,000 units of
the model's kind: inputs for embeddings, tokens for chat). Loaded models stay
warm in this process for its whole life.

Working: a heartbeat thread reports the running assignments every
``heartbeat_timeout / 3`` seconds and abandons the ones the coordinator says
to drop; the main loop polls, and a pool of ``slots`` threads runs each
assignment: download the input (checked against its digest), run the
workload, upload the output, sign ``core.auth.result_message`` and submit. A
task that raises is reported as failed; a 409 on submit (lease expired, job
cancelled) is logged and skipped.

Identity: the registration names the provider's operator (``operator``, a key
that signs ``core.auth.operator_message``; none: the key is its own operator)
and reports a digest of ``/etc/machine-id`` in its hardware (``machine_digest``),
so the coordinator can keep keys of one party off one task (``core.diversity``).
A verifier (``verifier=True``, ``deai verifier start``) offers every model at
price 0, claims ``capabilities["verifier"]`` and bonds nothing; it stops with an
error unless the coordinator lists its key as a trusted verifier.

Every coordinator call goes through ``sdk.retrying``: while the coordinator is
down the agent backs off, and after a transport failure, or when the
coordinator no longer knows the provider (401/404), it joins again before
going on (registering is idempotent). ``start()`` is the entry point for the
CLI: it wires SIGTERM/SIGINT to a clean exit with status 0.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

from deai import workloads
from deai.client import keys, sdk
from deai.client.keys import Identity
from deai.core import auth, catalog, diversity, wire
from deai.core.errors import (
    AuthError,
    Conflict,
    DeAIError,
    InsufficientFunds,
    InvalidInput,
    NotFound,
)
from deai.provider import benchmark, challenge, datasets, hardware, sandbox, sealed
from deai.provider.cheats import Cheat, units_of
from deai.provider.lease_runner import HostOffer, LeaseRunner
from deai.workloads import command as command_workload
from deai.workloads.base import TaskContext

log = logging.getLogger("deai.provider")
T = TypeVar("T")

POLL_WAIT = 20.0
DRAIN_TIMEOUT = 120.0


class Stopped(Exception):
    """Raised inside the agent's threads to unwind once the stop event is set."""


class ProviderAgent:
    def __init__(self, coordinator_url: str, identity: Identity, *, threads: int,
                 slots: int = 1, price: int = 1000, stake: int | None = None, name: str = "",
                 models: tuple[str, ...] | None = None, faucet: bool = True,
                 poll_wait: float = POLL_WAIT, prices: dict[str, int] | None = None,
                 lease_offer: HostOffer | None = None, operator: Identity | None = None,
                 verifier: bool = False, machine_id: str | None = None,
                 source_address: str | None = None) -> None:
        self.client = sdk.Client(coordinator_url, identity)
        if source_address:  # register from this address (several agents on one test box)
            self.client.http = httpx.Client(
                base_url=self.client.base_url, timeout=self.client.http.timeout,
                transport=httpx.HTTPTransport(local_address=source_address))
        self.identity = identity
        self.operator = operator
        self.verifier = verifier
        self.machine_id = machine_digest(machine_id)
        self.threads = max(1, threads)
        self.slots = max(1, slots)
        self.price = price
        self.stake = stake
        self.name = name or f"{socket.gethostname()}-{identity.id[:8]}"
        self.models = tuple(dict.fromkeys(
            catalog.lookup(m).name for m in (available_models() if models is None else models)))
        if not self.models:
            raise DeAIError("no model to offer: no workload can run on this machine")
        # A verifier is paid a fixed fee by the network, never by its offers.
        self.prices = ({m: 0 for m in self.models} if verifier
                       else offer_prices(self.models, price, prices or {}))
        self.faucet = faucet
        self.lease_offer = lease_offer  # host leases by the hour too (lease_runner)
        self.poll_wait = poll_wait
        self._received: list[str] = []  # ids of the last poll's answer, acknowledged next
        self.cheat = Cheat.parse(os.environ.get("DEAI_PROVIDER_CHEAT", ""))
        if self.cheat is not None:  # a role reader reads the public surfaces
            self.cheat.attach(coordinator_url, identity.id)
        self.network: wire.NetworkInfo | None = None
        self.registration: wire.RegisterIn | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._dropped: set[str] = set()
        self._idle = threading.Condition(self._lock)
        self._rejoin = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Join, then work until ``stop`` is set; return once running tasks are done."""
        self._stop = stop
        try:
            self.registration = self.prepare()
            self.join()
        except Stopped:
            return
        beat = threading.Thread(target=self._heartbeat_loop, name="deai-heartbeat", daemon=True)
        beat.start()
        challenge.start(self.client.base_url, self.identity, self.threads, stop, lambda: 5.0)
        if self.lease_offer is not None:
            runner = LeaseRunner(sdk.Client(self.client.base_url, self.identity),
                                 self.identity, self.lease_offer)
            threading.Thread(target=runner.run, args=(stop,), name="deai-leases",
                             daemon=True).start()
        with ThreadPoolExecutor(self.slots, thread_name_prefix="deai-task") as pool:
            while not stop.is_set():
                try:
                    self._work_once(pool)
                except Stopped:
                    break
                except DeAIError as exc:  # refused, not unreachable: say why, then go on
                    log.error("coordinator refused: %s", exc)
                    stop.wait(5.0)
        self.client.close()
        log.info("provider %s stopped", self.identity.id[:12])

    def prepare(self) -> wire.RegisterIn:
        """Probe, benchmark and warm the models: everything that needs no coordinator."""
        import torch

        torch.set_num_threads(self.threads)
        hw = hardware.probe()
        device = "cuda" if hw.gpus else "cpu"
        bench = benchmark.run(self.threads, device)
        hw, bench = challenge.claimed(hw, bench, self.threads)  # what challenges check
        hw = hw.model_copy(update={"machine_id": self.machine_id})
        log.info("hardware: %s, %d cores, %d MiB, %d GPU(s); benchmark %.1f GFLOP/s, "
                 "%.1f GB/s (%.2f CU)", hw.cpu_model, hw.cores, hw.memory_mb, len(hw.gpus),
                 bench.gflops, bench.mem_gbps, benchmark.compute_units(bench))
        offers = []
        can_sandbox, why = sandbox.available()  # commands run only inside bubblewrap
        for model in self.models:
            info = catalog.lookup(model)
            if info.workload == "command" and not can_sandbox:
                log.warning("not offering %s: no sandbox here (%s)", model, why)
                continue
            t0 = time.monotonic()
            workloads.get(info.workload).load(model)
            log.info("loaded %s (%s) in %.1f s", model, info.workload, time.monotonic() - t0)
            offers.append(wire.OfferIn.model_validate(
                {"workload": info.workload, "model": model, "price": self.prices[model]}))
        if not offers:
            raise DeAIError("no model to offer on this machine")
        caps: dict[str, object] = {"sandbox": can_sandbox, "sandbox_reason": why}
        if can_sandbox:  # larger command specs are refused (workloads.command.execute)
            caps["command_memory_mb"] = command_workload.memory_ceiling_mb()
        if self.verifier:
            caps["verifier"] = True
        operator = {} if self.operator is None else {
            "operator": self.operator.id, "operator_signature": self.operator.sign(
                auth.operator_message(self.operator.id, self.identity.id))}
        return wire.RegisterIn(name=self.name, hardware=hw, benchmark=bench,
                               threads=self.threads, slots=self.slots, offers=offers,
                               capabilities=caps, **operator)

    def join(self) -> wire.ProviderOut:
        """Fund (devnet), register and bond; safe to repeat after a reconnect."""
        assert self.registration is not None, "prepare() first"
        self._rejoin.clear()
        net = self.network = self._call(self.client.network)
        if self.verifier:
            return self._join_as_verifier()
        want = net.min_stake if self.stake is None else self.stake
        try:
            bal = self._call(self.client.balance)
        except NotFound:  # an account the ledger has never seen holds nothing
            bal = wire.BalanceOut(account=self.identity.id, available=0, pending=0, stake=0)
        short = want - (bal.available + bal.stake)
        if short > 0 and net.devnet and self.faucet:
            bal = self._call(lambda: self.client.faucet(short))
            log.info("faucet: +%d µ (available %d)", short, bal.available)
        reg = self.registration
        provider = self._call(lambda: self.client.register(reg))
        top = _top_up(want - bal.stake, bal.stake, bal.available, net)
        if top:
            try:
                bal = self._call(lambda: self.client.bond(top))
            except InsufficientFunds as exc:
                raise DeAIError(f"cannot bond {want} µ stake: {exc.message}") from exc
        log.info("registered %s as %r: stake %d µ, %d offer(s), %d slot(s)",
                 self.identity.id, self.name, bal.stake, len(reg.offers), self.slots)
        return provider

    def _join_as_verifier(self) -> wire.ProviderOut:
        """Register; a verifier the coordinator lists bonds nothing (the network pays it)."""
        reg = self.registration
        assert reg is not None
        provider = self._call(lambda: self.client.register(reg))
        if not (provider.capabilities or {}).get("verifier"):
            raise DeAIError(f"the coordinator does not list {self.identity.id} as a verifier; "
                            "start it with --verifier-key " + self.identity.id)
        log.info("registered %s as verifier %r: %d model(s), %d slot(s), no stake",
                 self.identity.id, self.name, len(reg.offers), self.slots)
        return provider

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no assignment is running; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._running, timeout)

    # --- coordinator calls ----------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        def on_retry(exc: Exception, delay: float) -> None:
            if self._stop.is_set():
                raise Stopped from exc
            if isinstance(exc, httpx.TransportError):
                self._rejoin.set()
            log.warning("coordinator unavailable (%s); retrying in %.1f s",
                        type(exc).__name__ if isinstance(exc, httpx.TransportError) else exc,
                        delay)

        return sdk.retrying(fn, on_retry=on_retry)

    def _work_once(self, pool: ThreadPoolExecutor) -> None:
        if self._rejoin.is_set():
            self.join()
        with self._idle:  # every slot busy: wait for one to free up before polling
            if not self._idle.wait_for(lambda: len(self._running) < self.slots, timeout=1.0):
                return
        try:
            # Acknowledge what the last answer carried; an answer lost on the way is
            # not acknowledged, so the coordinator hands its leases out again.
            ack = list(self._received)
            polled = self._call(lambda: self.client.poll(wait=self.poll_wait, ack=ack))
        except (AuthError, NotFound) as exc:
            log.warning("coordinator does not know this provider (%s); registering again", exc)
            self._rejoin.set()
            self._stop.wait(1.0)
            return
        self._received = [a.id for a in polled.assignments]
        if self.cheat is not None:  # what arrives together is a tell for a role reader
            self.cheat.delivered(polled.assignments)
        for a in polled.assignments:
            with self._lock:
                if a.id in self._running:  # redelivered: our acknowledgement was lost
                    continue
            if self._stop.is_set():  # shutting down: hand it back rather than let it expire
                self._fail(a.id, "provider is shutting down")
                continue
            with self._lock:
                self._running.add(a.id)
            pool.submit(self._execute, a)

    def _keep_stake(self) -> None:
        """Below the minimum stake (after a slash, say) a provider gets no work: bond
        again from the available balance when it can, and say so either way."""
        net = self.network
        if net is None or self.verifier:
            return
        want = net.min_stake if self.stake is None else self.stake
        bal = self.client.balance()
        if bal.stake >= want:
            self._stake_warned = False
            return
        short = _top_up(want - bal.stake, bal.stake, bal.available, net)
        if short and bal.available >= short:
            bal = self.client.bond(short)
            log.warning("stake was below the minimum: re-bonded %d µ (stake now %d µ)", short,
                        bal.stake)
        elif not getattr(self, "_stake_warned", False):
            self._stake_warned = True
            log.warning("stake %d µ is below the %d µ minimum and only %d µ is available: "
                        "no work until it is topped up (deai faucet / deposit, then it "
                        "re-bonds by itself)", bal.stake, want, bal.available)

    def _heartbeat_loop(self) -> None:
        beats = 0
        while not self._stop.is_set():
            net = self.network
            interval = (net.heartbeat_timeout if net else 15.0) / 3
            beats += 1
            if beats % 10 == 0:  # now and then, not on every beat
                try:
                    self._keep_stake()
                except (httpx.TransportError, DeAIError) as exc:
                    log.debug("stake check failed: %s", exc)
            with self._lock:
                running = sorted(self._running - self._dropped)
            try:
                out = sdk.retrying(partial(self.client.heartbeat, running), attempts=2)
            except (AuthError, NotFound):
                self._rejoin.set()
            except (httpx.TransportError, DeAIError) as exc:
                log.debug("heartbeat failed: %s", exc)
                if isinstance(exc, httpx.TransportError):
                    self._rejoin.set()
            else:
                if out.drop:
                    log.info("coordinator dropped %s", ", ".join(out.drop))
                    with self._lock:  # ids no longer running need no mark
                        self._dropped.update(set(out.drop) & self._running)
            self._stop.wait(interval)

    # --- one assignment -------------------------------------------------------------------

    def _execute(self, a: wire.AssignmentOut) -> None:
        try:
            self._process(a)
        except Stopped:
            pass
        except Conflict as exc:
            log.warning("assignment %s: %s (lease expired or job cancelled)", a.id, exc)
        except Exception as exc:
            log.exception("assignment %s failed", a.id)
            self._fail(a.id, f"{type(exc).__name__}: {exc}")
        finally:
            with self._idle:
                self._running.discard(a.id)
                self._dropped.discard(a.id)
                self._idle.notify_all()

    def _process(self, a: wire.AssignmentOut) -> None:
        blob = (base64.b64decode(a.input_b64) if a.input_b64 is not None
                else self._call(lambda: self.client.download(a.input_digest)))
        if hashlib.sha256(blob).hexdigest() != a.input_digest:
            raise DeAIError(f"input blob does not match its digest {a.input_digest}")
        t0 = time.monotonic()
        cheat = self.cheat if self.cheat is not None and self.cheat.active(a) else None
        context = self._context(a)

        def run_plain(blob: bytes) -> tuple[bytes, int]:
            stamped = cheat.stamp(a.workload, a.model, blob) if cheat is not None else None
            if stamped is not None:  # a check agreed to without running it
                log.warning("task %s: agreed to a check without running it (cheat)", a.id)
                return stamped
            if cheat is not None:  # a faulty executor, for demonstrations of verification
                blob = cheat.shard(a.workload, blob)
            with datasets.rows_for(self.client, self.identity, a, context.cancelled):
                output, units = workloads.get(a.workload).run(a.model, blob, context)
            if cheat is not None:
                tampered = cheat.output(a.workload, output, a.model)
                if tampered != output:
                    log.warning("task %s: returned a tampered result (cheat mode %s)", a.id,
                                cheat.mode)
                output, units = tampered, units_of(a.workload, tampered, units)
            return output, units

        if sealed.is_sealed(blob):  # decrypted here, run, and sealed again
            output, units = sealed.run(self.identity, a, blob, context, run_plain)
        else:
            output, units = run_plain(blob)
        seconds = time.monotonic() - t0
        if self._is_dropped(a.id):
            log.info("assignment %s dropped by the coordinator; result discarded", a.id)
            return
        result = signed_result(self.identity, a.id, output, units, seconds)
        if len(output) <= wire.INLINE_MAX:  # small: it rides along with the result
            result.output_b64 = base64.b64encode(output).decode()
        else:
            uploaded = self._call(lambda: self.client.upload(output))
            if uploaded.digest != result.output_digest:
                raise DeAIError(f"coordinator stored output as {uploaded.digest}, "
                                f"expected {result.output_digest}")
        out = self._call(lambda: self.client.submit_result(a.id, result))
        log.info("task %s: %d units in %.2f s -> %s (paid %d µ)", a.id, units, seconds,
                 out.status, out.paid)

    def _context(self, a: wire.AssignmentOut) -> TaskContext:
        def checkpoint(step: int, data: bytes, chain_hash: str, meta: dict[str, Any]) -> None:
            digest = self._call(lambda: self.client.upload(data)).digest
            cp = wire.CheckpointIn(step=step, digest=digest, chain_hash=chain_hash, meta=meta)
            self._call(lambda: self.client.checkpoint(a.id, cp))

        def fetch(digest: str) -> bytes:
            data = self._call(lambda: self.client.download(digest))
            if hashlib.sha256(data).hexdigest() != digest:
                raise DeAIError(f"blob does not match its digest {digest}")
            return data

        return TaskContext(assignment_id=a.id, resume=a.resume, checkpoint=checkpoint,
                           fetch=fetch, progress=ProgressSender(self.client, a.id).send,
                           cancelled=lambda: self._stop.is_set() or self._is_dropped(a.id))

    def _is_dropped(self, assignment_id: str) -> bool:
        with self._lock:
            return assignment_id in self._dropped

    def _fail(self, assignment_id: str, error: str) -> None:
        try:
            sdk.retrying(lambda: self.client.report_failure(assignment_id, error), attempts=3)
        except (httpx.TransportError, DeAIError) as exc:
            log.warning("could not report failure of %s: %s", assignment_id, exc)


def available_models() -> tuple[str, ...]:
    """Every catalog model whose workload is registered and says it can run here."""
    found = []
    for info in catalog.CATALOG:
        if info.workload not in workloads.names():
            continue
        try:
            check = getattr(workloads.get(info.workload), "available", None)
        except ImportError as exc:  # its module or a dependency is missing here
            log.info("workload %s unavailable: %s", info.workload, exc)
            continue
        if check is None or check(info.name):
            found.append(info.name)
    return tuple(found)


def machine_digest(override: str | None = None) -> str:
    """The machine id this agent reports: a digest of ``/etc/machine-id`` (or of
    ``override``, a stand-in for tests that run several agents on one box); "" if none."""
    raw = override
    if raw is None:
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            try:
                raw = Path(path).read_text().strip()
            except OSError:
                continue
            if raw:
                break
    return diversity.machine_id_digest(raw) if raw else ""


def offer_prices(models: tuple[str, ...], default: int,
                 prices: dict[str, int]) -> dict[str, int]:
    """Each offered model's price: its own where given, else ``default``."""
    own = {}
    for name, p in prices.items():
        model = catalog.lookup(name, field="prices").name
        if model not in models:
            raise InvalidInput(f"a price for {model!r}, which is not offered "
                               f"(offered: {', '.join(models)})", field="prices")
        own[model] = p
    return {m: own.get(m, default) for m in models}


class ProgressSender:
    """Posts a task's partial output to the coordinator from a thread of its own, so
    decoding never waits on the network; events that pile up go in one request, those of
    one choice merged. Each event posted carries ``n`` (0, 1, ... in posting order), by
    which the replica streaming to the caller puts back in order what reached it through
    other replicas.

    Best effort. A post answered "not listening" delivered nothing, and may be passing
    (the caller's replica has not claimed its stream yet) or lasting (the caller left):
    the sender keeps what it has (up to ``BACKLOG_MAX`` characters) and, instead of
    posting, asks again with an empty post after ``PROBE_FIRST`` seconds, then twice as
    long each time up to ``PROBE_MAX``; once answered yes it posts what it kept. It stops
    for good when a post fails (whether it was delivered is unknown), the backlog
    overflows, or no event came for ``IDLE`` seconds (the task has long finished). The
    submitted result stays the only record."""

    PROBE_FIRST, PROBE_MAX = 0.5, 8.0
    IDLE = 30.0
    BACKLOG_MAX = 1 << 20
    EVENTS_MAX = 4096  # events in one post (``relay.ProgressIn``)

    def __init__(self, client: sdk.Client, assignment_id: str) -> None:
        self.client, self.assignment_id = client, assignment_id
        self._queue: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._done = False
        self._last = time.monotonic()  # when the last event came
        self._n = 0  # the number of the next event posted

    def send(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self._done:
                return
            self._queue.append(event)
            self._last = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"deai-progress-{self.assignment_id}")
                self._thread.start()
            self._cond.notify()

    def _next_batch(self, ask_at: float | None) -> list[dict[str, Any]] | None:
        """Wait for events to post (or, told nobody listens, for the time to ask again);
        None once idle. Takes at most ``EVENTS_MAX`` events, merged, off the queue."""
        with self._cond:
            while True:
                now = time.monotonic()
                if (self._queue and ask_at is None) or (ask_at is not None and now >= ask_at):
                    break
                if now - self._last >= self.IDLE:
                    self._done, self._queue = True, []
                    return None
                wait = self.IDLE - (now - self._last)
                self._cond.wait(timeout=wait if ask_at is None else min(wait, ask_at - now))
            merged = merge_events(self._queue)
            batch, self._queue = merged[:self.EVENTS_MAX], merged[self.EVENTS_MAX:]
            return batch

    def _post(self, batch: list[dict[str, Any]]) -> bool:
        numbered = [{**e, "n": self._n + i} for i, e in enumerate(batch)]
        listening = self.client.progress(self.assignment_id, numbered)
        if listening:
            self._n += len(batch)
        return listening

    def _run(self) -> None:
        ask_at: float | None = None  # told nobody listens: when to ask again
        backoff = self.PROBE_FIRST
        while (batch := self._next_batch(ask_at)) is not None:
            try:
                if ask_at is not None:  # an empty post: is anyone listening now?
                    listening = self.client.progress(self.assignment_id, [])
                    listening = listening and (not batch or self._post(batch))
                else:
                    listening = self._post(batch)
            except (httpx.TransportError, DeAIError):
                listening = None
            with self._cond:
                if listening is None:
                    self._done, self._queue = True, []
                    return
                if listening:
                    ask_at, backoff = None, self.PROBE_FIRST
                    continue
                self._queue[:0] = batch  # delivered nowhere: keep it, in order
                if sum(len(str(e.get("text", ""))) for e in self._queue) > self.BACKLOG_MAX:
                    self._done, self._queue = True, []
                    return
            ask_at = time.monotonic() + backoff
            backoff = min(2 * backoff, self.PROBE_MAX)


def merge_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` with each run of consecutive text events of one choice (the same fields
    but ``text``) made one, in order."""
    out: list[dict[str, Any]] = []
    for e in events:
        last = out[-1] if out else None
        if (last is not None and isinstance(last.get("text"), str)
                and isinstance(e.get("text"), str) and last.keys() == e.keys()
                and all(last[k] == e[k] for k in e if k != "text")):
            out[-1] = {**last, "text": last["text"] + e["text"]}
        else:
            out.append(e)
    return out


def signed_result(identity: Identity, assignment_id: str, output: bytes, units: int,
                  seconds: float) -> wire.ResultIn:
    """The result body for ``output``, signed over ``core.auth.result_message``."""
    digest = hashlib.sha256(output).hexdigest()
    return wire.ResultIn(output_digest=digest, units=units, seconds=round(seconds, 4),
                         signature=identity.sign(auth.result_message(assignment_id, digest,
                                                                     units)))


def start(coordinator: str, key: str, threads: int, slots: int = 1, price: int = 1000,
          stake: int | None = None, name: str = "", *, models: tuple[str, ...] | None = None,
          prices: dict[str, int] | None = None, lease_offer: HostOffer | None = None,
          operator: str | None = None, verifier: bool = False, machine_id: str | None = None,
          source_address: str | None = None) -> int:
    """Run a provider until SIGTERM/SIGINT; the exit status for the CLI (0 on a clean stop).

    ``models`` defaults to ``available_models()``; ``prices`` maps a model to its
    own price, the others are offered at ``price``. ``operator`` names the key (under
    ``$DEAI_HOME/keys``) of the operator that claims this provider; ``verifier`` runs
    the network's verifier (price 0, no stake; the coordinator must list the key).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    identity = keys.create(key, exist_ok=True)
    try:
        owner = keys.load(operator) if operator else None
        agent = ProviderAgent(coordinator, identity, threads=threads, slots=slots,
                              price=price, stake=stake, name=name, models=models, prices=prices,
                              lease_offer=lease_offer, operator=owner, verifier=verifier,
                              machine_id=machine_id, source_address=source_address)
    except DeAIError as exc:
        log.error("provider cannot start: %s", exc)
        return 1
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            agent.run(stop)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            stop.set()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; finishing running tasks", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=target, name="deai-agent", daemon=True)
    worker.start()
    while not stop.wait(0.5):
        pass
    # The worker may sit in a long poll for up to poll_wait seconds; the exit need
    # not wait for that, only for assignments already being run.
    if not agent.wait_idle(DRAIN_TIMEOUT):
        log.warning("tasks still running after %.0f s; leaving them to expire", DRAIN_TIMEOUT)
    worker.join(timeout=1.0)
    if failure:
        log.error("provider stopped: %s", failure[0])
        return 1
    return 0


def _top_up(short: int, stake: int, available: int, net: wire.NetworkInfo) -> int:
    """What to bond for a stake ``short`` of what is wanted (0: nothing to bond): at least
    the network's ``min_bond`` when the balance allows it, else just the shortfall where
    that brings the stake up to the network's minimum (a coordinator takes no smaller
    bond: each is a vault call its settlement key pays gas for); below what it wanted
    but at the minimum, the provider still gets work, and tops up once it can."""
    if short <= 0:
        return 0
    if available >= max(short, net.min_bond):
        return max(short, net.min_bond)
    if short >= net.min_bond or stake < net.min_stake <= stake + short:
        return short  # what it can: refused as unfunded, and said so, if it cannot
    return 0
