"""The verification simulator behind ``deai sim verify``: core's policies at scale.

    vec.py      core's per-provider decisions over numpy arrays (proven equal in tests)
    noise.py    honest floating-point noise per hardware class; each cheat's distance
    agents.py   provider behaviours: honest and every adversary class of the threat model
    checkers.py the checker draw: stake × reputation, never the subject's operator
    rules.py    who is paid, slashed, audited, looked back at: read off core's decisions
    engine.py   one network, a step at a time: canaries, replicas, forced errors,
                referees, audits, slashes, look-back, reputation, Sybil churn
    classes.py  one run per adversary class (sybils, colluders, role readers, ...)
    run.py      the experiments, the closed forms beside them, the targets
    report.py   rich tables, report.json; plot.py: detection_vs_overhead.png

Imports only ``deai.core`` among DeAI's packages (tests/test_layers.py).
"""

from deai.sim.run import Plan, verify

__all__ = ["Plan", "verify"]
