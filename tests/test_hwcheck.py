"""Hardware challenges, pure and in-process: sizing, seeded data, commitments, checks, policy.

The provider's runner (``deai.provider.challenge``) is run for real on the CPU
here, so what the coordinator checks is what torch really computed.
"""

from __future__ import annotations

import base64
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deai.core import hwcheck as hc
from deai.provider import challenge

SMALL = hc.Params(target_s=0.05, cpu_n=(64, 256), mem_fraction=0.25, rows=8, cols=16,
                  positions=8)
HW = {"cpu_model": "test cpu", "cores": 2, "memory_mb": 64, "gpus": []}
BENCH = {"gflops": 20.0, "mem_gbps": 8.0}


def _run(spec: hc.Spec, cheat: challenge.Cheat | None = None,
         open_seed: int = 7) -> tuple[hc.Opening, bytes, hc.Answer]:
    runner = challenge.Runner(1, cheat or challenge.Cheat())
    root = bytes.fromhex(runner.commit(spec))
    op = hc.openings(spec, open_seed, SMALL)
    body = runner.answer([list(r) for r in op.rows], [list(p) for p in op.positions])
    rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in body.rows]
    proofs = [[bytes.fromhex(h) for h in p] for p in body.proofs]
    return op, root, hc.Answer(rows, proofs, body.values)


def _spec(seed: int = 11, hw: dict | None = None, bench: dict | None = None) -> hc.Spec:
    return hc.make_spec(seed, hc.devices(hw or HW, bench or BENCH), SMALL)


def test_an_honest_cpu_answer_passes_and_proves_its_claim() -> None:
    spec = _spec()
    assert spec.parts[0].n >= 64 and spec.parts[0].k >= 1 and spec.parts[0].mem_mb == 16
    op, root, ans = _run(spec)
    v = hc.check(spec, op, root, ans, elapsed_s=spec.expected_s, prm=SMALL)
    assert v.outcome == "passed", v.reason
    assert v.ratio > 0


def test_a_late_right_answer_is_slow_and_proves_less() -> None:
    spec = _spec()
    op, root, ans = _run(spec)
    v = hc.check(spec, op, root, ans, elapsed_s=spec.deadline_s + 0.01, prm=SMALL)
    assert v.outcome == "slow"
    assert v.ratio < 1 / SMALL.margin + 0.05


def test_reduced_precision_is_a_wrong_product() -> None:
    spec = _spec()
    op, root, ans = _run(spec, challenge.Cheat(wrong=True))
    v = hc.check(spec, op, root, ans, elapsed_s=0.0, prm=SMALL)
    assert v.outcome == "wrong" and "off by" in v.reason


def test_a_row_that_is_not_the_committed_one_fails() -> None:
    spec = _spec()
    op, root, ans = _run(spec)
    rows = list(ans.rows)
    rows[0] = rows[0].copy()
    rows[0][0] = np.nextafter(rows[0][0], np.float32(1))  # one ulp: within tolerance
    v = hc.check(spec, op, root, hc.Answer(rows, ans.proofs, ans.values), 0.0, SMALL)
    assert v.outcome == "wrong" and "committed" in v.reason


def test_a_wrong_buffer_word_fails() -> None:
    spec = _spec()
    op, root, ans = _run(spec)
    values = list(ans.values)
    values[0] ^= 1
    v = hc.check(spec, op, root, hc.Answer(ans.rows, ans.proofs, values), 0.0, SMALL)
    assert v.outcome == "wrong" and "buffer" in v.reason


def test_a_malformed_answer_is_wrong_not_an_exception() -> None:
    spec = _spec()
    op, root, ans = _run(spec)
    assert hc.check(spec, op, root, hc.Answer(ans.rows[:-1], ans.proofs, ans.values), 0.0,
                    SMALL).outcome == "wrong"
    bad = [np.zeros(3, dtype=np.float32)] + list(ans.rows[1:])
    assert hc.check(spec, op, root, hc.Answer(bad, ans.proofs, ans.values), 0.0,
                    SMALL).outcome == "wrong"


def test_torch_and_numpy_generate_the_same_entries_and_lanehash() -> None:
    idx = np.arange(5000, dtype=np.int64) * 977
    k = hc.key(3, 0, 1)
    assert np.array_equal(hc.entries(k, idx),
                          challenge._torch_entries(torch, k, torch.from_numpy(idx)).numpy())
    rows = hc.entries(k, np.arange(6 * 37)).reshape(6, 37)
    assert np.array_equal(hc.lanehash(rows),
                          challenge.torch_lanehash(torch, torch.from_numpy(rows)).numpy())


def test_lanehash_commitments_check_like_sha256_ones() -> None:
    spec = _spec()
    spec = replace(spec, parts=tuple(replace(p, scheme="lanehash") for p in spec.parts))
    op, root, ans = _run(spec)
    assert hc.check(spec, op, root, ans, 0.0, SMALL).outcome == "passed"


def test_sizing_follows_the_claim() -> None:
    slow, fast = _spec(bench={"gflops": 5.0, "mem_gbps": 8.0}), _spec(bench={"gflops": 40.0,
                                                                              "mem_gbps": 8.0})
    work = [2 * p.n**3 * p.k for s in (slow, fast) for p in s.parts]
    assert work[1] > 4 * work[0]
    gpu = {**HW, "gpus": [{"index": i, "name": "NVIDIA H100", "memory_mb": 80_000}
                          for i in range(8)]}
    spec = hc.make_spec(1, hc.devices(gpu, {"gflops": 50_000.0, "mem_gbps": 20.0}), hc.Params())
    assert [p.device for p in spec.parts] == [f"cuda:{i}" for i in range(8)]
    assert all(p.scheme == "lanehash" and p.mem_mb == 40_000 for p in spec.parts)
    # eight GPUs run at once: the deadline is one part's, not eight
    assert spec.expected_s == pytest.approx(spec.parts[0].expected_s)


def test_fingerprint_changes_with_identity_and_claim() -> None:
    base = hc.fingerprint(HW, BENCH)
    assert base == hc.fingerprint(dict(HW), dict(BENCH))
    assert base != hc.fingerprint({**HW, "memory_mb": 128}, BENCH)
    assert base != hc.fingerprint(HW, {**BENCH, "gflops": 21.0})
    gpu = {**HW, "gpus": [{"index": 0, "name": "A100", "memory_mb": 40_000, "uuid": "GPU-1"}]}
    assert hc.fingerprint(gpu, BENCH) != hc.fingerprint(
        {**gpu, "gpus": [{**gpu["gpus"][0], "uuid": "GPU-2"}]}, BENCH)


def test_merkle_proofs_verify_only_their_leaf() -> None:
    leaves = [hc.leaf(bytes([i])) for i in range(13)]
    levels = hc.merkle_levels(leaves)
    root = levels[-1][0]
    for i in range(13):
        proof = hc.merkle_proof(levels, i)
        assert hc.merkle_verify(leaves[i], i, proof, root)
        assert not hc.merkle_verify(leaves[(i + 1) % 13], i, proof, root)


# --- the policy ------------------------------------------------------------------------------

PASS, SLOW = hc.Verdict("passed", "", 1.0), hc.Verdict("slow", "late", 0.5)
WRONG = hc.Verdict("wrong", "off")


def test_two_misses_flag_and_three_hard_failures_slash() -> None:
    prm = hc.Params()
    s1 = hc.next_state(hc.ClaimState(), SLOW, prm, 0.5)
    assert s1.state.status == "unverified" and not s1.slash_bps and s1.next_in_s == prm.retry_s
    s2 = hc.next_state(s1.state, SLOW, prm, 0.5)
    assert s2.state.status == "flagged" and s2.flagged_now and not s2.slash_bps
    assert s2.next_in_s == 2 * prm.retry_s
    late = hc.next_state(s2.state, SLOW, prm, 0.5)  # late, however often: never a slash
    assert late.state.failures == 3 and not late.slash_bps and not late.flagged_now
    s3 = hc.next_state(s2.state, hc.Verdict("expired", "no answer"), prm, 0.5)
    assert s3.slash_bps == prm.slash_bps and not s3.flagged_now
    # a late honest answer between wrong ones does not reset the count: every wrong one
    # in the run slashes from then on (before, only every third failure could)
    again = hc.next_state(late.state, WRONG, prm, 0.5)
    assert again.state.failures == 4 and again.slash_bps == prm.slash_bps
    back = hc.next_state(s3.state, PASS, prm, 0.5)
    assert back.state.status == "verified" and back.state.failures == 0
    assert back.next_in_s == pytest.approx(-prm.period_s * np.log(0.5))


def test_a_wrong_answer_flags_at_once_and_takes_the_memory() -> None:
    prm = hc.Params()
    st1 = hc.next_state(hc.ClaimState(status="verified", ratios=(1.0,)), WRONG, prm, 0.5).state
    assert st1.status == "flagged" and st1.wrong
    v = hc.verified(hc.devices(HW, BENCH), 64, st1, prm)
    assert v.memory_mb == 0 and v.units == 0.0


def test_slow_claims_keep_what_they_proved() -> None:
    prm = hc.Params()
    st1 = hc.next_state(hc.ClaimState(status="verified", ratios=(1.0,)), SLOW, prm, 0.5).state
    v = hc.verified(hc.devices(HW, BENCH), 64, st1, prm)
    full = hc.verified(hc.devices(HW, BENCH), 64, hc.ClaimState("verified", ratios=(1.0,)), prm)
    assert 0 < v.units < full.units and v.memory_mb == 64


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["passed", "slow", "wrong", "error", "expired"]),
                min_size=1, max_size=12))
def test_policy_properties(outcomes: list[str]) -> None:
    """Verified units never exceed the claim; a pass always clears the failure count;
    slashes come only with a hard failure in a run of at least slash_after consecutive
    failures (late answers alone never slash: a client's load can make an honest machine
    late)."""
    prm = hc.Params()
    state, streak = hc.ClaimState(), 0
    claim = hc.verified(hc.devices(HW, BENCH), 64, hc.ClaimState("verified", ratios=(1.0,)),
                        prm).units
    for o in outcomes:
        step = hc.next_state(state, hc.Verdict(o, "", 0.7 if o in ("passed", "slow") else 0.0),
                             prm, 0.3)
        streak = 0 if o == "passed" else streak + 1
        assert step.state.failures == streak
        assert bool(step.slash_bps) == (o not in ("passed", "slow")
                                        and streak >= prm.slash_after)
        assert hc.verified(hc.devices(HW, BENCH), 64, step.state, prm).units <= claim + 1e-9
        state = step.state
