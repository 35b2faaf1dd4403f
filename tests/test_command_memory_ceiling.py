"""A command's ``memory_mb`` is bounded by what the provider gives, not by the spec.

``memory_mb`` (up to 64 GiB in a spec) sizes RLIMIT_AS and the RAM-backed
``/tmp`` and ``/dev/shm`` of the sandbox. A provider refuses a shard over its
ceiling (``DEAI_COMMAND_MEMORY_MB``, else half its RAM) before anything runs,
with ``NoCapacity``, which the agent reports as the task's failure; nothing
here fills memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from deai.core.errors import NoCapacity
from deai.core.kinds import command as cmd
from deai.provider import sandbox
from deai.workloads import command as wl


def shard(memory_mb: int) -> bytes:
    spec = cmd.CommandSpec.model_validate({"kind": "command", "model": "bwrap-sandbox",
                                           "max_price": 1, "memory_mb": memory_mb})
    return cmd.CommandKind().split(spec, b'{"script": "echo ran > out/r"}')[0].payload


def test_the_default_ceiling_is_half_the_host_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEAI_COMMAND_MEMORY_MB", raising=False)
    ram_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    assert wl.memory_ceiling_mb() == ram_mb // 2
    monkeypatch.setenv("DEAI_COMMAND_MEMORY_MB", "300")
    assert wl.memory_ceiling_mb() == 300


def test_a_spec_over_the_ceiling_is_refused_before_it_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ok, why = sandbox.available()
    if not ok:
        pytest.fail(f"bubblewrap is required for command jobs: {why}. `make test` installs "
                    "it (apt-get install -y bubblewrap).")
    base = Path(tempfile.mkdtemp(prefix="deai-mem-"))
    os.chmod(base, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    monkeypatch.setenv("DEAI_COMMAND_MEMORY_MB", "300")
    ran: list[object] = []
    real_run = sandbox.run
    monkeypatch.setattr(wl.sandbox, "run", lambda *a, **k: ran.append(a) or real_run(*a, **k))
    try:
        with pytest.raises(NoCapacity) as err:
            wl.WORKLOAD.run("bwrap-sandbox", shard(65_536))
        assert "memory_mb 65536" in err.value.message and "300 MB" in err.value.message
        assert ran == [] and list(base.iterdir()) == []
        out, _ = wl.WORKLOAD.run("bwrap-sandbox", shard(256))  # within it: it runs
        assert json.loads(out)["status"] == "ok" and len(ran) == 1
    finally:
        os.rmdir(base)


def test_matching_asks_for_the_memory_a_command_spec_asks_for(tmp_path: Path) -> None:
    """A command's ``memory_mb`` (its tmpfs mounts live in the host's RAM) is the memory
    its tasks need from a host, when more than the model's: before, every command was
    matched as needing the catalog's 256 MB, and a host too small was sent the shard."""
    from types import SimpleNamespace

    from deai.coordinator import matching
    from deai.coordinator.service import Coordinator
    from deai.coordinator.settings import Settings

    c = Coordinator(Settings(data_dir=tmp_path, devnet=True))
    task = SimpleNamespace(id="t1", job_id="j1", units=1000)

    def job(spec: dict[str, object]) -> Any:
        return SimpleNamespace(id="j1", kind="command", model="bwrap-sandbox", max_price=100,
                               owner="o", spec=spec)

    # twice the spec's: an agent gives a command half its RAM (its default ceiling)
    assert matching.demand(c, job({"memory_mb": 8192}), task).memory_mb == 16384  # type: ignore[arg-type]
    assert matching.demand(c, job({}), task).memory_mb == 256  # type: ignore[arg-type]
    assert matching.demand(c, job({"memory_mb": True}), task).memory_mb == 256  # type: ignore[arg-type]
