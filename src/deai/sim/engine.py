"""One simulated network, advanced a step at a time with numpy.

Each step every active provider slot takes one dispatched task, as the live
coordinator (``coordinator.matching`` and ``core.lifecycle.decide``) would:

    canary?  core.verify.policy.canary_odds               → compared with the known answer
    else replicate?  ρ = core's replication_probability    → a replica drawn at random,
             weighted by stake × reputation, never of the subject's operator
             (deai.sim.checkers, as core.market.pick)
    re-scoring kind, replicated → at forced_share the checker first gets a claim made
             wrong on purpose; one that agrees is slashed (decide.on_forced), and the
             real check goes to another checker
    training job, not replicated  → segment audits at p_a (research §10.3)
    mismatch (d > τ)  → a trusted, deterministic referee; core.verify.policy.verdict
             names the fault
    accepted  → at audit_share a trusted verifier re-runs it (decide.on_audit): a wrong
             result slashes everyone whose word made it stand and is corrected
    fault  → who is paid, slashed (with or without a bounty), looked back at and whose
             output stands are core.lifecycle.decide's effects, read through
             deai.sim.rules; core.verify.policy.slash_amounts on the bonded stake, the
             job's unreleased earnings forfeited, CV reset, probation
    look-back  → a slashed provider's accepted results within core's reach
             (``core.verify.lookback``: the window of ``World.window_tasks`` steps, and
             since the provider's last look-back by default, or its last passed check)
             are re-run; wrong ones are corrected. A wrong result that leaves the window
             uncorrected stays correctable while it is within reach of a future
             look-back (``reachable``); it stands for good once the anchor moves past it
             (``standing``).
    stake below the minimum  → the slot stops getting work, or (Sybil churn) comes
             back as a new identity of the same operator with fresh stake and reputation

Reputation changes go through ``deai.sim.vec`` (core's rules over arrays, proven
equal to core in tests); within a step passes apply before fails. Audits are
decided in the step the result is accepted (a verifier with capacity to spare).

Compute is measured in task value (price is proportional to compute): useful =
real tasks, extra = canaries + replicas + forced errors + referee runs + audits
+ look-back re-runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from deai.core.market import stake_for
from deai.core.money import fee_of
from deai.core.verify import lookback, policy
from deai.core.verify.params import VerifyParams
from deai.core.verify.reputation import Reputation
from deai.sim import agents, checkers, noise, rules, vec
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
    window_tasks: int = 60          # challenge window in steps (Settings: 3,600 s at 60 s)
    rescore_share: float = 0.5      # tasks of a re-scoring kind (chat): forced errors apply
    leak: float = 0.0               # a role reader sees a check with this probability
    diversity: bool = True          # no checker shares the subject's operator
    look_back: lookback.Reach = lookback.DEFAULT  # how far back a look-back re-checks


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


CAUSES = ("canary", "replica", "as checker", "forced error", "audit", "segment audit")


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
        self.b_echo = np.array([x.echo for x in b])
        self.b_ring = np.array([x.ring for x in b])
        self.b_reads = np.array([x.reads_roles for x in b])
        self.b_stamps = np.array([x.stamps for x in b])
        # operators: a slot is its own operator, except a sybil's keys (``keys`` slots each)
        self.operator = np.arange(n, dtype=np.int64)
        for k, x in enumerate(b):
            mine = np.flatnonzero(self.sb == k)
            if x.keys > 1:
                self.operator[mine] = mine[(np.arange(mine.size) // x.keys) * x.keys]
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
        self.corrected, self.standing = z(), z()
        self.looked_back = z()  # value of the results look-backs re-ran
        # accepted results still in the challenge window: wrong ones and values, per step
        self.win_bad = np.zeros((n, world.window_tasks))
        self.win_val = np.zeros((n, world.window_tasks))
        # past the window, still within a look-back's reach: wrong ones and values (all)
        self.reach_bad, self.reach_val = z(), z()
        # core.verify.lookback.Marks per identity, in steps (NaN: never)
        self.last_pass = np.full(n, np.nan)
        self.last_review = np.full(n, np.nan)
        # (slot, tasks from first cheat to the catch, cause index into CAUSES)
        self.catches: list[tuple[int, int, int]] = []
        self.honest_slashed: set[int] = set()
        self.escalations = 0
        self.faults = np.zeros(4, np.int64)
        self.canary_refs_dropped = 0
        self.no_checker = 0
        self.forced_errors = 0
        self.audits = 0
        self.partner_checks = 0  # a checker drawn for a partner's (operator or ring) work
        self.steps = 0
        # per step, honest subjects only: useful, extra, and both in expectation given
        # each provider's ρ (the policy's cost without the draws' noise)
        self.window: list[tuple[float, float, float, float]] = []

    def _q_dispatch(self) -> float:
        odds = policy.canary_odds(self.p)  # canaries per real task
        return 1.0 if odds == float("inf") else odds / (1.0 + odds)

    # --- per-task rules -------------------------------------------------------------------

    def _cheats(self, slots: np.ndarray, training: np.ndarray, seen: np.ndarray, *,
                replica: bool = False) -> np.ndarray:
        """Who cheats on its task. ``seen``: the task will be checked, which a role
        reader notices with probability ``World.leak`` (and then works honestly)."""
        beh = self.sb[slots]
        on = self.id_tasks[slots] >= self.b_turn[beh]
        if replica:
            on &= self.b_on_replicas[beh]
        c = on & (self.rng.random(slots.size) < self.b_rate[beh])
        if self.w.leak > 0:
            c &= ~(self.b_reads[beh] & seen & (self.rng.random(slots.size) < self.w.leak))
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

    def partners(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Slots that echo each other: one operator's keys, or one colluding ring."""
        sa, sb = self.sb[a], self.sb[b]
        out: np.ndarray = (self.operator[a] == self.operator[b]) | (
            self.b_ring[sa] & (sa == sb))
        return out

    def _checkers(self, subjects: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = checkers.weights(self.stake, self.rep, idx)
        return checkers.draw(subjects, idx, w, self.operator, self.rng,
                             diversity=self.w.diversity)

    # --- one step ---------------------------------------------------------------------------

    def step(self) -> None:
        w, p, rng = self.w, self.p, self.rng
        idx = np.flatnonzero(self.active)
        n = idx.size
        if n < 2:
            return
        self.steps += 1
        now = self.steps * w.step_seconds
        pos = self.steps % w.window_tasks  # results accepted a window ago leave it
        self._leave_window(pos)
        self.win_val[:, pos] = 0.0
        ar = np.arange(n)
        beh = self.sb[idx]
        train = self.b_train[beh]
        value = self._values(n)
        canary = rng.random(n) < self.q_dispatch
        real = ~canary
        rescore = ~train & (rng.random(n) < w.rescore_share)

        always = rng.random(n) < w.always_share if w.always_share > 0 else None
        rho = vec.rho(self.rep.cv[idx], self.rep.probation[idx], p, always)
        repl = real & (rng.random(n) < rho)
        audit_draw = real & (rng.random(n) < p.audit_share)
        j = np.zeros(n, np.int64)
        j[repl], got = self._checkers(idx[repl], idx)
        self.no_checker += int((~got).sum())
        repl[np.flatnonzero(repl)[~got]] = False  # the check waits: not accepted this step
        # forced errors: the first checker gets a forged claim, a second one the real check
        forced = repl & rescore & (rng.random(n) < p.forced_share)
        jf = j.copy()
        if forced.any():
            j[forced], got2 = self._checkers(idx[forced], idx)
            j[np.flatnonzero(forced)[~got2]] = jf[np.flatnonzero(forced)[~got2]]
        self.forced_errors += int(forced.sum())

        noise_h = noise.honest(n, rng, w.tail)
        cheat_s = self._cheats(idx, train, canary | repl | audit_draw)
        e_s = np.where(train, 0.0, noise_h[ar, self.hw[idx]])
        e_s[cheat_s] = self._cheat_distance(beh[cheat_s], train[cheat_s])

        bj = self.sb[j]
        cheat_j = self._cheats(j, train, repl, replica=True) & repl
        e_j = np.where(train, 0.0, noise_h[ar, self.hw[j]])
        e_j[cheat_j] = self._cheat_distance(bj[cheat_j], train[cheat_j])
        partner = repl & self.partners(idx, j)
        self.partner_checks += int(partner.sum())
        echo = partner & self.b_echo[bj]          # agrees with a partner, right or wrong
        stamp = repl & self.b_stamps[bj]
        agree_blind = echo | (stamp & rescore)    # "agrees" without working
        made_up = stamp & ~rescore & ~agree_blind  # must return an output: a made-up one
        e_j = np.where(agree_blind, e_s, e_j)
        e_j[made_up] = noise.random_output(int(made_up.sum()), rng)
        cheat_j = (cheat_j | made_up) & ~agree_blind
        kc = rng.integers(0, noise.CLASS_SCALES.size, n)
        e_ref = np.where(train, 0.0, noise_h[ar, kc])

        same = np.where(canary, ~cheat_s & (self.hw[idx] == kc),
                        (~cheat_s & ~cheat_j & (self.hw[idx] == self.hw[j])) | agree_blind)
        e_chk = np.where(canary, e_ref, np.where(repl, e_j, 0.0))
        d = np.where(same, 0.0, e_s + e_chk)
        checked = canary | repl
        mismatch = checked & (d > noise.TAU)

        extra = value * (canary + repl + forced)
        aud_seg = train & real & ~repl
        seg_hit = np.zeros(n, bool)
        if aud_seg.any():
            m = round(agents.SKIP_SHARE * w.segments)
            faked = np.where(cheat_s, m, 0)
            hit = rng.binomial(faked, w.audit_share) * aud_seg
            other = rng.binomial(w.segments - faked, w.audit_share) * aud_seg
            extra += value * (hit + other) / w.segments
            checked |= (hit + other) > 0
            seg_hit = hit > 0
            mismatch |= seg_hit

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

        # the forced errors: core's on_forced, noticed unless the checker rubber-stamps
        noticed = ~self.b_stamps[self.sb[jf]]
        f_slash = forced & np.array([rules.forced(False).slashed, rules.forced(True).slashed]
                                    )[noticed.astype(int)]
        f_pass = forced & np.array([rules.forced(False).rated_ok, rules.forced(True).rated_ok]
                                   )[noticed.astype(int)]

        # accepted results: whichever output the decision let stand; audits of them
        stands = look("stands")
        accepted_e = np.where(stands == rules.SUBJECT, e_s,
                              np.where(stands == rules.CHECKER, e_j, 0.0))
        accepted = real & (stands != None)  # noqa: E711 - an object array
        bad = real & (accepted_e > noise.TAU)
        audit = audit_draw & (code == rules.AGREE) & _AUDITED[repl.astype(int)]
        self.audits += int(audit.sum())
        extra += value * audit
        caught_audit = audit & bad  # the verifier disagrees: on_audit slashes who stood
        a_sub = caught_audit & _AUDIT_SLASH[repl.astype(int), 0]
        a_chk = caught_audit & _AUDIT_SLASH[repl.astype(int), 1]
        self.corrected[idx] += caught_audit
        self.bad_accepted[idx] += bad
        self.win_bad[idx, pos] += bad & ~caught_audit
        self.win_val[idx, pos] += value * accepted
        self.real_tasks[idx] += real
        self.useful[idx] += value * real
        h = self.b_honest[beh]
        q = self.q_dispatch
        # in expectation: canaries, replicas, forced errors and audits at their odds;
        # referee runs and segment audits as drawn
        drawn = extra - value * (canary + repl + forced + audit)
        odds = q + (1 - q) * (rho * (1 + p.forced_share * rescore) + p.audit_share)
        self.window.append((float((value * real)[h].sum()), float(extra[h].sum()),
                            float((value * (1 - q))[h].sum()),
                            float((value * odds + drawn)[h].sum())))

        # money and compute
        cs = w.cost_share
        self.compute[idx] += cs * value * (1 - self.b_saving[beh] * cheat_s)
        cost_j = cs * value * (1 - self.b_saving[bj] * (cheat_j | agree_blind))
        np.add.at(self.compute, j[repl], cost_j[repl])
        np.add.at(self.compute, jf[forced & noticed], cs * value[forced & noticed])
        pay_s = np.where(real, value - fee_of(value, w.fee_bps), value) * look("subject_paid")
        pay_s = pay_s * ~caught_audit
        np.add.at(self.earned, j, value * (repl & look("checker_paid") & ~a_chk))
        np.add.at(self.earned, jf, value * (forced & noticed & rules.forced(True).paid))

        # first cheats start the tasks-to-detection clock
        blind = (echo & (e_s > noise.TAU)) | stamp  # an echo of a wrong answer; any stamp
        for who, c in ((idx, cheat_s), (j, cheat_j | blind), (jf, forced & ~noticed)):
            first = who[c & (self.id_cheat_start[who] < 0)]
            self.id_cheat_start[first] = self.id_tasks[first]

        # reputation: passes, then fails
        fail_s = sub_bad | a_sub
        fail_j = (repl & chk_bad) | a_chk
        vec.passed(self.rep, np.concatenate([idx[checked & ~fail_s], j[repl & ~fail_j],
                                             jf[f_pass]]), now, p)
        self._passed_check(idx[checked & ~fail_s])
        vec.failed(self.rep, np.concatenate([idx[fail_s], j[fail_j], jf[f_slash]]), now, p)

        # slashes (few): each with core's look-back, its cause recorded
        self.earned[idx] += pay_s
        self.pending[idx] += pay_s * real
        self.job_pos[idx] += real
        sub_rep, chk_rep = look("subject_reported"), look("checker_reported")
        back_s = _LOOKS_BACK[rules.SUBJECT]
        back_c = _LOOKS_BACK[rules.CHECKER]
        for t in np.flatnonzero(sub_bad):
            cause = 0 if canary[t] else (5 if seg_hit[t] and not repl[t] else 1)
            self._slash(int(idx[t]), int(j[t]) if sub_rep[t] else None, subject=True,
                        cause=cause, back=back_s)
        for t in np.flatnonzero(chk_bad):
            self._slash(int(j[t]), int(idx[t]) if chk_rep[t] else None, subject=False,
                        cause=2, back=back_c)
        for t in np.flatnonzero(f_slash):
            self._slash(int(jf[t]), None, subject=False, cause=3,
                        back=rules.forced(False).looks_back)
        for t in np.flatnonzero(a_sub):
            self._slash(int(idx[t]), None, subject=True, cause=4,
                        back=rules.SUBJECT in rules.audit(False, bool(repl[t])).looks_back)
        for t in np.flatnonzero(a_chk):
            self._slash(int(j[t]), None, subject=False, cause=4,
                        back=rules.CHECKER in rules.audit(False, True).looks_back)
        self.extra[idx] += extra

        # whole jobs are released
        done = idx[self.job_pos[idx] >= w.job_tasks]
        self.pending[done], self.job_pos[done] = 0.0, 0
        self.id_tasks[idx] += 1
        self.tasks[idx] += 1
        self._retire()

    def _slash(self, slot: int, reporter: int | None, *, subject: bool, cause: int,
               back: bool) -> None:
        if not self.active[slot] or self.stake[slot] < self.w.min_stake:
            return  # slashed already this step: out of the market, its window re-run
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
        if back:  # look-back: its results in reach are re-run, wrong ones corrected
            self.corrected[slot] += self.win_bad[slot].sum() + self.reach_bad[slot]
            self.extra[slot] += self.win_val[slot].sum() + self.reach_val[slot]
            self.looked_back[slot] += self.win_val[slot].sum() + self.reach_val[slot]
            self.win_bad[slot] = 0.0
            self.win_val[slot] = 0.0
            self.reach_bad[slot] = self.reach_val[slot] = 0.0
            self.last_review[slot] = self.steps  # its record is reviewed up to now
        start = self.id_cheat_start[slot]
        if start != -2:  # an identity's first catch only
            self.catches.append((slot, int(self.id_tasks[slot] - max(start, 0) + 1), cause))
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
            self._unreachable(again)  # an old identity's record is out of reach
            self.last_pass[again] = self.last_review[again] = np.nan

    # --- look-back reach ----------------------------------------------------------------------

    def _leave_window(self, pos: int) -> None:
        """Results accepted a window ago (step ``steps - window``) leave the window: those
        a future look-back can still reach stay correctable, the others stand."""
        w = self.w
        bad, val = self.win_bad[:, pos], self.win_val[:, pos]
        # the window holds the results of the last ``window_tasks`` steps, this one
        # included: accepted at ``steps - window_tasks + 1`` or later
        cut = vec.look_back_since(w.look_back, self.last_pass, self.last_review,
                                  now=self.steps, window=w.window_tasks - 1)
        keep = (self.steps - w.window_tasks) >= cut
        self.reach_bad += bad * keep
        self.reach_val += val * keep
        self.standing += bad * ~keep
        self.win_bad[:, pos] = 0.0
        self.win_val[:, pos] = 0.0

    def _unreachable(self, slots: np.ndarray) -> None:
        """The anchor moved to now: what is past the window is out of reach for good."""
        self.standing[slots] += self.reach_bad[slots]
        self.reach_bad[slots] = self.reach_val[slots] = 0.0

    def _passed_check(self, slots: np.ndarray) -> None:
        """A passed check as the checked party: the anchor of ``Reach.LAST_PASS``."""
        if self.w.look_back == lookback.Reach.LAST_PASS and slots.size:
            self._unreachable(slots)
            self.last_pass[slots] = self.steps

    # --- summaries ------------------------------------------------------------------------------

    def cheated_uncaught(self) -> np.ndarray:
        """Slots whose current identity cheated and has not been caught (censored)."""
        return self.id_cheat_start >= 0

    def reachable(self) -> np.ndarray:
        """Wrong results past the window at the end, uncorrected, that a look-back would
        still reach (their provider not caught yet)."""
        out: np.ndarray = self.reach_bad.copy()
        return out

    def provisional(self) -> np.ndarray:
        """Wrong results still inside the window at the end (neither final nor corrected)."""
        out: np.ndarray = self.win_bad.sum(axis=1)
        return out


# core's decisions, read once: is an agreement audited, whom an audit's mismatch slashes
_AUDITED = np.array([rules.rule(rules.AGREE, r, False, True).audited for r in (False, True)])
_AUDIT_SLASH = np.array([[rules.SUBJECT in rules.audit(False, r).slashed,
                          rules.CHECKER in rules.audit(False, r).slashed] for r in (False, True)])
_LOOKS_BACK = {rules.SUBJECT: all(rules.SUBJECT in rules.rule(c, True, False).looks_back
                                  for c in range(rules.AGREE)
                                  if rules.rule(c, True, False).subject_slashed),
               rules.CHECKER: all(rules.CHECKER in rules.rule(c, True, False).looks_back
                                  for c in range(rules.AGREE)
                                  if rules.rule(c, True, False).checker_slashed)}
