"""The agent's side of hardware challenges: run one, commit, open; and the claim it makes.

    runner = Runner(threads=4)
    root = runner.commit(spec)            # compute every part, Merkle root over row digests
    body = runner.answer(opening)          # opened rows with proofs, buffer words

Each part runs on its own device at the same time (a GPU part on ``cuda:<i>``
with torch, generation and digests on the device; a CPU part with numpy
generation, torch matmul on ``threads`` threads and sha256 row digests).
TF32 is switched off: the check's tolerance fits fp32 and nothing coarser.
A part that cannot allocate its buffer or matrices makes the commit carry an
error instead of a root.

``Responder`` is the thread the agent starts after joining: it asks
``/api/hardware/challenge`` every ``interval`` seconds and answers what it
gets. ``claimed(hw, bench)`` is what the agent registers: the probe and the
benchmark, with memory capped by ``DEAI_PROVIDER_MEMORY_MB`` (an operator
offering part of a machine) and, for demonstrations and tests only, the
faults of ``DEAI_HW_CHEAT`` (``overclaim=<factor>``: that multiple of the best
rate it measured, ``memory_mb=<MiB>``, ``wrong``: operands at bfloat16 precision).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from deai.core import compute, wire
from deai.core import hwcheck as hc
from deai.core import wire_hardware as wh

log = logging.getLogger("deai.provider.challenge")
ROW_CHUNK = 1024  # rows digested at once on a GPU


@dataclass(frozen=True)
class Cheat:
    overclaim: float = 1.0
    memory_mb: int | None = None
    wrong: bool = False

    @classmethod
    def parse(cls, text: str) -> Cheat:
        over, mem, wrong = 1.0, None, False
        for item in filter(None, (t.strip() for t in text.split(","))):
            name, _, value = item.partition("=")
            if name == "overclaim":
                over = float(value)
            elif name == "memory_mb":
                mem = int(value)
            elif name == "wrong":
                wrong = True
            else:
                raise ValueError(f"DEAI_HW_CHEAT: unknown fault {name!r}")
        return cls(over, mem, wrong)


def cheat_from_env() -> Cheat:
    return Cheat.parse(os.environ.get("DEAI_HW_CHEAT", ""))


def sustained_gflops(threads: int, device: str = "cpu", seconds: float = 1.0) -> float:
    """fp32 matmul rate held over ``seconds`` of back-to-back products of the challenge's
    kind: total work over total time, not the best burst, so that a claim holds under
    the load the machine had when it was measured."""
    import torch

    n = 4096 if device.startswith("cuda") else 768
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        a = torch.rand(n, n, device=device)
        b = torch.rand(n, n, device=device)
        with torch.inference_mode():
            (a @ b).sum().item()  # warm-up
            done, t0 = 0, time.perf_counter()
            while True:
                (a @ b).sum().item()  # .item(): wait for the device, keep nothing
                done += 1
                if time.perf_counter() - t0 >= seconds and done >= 2:
                    break
        return 2.0 * n**3 * done / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(previous)


def claimed(hw: wire.Hardware, bench: wire.Benchmark, threads: int = 1) -> tuple[
        wire.Hardware, wire.Benchmark]:
    """What the agent registers. The fp32 rate is the lower of the benchmark's best burst
    and the sustained rate (``DEAI_HW_SUSTAIN_S`` seconds of it, 0 to skip)."""
    sustain = float(os.environ.get("DEAI_HW_SUSTAIN_S", "0.5") or 0)
    best = bench.gflops
    if sustain > 0:
        rate = sustained_gflops(threads, "cuda" if hw.gpus else "cpu", sustain)
        best = max(best, rate)
        bench = bench.model_copy(update={"gflops": round(min(bench.gflops, rate), 2)})
    cap = os.environ.get("DEAI_PROVIDER_MEMORY_MB", "")
    if cap.isdigit() and int(cap) > 0:
        hw = hw.model_copy(update={"memory_mb": min(hw.memory_mb, int(cap))})
    ch = cheat_from_env()
    if ch.memory_mb is not None:
        hw = hw.model_copy(update={"memory_mb": ch.memory_mb})
    if ch.overclaim != 1.0:  # the fault: a multiple of the best rate it ever measured
        bench = bench.model_copy(update={"gflops": round(best * ch.overclaim, 2),
                                         "mem_gbps": round(bench.mem_gbps * ch.overclaim, 2)})
    return hw, bench


# --- one part on one device ----------------------------------------------------------------

def _torch_entries(torch: Any, k: int, index: Any) -> Any:
    """``core.hwcheck.entries`` on a torch device, bit for bit."""
    h = (index * 0x9E3779B1 + k) & hc.M32
    h = _torch_fmix(h)
    return (h >> 8).to(torch.float32) * (2.0**-24) - 0.5


def _torch_fmix(h: Any) -> Any:
    h = h & hc.M32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & hc.M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & hc.M32
    return h ^ (h >> 16)


def torch_lanehash(torch: Any, rows: Any) -> Any:
    """``core.hwcheck.lanehash`` on a torch device: (r, n) float32 → (r, 4) int64."""
    bits = rows.contiguous().view(torch.int32).to(torch.int64) & hc.M32
    cols = torch.arange(bits.shape[1], dtype=torch.int64, device=rows.device)
    lanes = torch.stack([_torch_fmix(bits ^ _torch_fmix(cols * 0x9E3779B1 + s))
                         for s in hc.LANE_SALTS], -1)
    while lanes.shape[1] > 1:
        if lanes.shape[1] % 2:
            lanes = torch.cat([lanes, torch.zeros_like(lanes[:, :1])], dim=1)
        a, b = lanes[:, 0::2], lanes[:, 1::2]
        lanes = _torch_fmix((a * 0x9E3779B1 + torch.roll(b, 1, dims=-1)) ^ b
                            ^ torch.roll(a, 3, dims=-1))
    return lanes[:, 0, :]


class PartRun:
    """One part: its products (kept until opened) and its buffer."""

    def __init__(self, spec: hc.Spec, index: int, threads: int, cheat: Cheat) -> None:
        self.spec, self.index, self.part = spec, index, spec.parts[index]
        self.threads, self.cheat = threads, cheat
        self.products: list[Any] = []
        self.buffer: Any = None
        self.digests: list[bytes] = []

    def run(self) -> None:
        import torch

        p, seed, n = self.part, self.spec.seed, self.part.n
        dev = torch.device(p.device)
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.cuda.set_device(dev)
        on_device = p.scheme == "lanehash"  # a GPU's path (also runs on a CPU, for tests)
        self._fill(torch, dev, on_device)
        if on_device:
            idx = torch.arange(n * n, dtype=torch.int64, device=dev)
            a = _torch_entries(torch, hc.key(seed, self.index, 0), idx).view(n, n)
            b = _torch_entries(torch, hc.key(seed, self.index, 1), idx).view(n, n)
            del idx
        else:
            flat = np.arange(n * n, dtype=np.int64)
            a = torch.from_numpy(hc.entries(hc.key(seed, self.index, 0), flat).reshape(n, n))
            b = torch.from_numpy(hc.entries(hc.key(seed, self.index, 1), flat).reshape(n, n))
        def operand(m: Any) -> Any:
            # The cheat: operands cut to bfloat16 precision (a low-precision shortcut), the
            # product in float32, so it costs what honest work costs on any device (a
            # bfloat16 matmul is fast on a GPU but slow on many CPUs) and is wrong.
            return m.to(torch.bfloat16).to(torch.float32) if self.cheat.wrong else m

        with torch.inference_mode():
            for t in range(p.k):
                perm, sign = hc.signed_perm(seed, self.index, t, n)
                at = a[:, torch.from_numpy(perm).to(dev)] * torch.from_numpy(sign).to(dev)
                c = (operand(at) @ operand(b)).to(torch.float32)
                self.products.append(c)
                self.digests.extend(self._digest(torch, c))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def _fill(self, torch: Any, dev: Any, on_device: bool) -> None:
        words = self.part.mem_mb * 2**20 // 8
        if not words:
            return
        blocks = -(-words // hc.BLOCK_WORDS)
        base = hc.buffer_block(self.spec.seed, self.index, hc.BLOCK_WORDS)
        if on_device:
            buf = torch.empty((blocks, hc.BLOCK_WORDS), dtype=torch.int64, device=dev)
            tb = torch.from_numpy(base).to(dev)
            mult = torch.arange(blocks, dtype=torch.int64, device=dev) * 0x9E3779B1
            for i in range(0, blocks, 256):  # 256 MiB at a time: no full-size temporary
                torch.bitwise_xor(tb[None, :], mult[i:i + 256, None], out=buf[i:i + 256])
        else:
            buf = np.empty((blocks, hc.BLOCK_WORDS), dtype=np.int64)
            for i in range(blocks):  # block by block: never a second full-size temporary
                np.bitwise_xor(base, np.int64(i * 0x9E3779B1), out=buf[i])
        self.buffer = buf

    def _digest(self, torch: Any, c: Any) -> list[bytes]:
        if self.part.scheme == "sha256":
            arr = c.contiguous().numpy().astype("<f4", copy=False)
            return [hashlib.sha256(arr[i].tobytes()).digest() for i in range(arr.shape[0])]
        out: list[bytes] = []
        for r0 in range(0, c.shape[0], ROW_CHUNK):
            lanes = torch_lanehash(torch, c[r0:r0 + ROW_CHUNK]).cpu().numpy()
            out.extend(lanes.astype("<u4").tobytes()[i * 16:(i + 1) * 16]
                       for i in range(lanes.shape[0]))
        return out

    def row(self, t: int, i: int) -> np.ndarray:
        return np.asarray(self.products[t][i].float().cpu().numpy(), dtype=np.float32)

    def word(self, pos: int) -> int:
        b, j = divmod(pos, hc.BLOCK_WORDS)
        return int(self.buffer[b][j])


class Runner:
    """Runs a challenge's parts in parallel, then answers its opening."""

    def __init__(self, threads: int, cheat: Cheat | None = None) -> None:
        self.threads = max(1, threads)
        self.cheat = cheat if cheat is not None else cheat_from_env()
        self.parts: list[PartRun] = []
        self.levels: list[list[bytes]] = []
        self.spec: hc.Spec | None = None

    def commit(self, spec: hc.Spec) -> str:
        """Compute everything; return the Merkle root (hex). Raises MemoryError/RuntimeError
        when a device cannot hold its part."""
        import torch

        torch.set_num_threads(self.threads)
        self.spec = spec
        self.parts = [PartRun(spec, i, self.threads, self.cheat) for i in range(len(spec.parts))]
        with ThreadPoolExecutor(max(1, len(self.parts))) as pool:
            for f in [pool.submit(p.run) for p in self.parts]:
                f.result()
        leaves = [hc.leaf(d) for p in self.parts for d in p.digests]
        self.levels = hc.merkle_levels(leaves)
        return self.levels[-1][0].hex()

    def answer(self, rows: list[list[int]], positions: list[list[int]]) -> wh.OpenIn:
        assert self.spec is not None, "commit() first"
        out_rows, proofs = [], []
        for p, t, i in rows:
            out_rows.append(base64.b64encode(
                self.parts[p].row(t, i).astype("<f4").tobytes()).decode())
            proofs.append([h.hex() for h in hc.merkle_proof(
                self.levels, hc.leaf_index(self.spec, p, t, i))])
        values = [self.parts[p].word(pos) for p, pos in positions]
        return wh.OpenIn(rows=out_rows, proofs=proofs, values=values)

    def release(self) -> None:
        self.parts, self.levels = [], []


def run_challenge(client: Any, threads: int, ch: wh.ChallengeOut,
                  cheat: Cheat | None = None) -> wh.VerdictOut | None:
    """Run one challenge against the coordinator: commit, then open. The verdict."""
    spec = hc.Spec.from_dict(ch.spec)
    runner = Runner(threads, cheat)
    t0 = time.monotonic()
    try:
        root = runner.commit(spec)
        body = wh.CommitIn(root=root, seconds=round(time.monotonic() - t0, 4))
    except (MemoryError, RuntimeError) as exc:  # torch's out-of-memory is a RuntimeError
        runner.release()
        log.warning("challenge %s: a device could not run its part: %s", ch.id, exc)
        body = wh.CommitIn(error=f"{type(exc).__name__}: {exc}"[:500],
                           seconds=round(time.monotonic() - t0, 4))
    try:
        got = client._post(f"/api/hardware/challenges/{ch.id}/commit", body, wh.CommitOut)
        if got.opening is None:
            return got.verdict  # type: ignore[no-any-return]
        ans = runner.answer(got.opening.rows, got.opening.positions)
        verdict: wh.VerdictOut = client._post(f"/api/hardware/challenges/{ch.id}/open", ans,
                                              wh.VerdictOut)
        return verdict
    finally:
        runner.release()


class Responder:
    """Polls for challenges and answers them until ``stop`` is set (the agent's thread)."""

    def __init__(self, client: Any, threads: int, stop: threading.Event,
                 interval: Callable[[], float], on_error: Callable[[Exception], None]) -> None:
        self.client, self.threads, self.stop = client, threads, stop
        self.interval, self.on_error = interval, on_error

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                polled = self.client._post("/api/hardware/challenge", {}, wh.PollOut)
                if polled.challenge is not None:
                    v = run_challenge(self.client, self.threads, polled.challenge)
                    if v is not None:
                        log.log(logging.INFO if v.outcome == "passed" else logging.WARNING,
                                "hardware challenge %s: %s %s (%.2f CU verified)",
                                v.challenge, v.outcome, v.reason, v.verified_units)
                    continue  # a failure is followed soon by another: ask again at once
            except Exception as exc:  # the agent's work goes on; say why and retry later
                self.on_error(exc)
            self.stop.wait(self.interval())


def start(base_url: str, identity: Any, threads: int, stop: threading.Event,
          interval: Callable[[], float]) -> threading.Thread:
    """Start the agent's challenge thread, on a client of its own."""
    from deai.client import sdk

    client = sdk.Client(base_url, identity)

    def on_error(exc: Exception) -> None:
        log.debug("hardware challenge poll failed: %s", exc)

    poll_s = os.environ.get("DEAI_HW_POLL_S", "")
    every = (lambda: float(poll_s)) if poll_s else interval
    t = threading.Thread(target=Responder(client, threads, stop, every, on_error).run,
                         name="deai-hwcheck", daemon=True)
    t.start()
    return t


# --- deai provider verify ------------------------------------------------------------------

def verify_local(threads: int, prm: hc.Params | None = None,
                 bench: wire.Benchmark | None = None) -> dict[str, Any]:
    """Run the challenge the network would issue for this machine's claim, check it the way
    the coordinator does (timed here, so without network latency) and report it."""
    import secrets

    from deai.provider import benchmark, hardware

    prm = prm or hc.Params()
    hw = hardware.probe()
    if bench is None:
        bench = benchmark.run(threads, "cuda" if hw.gpus else "cpu")
    hw, bench = claimed(hw, bench, threads)
    devs = hc.devices(hw.model_dump(), bench.model_dump())
    spec = hc.make_spec(secrets.randbits(63), devs, prm)
    runner = Runner(threads)
    t0 = time.monotonic()
    error = None
    try:
        root = bytes.fromhex(runner.commit(spec))
    except (MemoryError, RuntimeError) as exc:
        error, root = f"{type(exc).__name__}: {exc}", b""
    elapsed = time.monotonic() - t0
    if error is None:
        op = hc.openings(spec, secrets.randbits(63), prm)
        body = runner.answer([list(r) for r in op.rows], [list(p) for p in op.positions])
        ans = hc.Answer([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in body.rows],
                        [[bytes.fromhex(h) for h in p] for p in body.proofs], body.values)
        # timed locally: add the latency allowance back, as the coordinator's clock would
        v = hc.check(spec, op, root, ans, elapsed + prm.latency_s / 2, prm)
    else:
        v = hc.Verdict("error", error)
    runner.release()
    state = hc.next_state(hc.ClaimState(), v, prm, 0.5).state
    ver = hc.verified(devs, hw.memory_mb, state, prm)
    return {"hardware": hw.model_dump(), "benchmark": bench.model_dump(),
            "fingerprint": hc.fingerprint(hw.model_dump(), bench.model_dump()),
            "spec": spec.to_dict(), "elapsed_s": round(elapsed, 4), "outcome": v.outcome,
            "reason": v.reason, "ratio": v.ratio, "claimed_units": round(sum(
                compute.compute_units(d.gflops, d.mem_gbps or d.gflops) for d in devs), 3),
            "verified_units": ver.units, "devices": list(ver.devices),
            "verified_memory_mb": ver.memory_mb}


def verify_command(threads: int, as_json: bool = False, target_s: float | None = None) -> int:
    """The body of ``deai provider verify``: run, print, exit 0 when the claim passes."""
    import json

    prm = hc.Params() if target_s is None else hc.Params(target_s=target_s)
    rep = verify_local(threads, prm)
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
        return 0 if rep["outcome"] == "passed" else 1
    hw, b = rep["hardware"], rep["benchmark"]
    print(f"machine      {hw['cpu_model']}, {hw['cores']} cores, {hw['memory_mb']} MiB, "
          f"{len(hw['gpus'])} GPU(s)")
    print(f"claim        {b['gflops']} GFLOP/s fp32, {b['mem_gbps']} GB/s "
          f"= {rep['claimed_units']} CU   (fingerprint {rep['fingerprint'][:16]})")
    for p in rep["spec"]["parts"]:
        print(f"challenge    {p['device']}: {p['k']} × {p['n']}² matmul, {p['mem_mb']} MiB "
              f"held, {p['scheme']} rows")
    print(f"time         {rep['elapsed_s']:.2f} s (expected {rep['spec']['expected_s']:.2f} s, "
          f"deadline {rep['spec']['deadline_s']:.2f} s incl. {prm.latency_s} s latency)")
    print(f"verdict      {rep['outcome']} {rep['reason']}".rstrip())
    for d in rep["devices"]:
        print(f"verified     {d['device']}: {d['gflops']} GFLOP/s, {d['memory_mb']} MiB, "
              f"{d['units']} CU")
    print(f"network sees {rep['verified_units']} verified CU of {rep['claimed_units']} claimed")
    return 0 if rep["outcome"] == "passed" else 1
