"""The provider's sandbox for untrusted commands: bubblewrap plus resource limits.

The implementation lives in ``deai.workloads.sandbox`` because the command
workload runs inside it and workloads may not import the provider package
(tests/test_layers.py); the agent asks here whether it may offer commands::

    ok, why = sandbox.available()   # (False, "bwrap not found on PATH ...")

What the sandbox isolates and limits, and what it does not guarantee:
docs/security.md ("What the sandbox guarantees").
"""

from deai.workloads.sandbox import Limits, Result, SandboxUnavailable, available, run

__all__ = ["Limits", "Result", "SandboxUnavailable", "available", "run"]
