"""Workloads: one module per job kind, each knowing how to run and meter a shard.

``deai.workloads.get(name)`` returns the workload registered under ``name``;
importing this package does not import torch (each workload loads lazily).
"""

from deai.workloads.base import Workload, get, names

__all__ = ["Workload", "get", "names"]
