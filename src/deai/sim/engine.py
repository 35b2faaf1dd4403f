"""One simulated network, advanced a step at a time with numpy.

Each step every active provider slot takes one dispatched task, as the live
coordinator (``deai.coordinator.verify``) would handle it:

    canary?  core.verify.policy.canary_odds               → compared with the known answer
    else replicate?  ρ = core's replication_probability    → a replica on another provider
    training job, not replicated  → segment audits at p_a (research §10.3)
    mismatch (d > τ)  → referee committee; core.verify.policy.verdict names the fault
    fault  → who is paid, slashed (with or without a bounty) and whose output stands
             are core.lifecycle.decide's effects, read through deai.sim.rules;
             core.verify.policy.slash_amounts on the bonded stake, the job's
             unreleased earnings forfeited, CV reset, probation
    stake below the minimum  → the slot stops getting work, or (Sybil churn) comes
             back as a new identity with fresh stake and a fresh reputation

Reputation changes go through ``deai.sim.vec`` (core's rules over arrays, proven
equal to core in tests); within a step passes apply before fails. A provider's
own tasks and the replicas it runs for others are both tasks to it: it cannot
tell them apart, so a cheater cheats on both.

Compute is measured in task value (price is proportional to compute): useful =
real tasks, extra = canaries + replicas + referee runs + audits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from deai.core.market import stake_for
from deai.core.money import fee_of
from deai.core.verify import policy
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.sim import agents, noise, rules, vec
from deai.sim.agents import Behaviour

MIN_STAKE = 10_000_000  # µ; deai.coordinator.settings.Settings().min_stake (a test pins it)
FEE_BPS = 500           # Settings().fee_bps
FAULTS = {policy.Fault.NONE: 0, policy.Fault.SUBJECT: 1, policy.Fault.CHECKER: 2,
          policy.Fault.BOTH: 3}


@dataclass(frozen=True)
class World:
    params: VerifyParams = field(default_factory=VerifyParams)
    min_stake: int = MIN_STAKE
    stake: int = MIN_STAKE          # what each identity bonds
    fee_bps: int = FEE_BPS
    cost_share: float = 0.6         # honest compute cost as a share of the price
    job_tasks: int = 10             # tasks per job: a fault forfeits the job's earnings so far
    tail: float = 1e-3              # honest ill-conditioned-task probability (noise.honest)
    referee_error: float = 0.0      # α_ref: each referee's vote flips with this probability
    audit_share: float = 0.05       # p_a per training segment
    segments: int = 100             # N_seg per training job
    churn: bool = True              # slashed cheaters come back as new identities
    always_share: float = 0.0       # share of tasks whose client asked to always replicate
    value_median: int = 20_000      # µ per task (lognormal, σ = 1)
    step_seconds: float = 60.0


def max_task_value(w: World) -> int:
    """The largest task a provider bonding ``w.stake`` may take (``core.market.stake_for``)."""
    p = policy.check_probability(Reputation(cv=2**31), w.params)
    lo, hi = 1, w.stake
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if stake_for(mid, w.params.slash_fraction, p) <= w.stake:
            lo = mid
        else:
            hi = mid - 1
    return lo


@lru_cache(maxsize=4096)
def _verdict(subject: tuple[bool, ...], checker: tuple[bool, ...]) -> int:
    return FAULTS[policy.verdict(subject, checker).fault]


class Network:
    """Provider slots, their state, and running totals."""

    def __init__(self, world: World, behaviours: list[Behaviour], slot_behaviour: np.ndarray,
                 rng: np.random.Generator, start: Reputation | None = None) -> None:
        self.w, self.p, self.rng = world, world.params, rng
        self.behaviours = behaviours
        n = slot_behaviour.size
        self.n = n
        self.sb = slot_behaviour.astype(np.int64)
        self.hw = rng.integers(0, noise.CLASS_SCALES.size, n)
        self.active = np.ones(n, bool)
        self.stake = np.full(n, world.stake, np.int64)
        self.rep = vec.Reputations.new(n, start)
        self.q_dispatch = self._q_dispatch()
        self.v_max = max_task_value(world)
        b = behaviours
        self.b_rate = np.array([x.cheat_rate for x in b])
        self.b_turn = np.array([x.turn_after for x in b])
        self.b_saving = np.array([x.saving for x in b])
        self.b_train = np.array([x.training for x in b])
        self.b_honest = np.array([x.honest for x in b])
        self.b_on_replicas = np.array([x.on_replicas for x in b])
        # the current identity of each slot
        self.id_tasks = np.zeros(n, np.int64)
        self.id_cheat_start = np.full(n, -1, np.int64)
        self.pending = np.zeros(n)
        self.job_pos = np.zeros(n, np.int64)
        self.identities = np.ones(n, np.int64)
        # totals per slot (over all its identities)
        def z() -> np.ndarray:
            return np.zeros(n)

        self.tasks, self.earned, self.bounty, self.forfeited = z(), z(), z(), z()
        self.compute, self.slashed, self.bad_accepted = z(), z(), z()
        self.real_tasks, self.useful, self.extra = z(), z(), z()
        self.catches: list[tuple[int, int]] = []  # (slot, tasks from first cheat to the catch)
        self.honest_slashed: set[int] = set()
        self.escalations = 0
        self.faults = np.zeros(4, np.int64)
        self.canary_refs_dropped = 0
        self.steps = 0
        # per step, honest subjects only: useful, extra, and both in expectation given
        # each provider's ρ (the policy's cost without the draws' noise)
        self.window: list[tuple[float, float, float, float]] = []

    def _q_dispatch(self) -> float:
        odds = policy.canary_odds(self.p)  # canaries per real task
        return 1.0 if odds == float("inf") else odds / (1.0 + odds)

    # --- per-task rules -------------------------------------------------------------------

    def _cheats(self, slots: np.ndarray, training: np.ndarray, *,
                replica: bool = False) -> np.ndarray:
        beh = self.sb[slots]
        on = self.id_tasks[slots] >= self.b_turn[beh]
        if replica:
            on &= self.b_on_replicas[beh]
        c = on & (self.rng.random(slots.size) < self.b_rate[beh])
        out: np.ndarray = c & (training | ~self.b_train[beh])  # step-skippers: training only
        return out

    def _cheat_distance(self, beh: np.ndarray, training: np.ndarray) -> np.ndarray:
        e = np.ones(beh.size)
        for b in np.unique(beh):
            m = (beh == b) & ~training  # any cheat on a training job parts the hash chain
            if m.any():
                e[m] = self.behaviours[b].distance(int(m.sum()), self.rng)
        return e

    def _values(self, n: int) -> np.ndarray:
        v = self.rng.lognormal(np.log(self.w.value_median), 1.0, n)
        return np.clip(np.rint(v), 1_000, self.v_max)

    # --- one step ---------------------------------------------------------------------------

    def step(self) -> None:
        w, p, rng = self.w, self.p, self.rng
        idx = np.flatnonzero(self.active)
        n = idx.size
        if n < 2:
            return
        self.steps += 1
        now = self.steps * w.step_seconds
        ar = np.arange(n)
        beh = self.sb[idx]
        train = self.b_train[beh]
        value = self._values(n)
        canary = rng.random(n) < self.q_dispatch
        real = ~canary

        noise_h = noise.honest(n, rng, w.tail)
        cheat_s = self._cheats(idx, train)
        e_s = np.where(train, 0.0, noise_h[ar, self.hw[idx]])
        e_s[cheat_s] = self._cheat_distance(beh[cheat_s], train[cheat_s])

        always = rng.random(n) < w.always_share if w.always_share > 0 else None
        rho = vec.rho(self.rep.cv[idx], self.rep.probation[idx], p, always)
        repl = real & (rng.random(n) < rho)
        jj = rng.integers(0, n - 1, n)
        jj += jj >= ar  # another provider (each slot is its own owner)
        j = idx[jj]
        cheat_j = self._cheats(j, train, replica=True) & repl
        e_j = np.where(train, 0.0, noise_h[ar, self.hw[j]])
        e_j[cheat_j] = self._cheat_distance(self.sb[j][cheat_j], train[cheat_j])
        kc = rng.integers(0, noise.CLASS_SCALES.size, n)
        e_ref = np.where(train, 0.0, noise_h[ar, kc])

        same = np.where(canary, ~cheat_s & (self.hw[idx] == kc),
                        ~cheat_s & ~cheat_j & (self.hw[idx] == self.hw[j]))
        e_chk = np.where(canary, e_ref, np.where(repl, e_j, 0.0))
        d = np.where(same, 0.0, e_s + e_chk)
        checked = canary | repl
        mismatch = checked & (d > noise.TAU)

        extra = value * (canary + repl)
        aud = train & real & ~repl
        if aud.any():
            m = round(agents.SKIP_SHARE * w.segments)
            faked = np.where(cheat_s, m, 0)
            hit = rng.binomial(faked, w.audit_share) * aud
            other = rng.binomial(w.segments - faked, w.audit_share) * aud
            extra += value * (hit + other) / w.segments
            checked |= (hit + other) > 0
            mismatch |= hit > 0

        # referee on every mismatch; core decides the fault
        fault = np.zeros(n, np.int64)
        esc = np.flatnonzero(mismatch)
        if esc.size:
            k = p.referee_committee
            flip_s = rng.random((esc.size, k)) < w.referee_error
            flip_c = rng.random((esc.size, k)) < w.referee_error
            ok_s = (e_s[esc] <= noise.TAU)[:, None] ^ flip_s
            ok_c = (e_chk[esc] <= noise.TAU)[:, None] ^ flip_c
            fault[esc] = [_verdict(tuple(a.tolist()), tuple(b.tolist()))
                          for a, b in zip(ok_s, ok_c, strict=True)]
            extra[esc] += value[esc] * k
            self.escalations += esc.size
            self.faults += np.bincount(fault[esc], minlength=4)
        # who is paid, slashed and believed: core's decisions (deai.sim.rules)
        code = np.where(mismatch, fault, rules.AGREE)
        def look(field: str) -> np.ndarray:
            return rules.lookup(field, code, repl, canary)

        sub_bad, chk_bad = look("subject_slashed"), look("checker_slashed") & repl
        self.canary_refs_dropped += int((mismatch & (fault >= 2) & canary).sum())

        # money and compute
        cs = w.cost_share
        self.compute[idx] += cs * value * (1 - self.b_saving[beh] * cheat_s)
        cost_j = cs * value * (1 - self.b_saving[self.sb[j]] * cheat_j)
        np.add.at(self.compute, j[repl], cost_j[repl])
        pay_s = np.where(real, value - fee_of(value, w.fee_bps), value) * look("subject_paid")
        pay_j = value * (repl & look("checker_paid"))
        np.add.at(self.earned, j, pay_j)

        # accepted results: whichever output the decision let stand
        stands = look("stands")
        accepted_e = np.where(stands == rules.SUBJECT, e_s,
                              np.where(stands == rules.CHECKER, e_j, 0.0))
        bad = real & (accepted_e > noise.TAU)
        self.bad_accepted[idx] += bad
        self.real_tasks[idx] += real
        self.useful[idx] += value * real
        self.extra[idx] += extra
        h = self.b_honest[beh]
        q = self.q_dispatch
        checks = extra - value * (canary + repl)  # referees and audits, as drawn
        self.window.append((float((value * real)[h].sum()), float(extra[h].sum()),
                            float((value * (1 - q))[h].sum()),
                            float((value * (q + (1 - q) * rho) + checks)[h].sum())))

        # first cheats start the tasks-to-detection clock
        for who, c in ((idx, cheat_s), (j, cheat_j)):
            first = who[c & (self.id_cheat_start[who] < 0)]
            self.id_cheat_start[first] = self.id_tasks[first]

        # reputation: passes, then fails
        vec.passed(self.rep, np.concatenate([idx[checked & ~sub_bad],
                                             j[repl & ~chk_bad]]), now, p)
        vec.failed(self.rep, np.concatenate([idx[sub_bad], j[repl & chk_bad]]), now, p)

        # slashes (few): subject then checker
        sub_rep, chk_rep = look("subject_reported"), look("checker_reported")
        for t in np.flatnonzero(sub_bad):
            self._slash(int(idx[t]), int(j[t]) if sub_rep[t] else None, subject=True)
        for t in np.flatnonzero(chk_bad):
            self._slash(int(j[t]), int(idx[t]) if chk_rep[t] else None, subject=False)

        # this step's pay joins the job's pending earnings; whole jobs are released
        self.earned[idx] += pay_s
        self.pending[idx] += pay_s * real
        self.job_pos[idx] += real
        done = idx[self.job_pos[idx] >= w.job_tasks]
        self.pending[done], self.job_pos[done] = 0.0, 0
        self.id_tasks[idx] += 1
        self.tasks[idx] += 1
        self._retire()

    def _slash(self, slot: int, reporter: int | None, *, subject: bool) -> None:
        cut = policy.slash_amounts(int(self.stake[slot]), self.p, reporter=reporter is not None)
        self.stake[slot] -= cut.amount
        self.slashed[slot] += cut.amount
        if reporter is not None:
            self.bounty[reporter] += cut.bounty
        if subject:  # the job's unreleased earnings
            self.forfeited[slot] += self.pending[slot]
            self.pending[slot], self.job_pos[slot] = 0.0, 0
        if self.b_honest[self.sb[slot]]:
            self.honest_slashed.add(slot)
        start = self.id_cheat_start[slot]
        if start != -2:  # an identity's first catch only
            self.catches.append((slot, int(self.id_tasks[slot] - max(start, 0) + 1)))
        self.id_cheat_start[slot] = -2

    def _retire(self) -> None:
        out = np.flatnonzero(self.active & (self.stake < self.w.min_stake))
        if out.size == 0:
            return
        again = out[~self.b_honest[self.sb[out]]] if self.w.churn else out[:0]
        self.active[np.setdiff1d(out, again)] = False
        if again.size:  # a new identity: fresh stake, fresh reputation, bootstrap again
            self.stake[again] = self.w.stake
            self.rep.reset(again)
            self.id_tasks[again] = 0
            self.id_cheat_start[again] = -1
            self.pending[again], self.job_pos[again] = 0.0, 0
            self.identities[again] += 1

    # --- summaries ------------------------------------------------------------------------------

    def cheated_uncaught(self) -> np.ndarray:
        """Slots whose current identity cheated and has not been caught (censored)."""
        return self.id_cheat_start >= 0
