"""The provider agent: probes the machine, registers offers, runs assigned shards.

Start one with ``python -m deai.provider --coordinator URL --key NAME`` or
``deai.provider.agent.start(...)``.
"""
