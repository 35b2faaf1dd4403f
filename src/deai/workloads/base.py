"""The ``Workload`` protocol and the registry of workloads by name.

A workload turns one shard blob into one output blob and a count of billable
units. It must be deterministic on a given device: the same model and shard
give the same bytes, so replicas and referees can compare results.

    wl = get("embeddings")
    wl.load("all-MiniLM-L6-v2")             # keep the model warm (idempotent)
    output, units = wl.run("all-MiniLM-L6-v2", shard)
    output, units = wl.run(model, shard, ctx)  # long tasks: checkpoints, resume, cancel

Workloads are registered as ``module:attribute`` strings and imported on first
use, so a process that never runs one never imports its heavy dependencies.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from deai.core.errors import InvalidInput


def _no_checkpoint(step: int, data: bytes, chain_hash: str, meta: dict[str, Any]) -> None:
    return None


def _no_progress(event: dict[str, Any]) -> None:
    return None


def _no_fetch(digest: str) -> bytes:
    raise LookupError(f"no blob store to fetch {digest} from")


@dataclass
class TaskContext:
    """What a long-running workload may use besides its shard.

    ``resume`` is the task's last accepted checkpoint (``{"step", "digest",
    "chain_hash", "meta"}``) when it resumes after another provider stopped;
    ``checkpoint`` uploads a checkpoint and records it with the coordinator;
    ``fetch`` downloads a blob by digest; ``cancelled`` says to stop early;
    ``progress`` reports partial output to a caller streaming the answer.
    """

    assignment_id: str = ""
    resume: dict[str, Any] | None = None
    checkpoint: Callable[[int, bytes, str, dict[str, Any]], None] = _no_checkpoint
    fetch: Callable[[str], bytes] = _no_fetch
    cancelled: Callable[[], bool] = field(default=lambda: False)
    progress: Callable[[dict[str, Any]], None] = _no_progress
    """Report partial output as it is made (``{"text": delta}`` for a streamed chat); the
    agent relays it to a caller streaming the answer. Best effort: never raises."""


@runtime_checkable
class Workload(Protocol):
    name: str

    def load(self, model: str) -> None:
        """Load ``model`` and keep it warm; a second call is a no-op."""

    def run(self, model: str, shard: bytes, ctx: TaskContext | None = None
            ) -> tuple[bytes, int]:
        """Run one shard; return the output blob and the units it consumed."""


_REGISTRY: dict[str, str] = {
    "embeddings": "deai.workloads.embeddings:WORKLOAD",
    "command": "deai.workloads.command:WORKLOAD",
    "chat": "deai.workloads.chat:WORKLOAD",
    "train": "deai.workloads.train:WORKLOAD",
}
_LOADED: dict[str, Workload] = {}
_LOCK = threading.Lock()


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Workload:
    """The workload registered as ``name``; ``InvalidInput`` for an unknown one."""
    with _LOCK:
        wl = _LOADED.get(name)
        if wl is None:
            target = _REGISTRY.get(name)
            if target is None:
                raise InvalidInput(
                    f"unknown workload {name!r}; known: {', '.join(names())}", field="workload"
                )
            module, attr = target.split(":")
            wl = getattr(importlib.import_module(module), attr)
            _LOADED[name] = wl
        return wl
