"""The verification knobs, with the defaults of research/verification.md §10.7."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VerifyParams:
    replicate: bool = True            # False: replicate only when a client asks (no policy)
    canary_share: float = 0.015       # q: share of dispatched tasks that are canaries
    rho_min: float = 0.029            # floor: 1.52 % canaries + 2.9 % replicas + 0.5 % audits ≤ 5 %
    cv_bootstrap: int = 10            # full replication until this many consecutive passes
    probation_tasks: int = 50         # full replication after a fault, for this many checks
    slash_fraction: float = 0.5       # share of bonded stake lost per confirmed fault
    bounty_share: float = 0.2         # share of a slash paid to whoever raised the mismatch
    decay_half_life: float = 7 * 24 * 3600.0  # seconds: old passes and fails fade
    referee_committee: int = 1        # referees per escalation; majority decides
    audit_share: float = 0.005        # accepted results a trusted verifier re-runs
    forced_share: float = 0.02        # re-scoring checks handed a claim made wrong on purpose

    def __post_init__(self) -> None:
        for name in ("canary_share", "rho_min", "slash_fraction", "bounty_share",
                     "audit_share", "forced_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if self.cv_bootstrap < 1 or self.referee_committee < 1:
            raise ValueError("cv_bootstrap and referee_committee must be at least 1")


DEFAULT = VerifyParams()
OFF = VerifyParams(replicate=False, canary_share=0.0, audit_share=0.0, forced_share=0.0)
