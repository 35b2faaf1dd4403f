"""Reputation per provider and workload: CV, decayed passes and fails, probation.

CV counts consecutive checked-valid results (BOINC's adaptive replication
counter): only *checked* tasks move it, a failure resets it. Passes and fails
decay with a half-life so that an old record neither shields nor haunts a
provider forever. ``score`` (0..1) feeds matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from deai.core.verify.params import VerifyParams


@dataclass(frozen=True)
class Reputation:
    cv: int = 0
    passes: float = 0.0
    fails: float = 0.0
    probation: int = 0
    updated_at: float = 0.0

    def decayed(self, now: float, p: VerifyParams) -> Reputation:
        if now <= self.updated_at or self.updated_at == 0.0:
            return replace(self, updated_at=max(now, self.updated_at))
        k = math.pow(0.5, (now - self.updated_at) / p.decay_half_life)
        return replace(self, passes=self.passes * k, fails=self.fails * k, updated_at=now)

    def passed(self, now: float, p: VerifyParams) -> Reputation:
        r = self.decayed(now, p)
        return replace(r, cv=r.cv + 1, passes=r.passes + 1.0,
                       probation=max(0, r.probation - 1))

    def failed(self, now: float, p: VerifyParams) -> Reputation:
        r = self.decayed(now, p)
        return replace(r, cv=0, fails=r.fails + 1.0, probation=p.probation_tasks)

    def score(self) -> float:
        """A Laplace-smoothed pass rate, halved while on probation; 0.5 for a newcomer."""
        s = (self.passes + 1.0) / (self.passes + self.fails + 2.0)
        return s * 0.5 if self.probation > 0 else s
