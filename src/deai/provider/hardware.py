"""Probe the machine a provider offers: CPU, usable cores, memory, GPUs, platform.

``probe()`` returns a ``core.wire.Hardware``. Cores are those this process may
run on (its CPU affinity), memory is the smaller of the machine's total and
this cgroup's limit, and GPUs are listed through torch only when it sees CUDA.
Every probe falls back to a safe value rather than failing.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from deai.core.wire import Hardware

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():
            return value.strip()[:200]
    return (platform.processor() or platform.machine() or "unknown")[:200]


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def memory_mb() -> int:
    total = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            break
    for path in _CGROUP_LIMITS:
        raw = _read(path).strip()
        if raw.isdigit() and (total == 0 or 0 < int(raw) < total):
            total = int(raw)
    if total == 0:  # not Linux: ask the OS another way
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 1 << 20
    return max(1, total // (1 << 20))


def gpus() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append({"index": i, "name": props.name,
                      "memory_mb": int(props.total_memory // (1 << 20)),
                      "capability": f"{props.major}.{props.minor}"})
    return found


def probe() -> Hardware:
    return Hardware(cpu_model=cpu_model(), cores=cores(), memory_mb=memory_mb(),
                    gpus=gpus(), platform=platform.platform()[:200])
