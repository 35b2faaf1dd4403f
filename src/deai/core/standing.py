"""A provider's public standing: the one word the explorer shows next to its name.

From public facts only (``wire.ProviderOut``): whether it has ever been slashed,
whether it is on probation for some workload (full replication after a fault),
whether its stake is below the network's minimum (it can take no work), and
whether it is heartbeating. The worst fact wins, in the order of ``Standing``:
a slashed cheater that keeps heartbeating is ``slashed``, never ``online``.
"""

from __future__ import annotations

from enum import StrEnum


class Standing(StrEnum):
    SLASHED = "slashed"          # stake taken for bad work or hoarding, at least once
    PROBATION = "probation"      # every result replicated until it earns trust back
    BELOW_STAKE = "below_stake"  # bonded less than the minimum: matching skips it
    OFFLINE = "offline"          # no heartbeat within the timeout
    ONLINE = "online"            # none of the above


def standing(*, online: bool, slashes: int, probation: bool, stake: int,
             min_stake: int) -> Standing:
    """The worst of the facts, in ``Standing`` order."""
    if slashes > 0:
        return Standing.SLASHED
    if probation:
        return Standing.PROBATION
    if stake < min_stake:
        return Standing.BELOW_STAKE
    return Standing.ONLINE if online else Standing.OFFLINE
