"""Verification policy, pure: who gets checked, how results compare, who is at fault.

    params.py      the network's knobs (canary share, replication floor, slash share, ...)
    policy.py      replication probability, canary draw, referee verdicts
    reputation.py  consecutive-valid counts, decayed passes and fails, probation
    economics.py   detection probability, minimum stake, expected profit of cheating
    lookback.py    how far back a caught provider's results are re-checked

Comparators live with their kinds (``Kind.compare``); the decisions that use
them live here. The coordinator and the simulator drive the same functions.
"""
