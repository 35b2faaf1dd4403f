"""Hardware challenges, pure: sizing, the seeded matrices, commitments, checks, verdicts.

A challenge proves that a provider's claimed devices compute what they claim,
as fast as they claim, without the coordinator redoing the computation:

1. ``make_spec`` sizes one *part* per claimed device: ``k`` products
   ``C_t = A·S_t·B`` of ``n×n`` float32 matrices, where ``A`` and ``B`` come
   from the challenge seed through a counter-based hash (``entries``: any
   element can be generated on its own, so the checker never builds a whole
   matrix) and ``S_t`` is a seeded signed permutation of the inner dimension
   (so ``k`` products cost ``k`` full multiplies but only one generation).
   ``n``·``k`` are chosen so the products take ``target_s`` at the claimed
   fp32 rate; the part also holds a seeded buffer of ``mem_fraction`` of the
   device's claimed memory.
2. The provider commits to every row of every product: a Merkle root over
   row digests (``row_digest``: sha256 of the row's bytes on a CPU, the
   on-device ``lanehash`` on a GPU). The coordinator times issue → commit.
3. Only then does the coordinator pick ``rows`` random rows (``openings``)
   and buffer positions; the provider answers with the rows and their Merkle
   proofs. ``check`` verifies each proof, recomputes each opened row at
   ``cols`` random columns in float64 and compares within a tolerance that
   fp32 meets and reduced precision (tf32, bf16, fp16) does not.
   A provider that skipped a share ``f`` of the rows survives one challenge
   with probability ``(1-f)^rows``.
4. ``deadline_s = expected_s · margin + latency_s``: ``expected_s`` is the
   time of the work at the claimed rates (plus calibrated allowances for
   generation and hashing); see docs/compute-units.md for the margins.

``next_state`` is the per-claim policy: a right but late answer is a miss; a
wrong one (proof, value, or an error) fails at once; ``flag_after``
consecutive misses flag the claim, and a hard failure (wrong, error, expired)
in a run of at least ``slash_after`` consecutive failures slashes ``slash_bps``
of the stake (a late answer alone never does: load a client put on the machine
makes an honest provider late). Verified figures are the claim scaled by the
speed the provider proved (``ratio`` capped at 1), best of the last few, and
never above what the challenge can measure (``measurable_gflops``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from deai.core import compute

M32 = 0xFFFFFFFF
EPS32 = 2.0**-23
SCHEMES = ("sha256", "lanehash")
STATUSES = ("unverified", "verified", "flagged")
OUTCOMES = ("passed", "slow", "wrong", "error", "expired")


@dataclass(frozen=True)
class Params:
    target_s: float = 3.0  # products' time at the claimed fp32 rate
    margin: float = 1.5  # a device must finish within expected × margin ...
    latency_s: float = 0.5  # ... plus this, for the network and the process
    gen_ns: float = 60.0  # CPU: allowance per generated matrix element
    hash_gbps: float = 0.5  # CPU: allowance for hashing the rows of C
    fill_factor: float = 4.0  # buffer fill allowance: bytes × this / claimed bandwidth
    mem_fraction: float = 0.5  # of each device's claimed memory, held during the challenge
    mem_cap_mb: int = 2048  # a host buffer never exceeds this (a busy host stays usable)
    cpu_n: tuple[int, int] = (256, 2048)
    gpu_n: int = 8192
    max_k: int = 64
    rows: int = 16  # rows opened per challenge
    cols: int = 32  # columns of each opened row recomputed by the checker
    positions: int = 32  # buffer positions opened
    tol_k: float = 8.0
    flag_after: int = 2  # consecutive misses that flag a claim
    slash_after: int = 3  # consecutive failures that slash
    slash_bps: int = 1000  # of the stake, per slash
    period_s: float = 3600.0  # mean time between challenges (exponential)
    retry_s: float = 5.0  # after a failure the next comes this soon (doubling after each)
    grace_s: float = 30.0  # an unanswered challenge expires this long after its deadline
    history: int = 5  # verified figures: best of the last this many passed challenges
    gpu_gbps: float = 500.0  # a GPU's fill allowance when it claims no bandwidth
    max_allow_x: float = 2.0  # a part's allowances never exceed this × target_s (at 10, a
    # claimed bandwidth of 0.25 GB/s bought 30 s a skipped fill spent on the products:
    # a 10x overclaim passed)


@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "cuda:<i>"
    model: str
    memory_mb: int
    gflops: float
    mem_gbps: float
    uuid: str = ""

    @property
    def gpu(self) -> bool:
        return self.name.startswith("cuda")


def _number(value: Any, hi: float, default: float = 0.0) -> float:
    """``value`` if it is a finite number in ``[0, hi]``, else ``default``: rows stored
    before the wire bounded them (or written by hand) are read, never raised on."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    x = float(value)
    return x if math.isfinite(x) and 0 <= x <= hi else default


MAX_MEMORY_MB = 2**26  # as ``wire.Hardware``
MAX_GFLOPS, MAX_GBPS = 1e9, 1e7  # as ``wire.Benchmark``
MIN_GBPS = 0.1  # as ``wire.Benchmark``: the least nonzero bandwidth a claim may state


def devices(hardware: Mapping[str, Any], benchmark: Mapping[str, Any]) -> list[Device]:
    """The devices a registration claims. With GPUs the benchmark rates the GPUs (one
    figure, applied to each); without, it rates the CPU. A figure out of the wire's
    bounds (a malformed stored row) reads as 0, an index as the entry's position."""
    gflops = _number(benchmark.get("gflops"), MAX_GFLOPS)
    gbps = _number(benchmark.get("mem_gbps"), MAX_GBPS)
    gpus = hardware.get("gpus")
    gpus = list(gpus) if isinstance(gpus, list) else []
    if not gpus:
        return [Device("cpu", str(hardware.get("cpu_model", "")),
                       int(_number(hardware.get("memory_mb"), MAX_MEMORY_MB)), gflops, gbps)]
    out = []
    for i, g in enumerate(gpus):
        g = g if isinstance(g, Mapping) else {}
        index = g.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) \
            and 0 <= index < 64 else i
        out.append(Device(f"cuda:{index}", str(g.get("name", "")),
                          int(_number(g.get("memory_mb"), MAX_MEMORY_MB)), gflops,
                          _number(g.get("mem_gbps"), MAX_GBPS), str(g.get("uuid", ""))))
    return out


GPU_CLASSES = ("H200", "H100", "A100", "L40S", "L4", "A10", "4090", "3090", "T4", "V100")


# A quarter of each class's fp32 rate on its spec sheet (GFLOP/s; PCIe parts, clocks held
# down, and what a real run sustains stay above it): a GPU is counted as one only when it
# proved at least this much. A claim of 0.1 GFLOP/s got a challenge any CPU answers in
# time, and a 2-core box without a GPU was verified, and leased, as eight H100s.
GPU_FLOORS = {"H200": 16_000.0, "H100": 12_000.0, "A100": 4_800.0, "L40S": 22_000.0,
              "L4": 7_500.0, "A10": 7_800.0, "4090": 20_000.0, "3090": 9_000.0,
              "T4": 2_000.0, "V100": 3_900.0}
GPU_FLOOR_OTHER = 1_000.0  # any other GPU: 1 TFLOP/s fp32, which every CUDA GPU of the
# last decade does


def gpu_floor_gflops(model: str) -> float:
    """The least fp32 rate a GPU of ``model`` must prove to count as one (``GPU_FLOORS``)."""
    cls = gpu_class(model).removeprefix("gpu:")
    return GPU_FLOORS.get(cls, GPU_FLOOR_OTHER)


def gpu_class(name: str) -> str:
    """A GPU's class from its model name ("NVIDIA H100 80GB HBM3" → ``gpu:H100``): the
    first known class a word of the name is, or is with one letter after it (A10G, V100S);
    a MIG slice of any is ``gpu:other`` (a part of the GPU, not one). Words, not
    substrings: "T400" was a T4, "RTX A1000" an A100, "L40" an L4 and "GH200" an H200,
    each held to a floor its class sets (``GPU_FLOORS``), and an honest one of them
    counted as no GPU at all."""
    words = [w for w in re.split(r"[^A-Z0-9]+", name.upper()) if w]
    if "MIG" in words:
        return "gpu:other"
    for known in GPU_CLASSES:
        for w in words:
            if w == known or (len(w) == len(known) + 1 and w.startswith(known)
                              and w[-1].isalpha()):
                return f"gpu:{known}"
    return "gpu:other"


def fingerprint(hardware: Mapping[str, Any], benchmark: Mapping[str, Any]) -> str:
    """Identity and claim in one digest: any change (model, memory, identifier, count,
    claimed rates) asks for a new challenge."""
    ident = [hardware.get("cpu_model"), hardware.get("cores"), hardware.get("memory_mb"),
             [[d.name, d.model, d.memory_mb, d.uuid] for d in devices(hardware, benchmark)],
             benchmark.get("gflops"), benchmark.get("mem_gbps")]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


# --- sizing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    device: str
    n: int
    k: int
    mem_mb: int
    scheme: str
    compute_s: float  # the products at the claimed rate
    allow_s: float  # generation, hashing and the buffer fill, at calibrated rates

    @property
    def expected_s(self) -> float:
        return self.compute_s + self.allow_s


@dataclass(frozen=True)
class Spec:
    seed: int
    parts: tuple[Part, ...]
    expected_s: float
    deadline_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"seed": str(self.seed), "expected_s": self.expected_s,
                "deadline_s": self.deadline_s,
                "parts": [p.__dict__.copy() for p in self.parts]}
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Spec:
        """A stored spec; a time that is not a finite number (written before ``make_spec``
        capped it) reads as 0: it grants no time and proves no speed."""
        return cls(int(d["seed"]), tuple(Part(**p) for p in d["parts"]),
                   _number(d.get("expected_s"), math.inf), _number(d.get("deadline_s"), math.inf))


def deadline_of(spec: Mapping[str, Any], prm: Params) -> float:
    """A stored spec's deadline, at most ``max_deadline_s``; one that is not a finite
    number (stored before ``make_spec`` capped it) reads as 0, as in ``Spec.from_dict``."""
    return min(_number(spec.get("deadline_s"), math.inf), max_deadline_s(prm))


def size_part(dev: Device, prm: Params) -> Part:
    rate = max(dev.gflops, 0.1) * 1e9
    work = prm.target_s * rate
    if dev.gpu:
        n = prm.gpu_n
        k = max(1, min(prm.max_k, math.ceil(work / (2 * n**3))))
    else:
        lo, hi = prm.cpu_n
        # k products of n: generation is paid once, so prefer several mid-sized products
        n = int(min(hi, max(lo, (work / 16) ** (1 / 3))))
        n -= n % 64 or 0
        n = max(lo, n)
        k = max(1, min(prm.max_k, round(work / (2 * n**3))))
    mem_mb = int(dev.memory_mb * prm.mem_fraction)
    if not dev.gpu:
        mem_mb = min(mem_mb, prm.mem_cap_mb)
    gbps = max(dev.mem_gbps, MIN_GBPS) if dev.mem_gbps else (prm.gpu_gbps if dev.gpu else 1.0)
    allow = mem_mb * 2**20 * prm.fill_factor / (gbps * 1e9)
    if not dev.gpu:
        allow += 2 * n * n * prm.gen_ns * 1e-9 + k * n * n * 4 / (prm.hash_gbps * 1e9)
    # A claimed bandwidth buys time for the fill; a tiny one must not buy an unbounded
    # deadline, in which any machine passes with its whole claim proven.
    allow = min(allow, prm.max_allow_x * prm.target_s)
    return Part(dev.name, n, k, mem_mb, "lanehash" if dev.gpu else "sha256",
                round(2 * n**3 * k / rate, 4), round(allow, 4))


def max_deadline_s(prm: Params) -> float:
    """The longest deadline any challenge gets: its products at the least rate a claim
    may state (``size_part``'s floor of 0.1 GFLOP/s on the largest product), its
    allowances at their cap, stretched by the margin. Finite, whatever was claimed."""
    products = 2 * max(prm.gpu_n, prm.cpu_n[1]) ** 3 / 1e8
    return round((products + prm.max_allow_x * prm.target_s) * prm.margin + prm.latency_s, 4)


def make_spec(seed: int, devs: Sequence[Device], prm: Params) -> Spec:
    """One part per device; devices run at once, so the slowest part sets the deadline.
    Load slows generation, hashing and the fill as much as the products, so the margin
    stretches all of them; the network's latency is added as it is."""
    parts = tuple(size_part(d, prm) for d in devs)
    expected = max((p.expected_s for p in parts), default=0.0)
    deadline = min(expected * prm.margin + prm.latency_s, max_deadline_s(prm))
    return Spec(seed, parts, round(expected, 4), round(deadline, 4))


# --- the seeded data ------------------------------------------------------------------------

def _fmix(h: np.ndarray) -> np.ndarray:
    h = h & M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def key(seed: int, part: int, which: int) -> int:
    """The 32-bit key of matrix ``which`` (0: A, 1: B, 2: buffer) of a part."""
    d = hashlib.sha256(f"{seed}:{part}:{which}".encode()).digest()
    return int.from_bytes(d[:4], "little")


def entries(k: int, index: np.ndarray) -> np.ndarray:
    """float32 entries in [-0.5, 0.5) at flat ``index`` of the matrix keyed ``k``: exact,
    so numpy here and torch on the provider agree bit for bit."""
    h = _fmix((index.astype(np.int64) * 0x9E3779B1 + k) & M32)
    return ((h >> 8).astype(np.float32) * np.float32(2.0**-24)) - np.float32(0.5)


def signed_perm(seed: int, part: int, t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Product ``t``'s inner permutation and signs: ``C_t = (A[:, perm] * sign) @ B``."""
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % 2**63, part, t])))
    perm = g.permutation(n)
    sign = np.where(g.integers(0, 2, n) == 1, 1.0, -1.0).astype(np.float32)
    return perm, sign


def buffer_block(seed: int, part: int, words: int) -> np.ndarray:
    """The base block of a part's buffer; block ``b`` holds ``base ^ (b * 0x9E3779B1)``."""
    out: np.ndarray = (_fmix(np.arange(words, dtype=np.int64) + key(seed, part, 2))
                       | (_fmix(np.arange(words, dtype=np.int64) ^ 0x55555555) << 32))
    return out.astype(np.int64)


BLOCK_WORDS = 1 << 17  # 1 MiB of int64


def buffer_value(seed: int, part: int, position: int) -> int:
    b, j = divmod(position, BLOCK_WORDS)
    base = int(buffer_block(seed, part, j + 1)[j])
    return int(np.int64(base) ^ np.int64(b * 0x9E3779B1))


# --- commitments ----------------------------------------------------------------------------

LANE_SALTS = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)


def lanehash(rows: np.ndarray) -> np.ndarray:
    """A non-linear 128-bit digest per row of a float32 matrix (shape ``(r, n)`` →
    ``(r, 4)`` of uint32 in int64), built from elementwise mixing and a pairwise tree:
    cheap on a GPU, where sha256 is not. Not a cryptographic hash; see the docs."""
    bits = rows.astype(np.float32).view(np.uint32).astype(np.int64)
    cols = np.arange(bits.shape[1], dtype=np.int64)
    lanes = np.stack([_fmix(bits ^ _fmix(cols * 0x9E3779B1 + s)) for s in LANE_SALTS], -1)
    while lanes.shape[1] > 1:
        if lanes.shape[1] % 2:
            lanes = np.concatenate([lanes, np.zeros_like(lanes[:, :1])], axis=1)
        a, b = lanes[:, 0::2], lanes[:, 1::2]
        lanes = _fmix((a * 0x9E3779B1 + np.roll(b, 1, axis=-1)) ^ b ^ np.roll(a, 3, axis=-1))
    return lanes[:, 0, :]


def row_digest(scheme: str, row: np.ndarray) -> bytes:
    if scheme == "sha256":
        return hashlib.sha256(np.ascontiguousarray(row, dtype="<f4").tobytes()).digest()
    return bytes(lanehash(row.reshape(1, -1))[0].astype("<u4").tobytes())


def leaf(digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + digest).digest()


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        if len(cur) % 2:
            cur = [*cur, cur[-1]]
        levels.append([hashlib.sha256(b"\x01" + cur[i] + cur[i + 1]).digest()
                       for i in range(0, len(cur), 2)])
    return levels


def merkle_proof(levels: list[list[bytes]], index: int) -> list[bytes]:
    proof = []
    for level in levels[:-1]:
        sib = index ^ 1
        proof.append(level[sib] if sib < len(level) else level[index])
        index //= 2
    return proof


def merkle_verify(lf: bytes, index: int, proof: Sequence[bytes], root: bytes) -> bool:
    h = lf
    for sib in proof:
        h = hashlib.sha256(b"\x01" + (sib + h if index % 2 else h + sib)).digest()
        index //= 2
    return h == root


def leaf_index(spec: Spec, part: int, t: int, i: int) -> int:
    """Leaves run part by part, product by product, row by row."""
    off = sum(p.k * p.n for p in spec.parts[:part])
    return off + t * spec.parts[part].n + i


# --- the opening and the check -------------------------------------------------------------

@dataclass(frozen=True)
class Opening:
    rows: tuple[tuple[int, int, int], ...]  # (part, product, row)
    cols: tuple[tuple[int, ...], ...]  # columns recomputed, per opened row
    positions: tuple[tuple[int, int], ...]  # (part, buffer word)


def openings(spec: Spec, open_seed: int, prm: Params) -> Opening:
    """What the checker asks for, drawn after the commitment from its own seed."""
    g = np.random.Generator(np.random.PCG64(open_seed % 2**63))
    rows, cols, positions = [], [], []
    for _ in range(prm.rows):
        p = int(g.integers(0, len(spec.parts)))
        part = spec.parts[p]
        rows.append((p, int(g.integers(0, part.k)), int(g.integers(0, part.n))))
        cols.append(tuple(int(c) for c in g.choice(part.n, min(prm.cols, part.n),
                                                      replace=False)))
    for p, part in enumerate(spec.parts):
        words = part.mem_mb * 2**20 // 8
        for _ in range(prm.positions if words else 0):
            positions.append((p, int(g.integers(0, words))))
    return Opening(tuple(rows), tuple(cols), tuple(positions))


def expected_row(spec: Spec, part: int, t: int, i: int, cols: Sequence[int]) -> np.ndarray:
    """Row ``i`` of product ``t`` at ``cols``, in float64, from O(n·len(cols)) entries."""
    n = spec.parts[part].n
    perm, sign = signed_perm(spec.seed, part, t, n)
    a = entries(key(spec.seed, part, 0), i * n + np.arange(n)).astype(np.float64)
    a = a[perm] * sign
    c = np.asarray(cols, dtype=np.int64)
    b = entries(key(spec.seed, part, 1), np.arange(n)[:, None] * n + c[None, :])
    out: np.ndarray = a @ b.astype(np.float64)
    return out


def tolerance(n: int, prm: Params) -> float:
    """fp32 accumulates about eps·n/12 of error on these entries; reduced precision
    (tf32, bf16, fp16 inputs) lands well above ``tol_k`` times that."""
    return prm.tol_k * EPS32 * n / 12.0


@dataclass(frozen=True)
class Answer:
    rows: Sequence[np.ndarray]  # the opened rows, in the order asked, full length n
    proofs: Sequence[Sequence[bytes]]
    values: Sequence[int]  # the buffer words, in the order asked


@dataclass(frozen=True)
class Verdict:
    outcome: str  # passed | slow | wrong | error | expired
    reason: str
    ratio: float = 0.0  # expected / measured time: the share of its claim it proved


def check(spec: Spec, op: Opening, root: bytes, ans: Answer, elapsed_s: float,
          prm: Params) -> Verdict:
    """Judge an answer: proofs, values, then time. Never raises on bad data."""
    if len(ans.rows) != len(op.rows) or len(ans.proofs) != len(op.rows) \
            or len(ans.values) != len(op.positions):
        return Verdict("wrong", "the answer does not match what was asked")
    for (p, t, i), cols, row, proof in zip(op.rows, op.cols, ans.rows, ans.proofs,
                                           strict=True):
        part = spec.parts[p]
        row = np.asarray(row, dtype=np.float32)
        if row.shape != (part.n,) or not np.all(np.isfinite(row)):
            return Verdict("wrong", f"row {i} of product {t} on {part.device}: bad shape")
        lf = leaf(row_digest(part.scheme, row))
        if not merkle_verify(lf, leaf_index(spec, p, t, i), proof, root):
            return Verdict("wrong", f"row {i} of product {t} on {part.device}: "
                                    "not the committed row")
        err = float(np.max(np.abs(row[list(cols)].astype(np.float64)
                                  - expected_row(spec, p, t, i, cols))))
        if err > tolerance(part.n, prm):
            return Verdict("wrong", f"row {i} of product {t} on {part.device}: off by "
                                    f"{err:.2e} (> {tolerance(part.n, prm):.2e})")
    for (p, pos), v in zip(op.positions, ans.values, strict=True):
        if int(v) != buffer_value(spec.seed, p, pos):
            return Verdict("wrong", f"buffer word {pos} on {spec.parts[p].device} is wrong")
    ratio = spec.expected_s / max(elapsed_s - prm.latency_s, 1e-6)
    if elapsed_s > spec.deadline_s:
        return Verdict("slow", f"committed after {elapsed_s:.2f} s; the claimed hardware "
                               f"needs {spec.expected_s:.2f} s (deadline "
                               f"{spec.deadline_s:.2f} s)", round(ratio, 4))
    return Verdict("passed", "", round(ratio, 4))


# --- the claim's state ------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimState:
    status: str = "unverified"
    failures: int = 0  # consecutive
    passes: int = 0
    fails: int = 0
    ratios: tuple[float, ...] = ()  # of recent passes
    wrong: bool = False  # flagged for a wrong answer, not only for speed
    flags: int = 0  # times flagged

    @property
    def scale(self) -> float:
        return min(1.0, max(self.ratios, default=0.0))


@dataclass(frozen=True)
class Step:
    state: ClaimState
    slash_bps: int = 0
    next_in_s: float = 0.0
    flagged_now: bool = False


def next_state(st: ClaimState, v: Verdict, prm: Params, u: float) -> Step:
    """The claim after verdict ``v``; ``u`` in (0, 1] draws the next challenge's time."""
    if v.outcome == "passed":
        ratios = (*st.ratios, min(1.0, v.ratio))[-prm.history:]
        new = replace(st, status="verified", failures=0, passes=st.passes + 1,
                      ratios=ratios, wrong=False)
        return Step(new, 0, -prm.period_s * math.log(max(u, 1e-12)))
    failures = st.failures + 1
    hard = v.outcome in ("wrong", "error", "expired")
    flag = hard or failures >= prm.flag_after
    new = replace(st, failures=failures, fails=st.fails + 1,
                  status="flagged" if flag else st.status,
                  wrong=st.wrong or v.outcome == "wrong",
                  flags=st.flags + (1 if flag and st.status != "flagged" else 0))
    if v.outcome == "slow" and v.ratio > 0:  # it proved this much of its claim
        new = replace(new, ratios=(min(1.0, v.ratio),))
    elif hard:
        new = replace(new, ratios=())
    # A late answer never slashes: load its provider did not choose (a client's job that
    # fills every core) makes an honest machine late, and a client must not be able to
    # burn a provider's stake that way. It costs the overclaimer what it did not prove
    # (its verified figures) and a flag. A hard failure (a wrong answer, an error, no
    # answer) slashes once the run of failures reaches ``slash_after``, and every one
    # after it: counted only on every ``slash_after``-th failure, a forger that put a
    # late honest answer between its wrong ones was never slashed.
    slash = prm.slash_bps if hard and failures >= prm.slash_after else 0
    # the next challenge comes soon, then ever later: a failing device is re-checked
    # quickly but a stuck one is not slashed away in minutes
    later = min(prm.period_s, prm.retry_s * 2.0 ** min(failures - 1, 30))
    return Step(new, slash, later, flag and st.status != "flagged")


def reset(st: ClaimState) -> ClaimState:
    """A new identity or claim: proven figures no longer apply; the record stays. So do
    a wrong answer's flag and the run of failures: registering again is not a way out of
    them (only a pass on the new identity clears them, as ``next_state`` does)."""
    return replace(st, status="flagged" if st.wrong else "unverified", ratios=())


def measurable_gflops(dev: Device, prm: Params) -> float:
    """The highest fp32 rate a challenge of ``dev`` can tell from a slower one. Products
    are sized to take ``target_s`` at the claimed rate up to ``max_k`` products of the
    largest ``n``; a claim beyond that size gets products that take less, and the time
    measured is then mostly the allowances (generation, hashing, the fill), which do not
    shrink with the claim: a device far slower than its claim would pass. So a claim is
    verified at most at the rate at which its largest products take as long as its
    allowances: about 400 GFLOP/s for a CPU at the defaults (n 2048, k 64, 2.65 s of
    allowances), while a GPU's small allowances leave its bound beyond any GPU's."""
    part = size_part(dev, prm)
    if part.k < prm.max_k or part.allow_s <= 0:
        return math.inf
    return 2 * part.n**3 * part.k / (part.allow_s * 1e9)


@dataclass(frozen=True)
class Verified:
    devices: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    units: float = 0.0
    memory_mb: int = 0


def verified(devs: Sequence[Device], host_memory_mb: int, st: ClaimState,
             prm: Params) -> Verified:
    """Per device: the claimed rates scaled by what the challenges proved. Memory (the
    host's, which matching uses) counts only while the claim has not failed for a wrong
    or missing answer; a GPU host's own memory is taken as claimed."""
    s = st.scale if st.status != "unverified" else 0.0
    mem_ok = st.status == "verified" or (st.status == "flagged" and not st.wrong
                                         and st.ratios != ())
    out, total = [], 0.0
    for d in devs:
        gbps = d.mem_gbps or (prm.gpu_gbps if d.gpu else 0.0)
        gflops = min(d.gflops, measurable_gflops(d, prm))
        cu = compute.compute_units(gflops * s, gbps * s) if s else 0.0
        total += cu
        out.append({"device": d.name, "model": d.model, "gflops": round(gflops * s, 2),
                    "mem_gbps": round(gbps * s, 2),
                    "memory_mb": d.memory_mb if mem_ok else 0, "units": cu})
    return Verified(tuple(out), round(total, 3), host_memory_mb if mem_ok else 0)
