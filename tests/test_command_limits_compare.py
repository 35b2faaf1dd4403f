"""Two honest runs of one command agree, whichever sample saw the process cap.

Whether the sandbox reports the "processes" limit depends on timing: a fork is
refused only while enough children are still alive, and the peak process
count is sampled every 50 ms. ``CommandKind.compare`` must not call two honest
runs a disagreement for it (which sends them to a referee whose own run is as
random). Also: an input file where the output folder needs a folder is refused
at submit, not on every provider.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from deai.core.errors import InvalidInput
from deai.core.kinds import command as cmd
from deai.provider import sandbox
from deai.workloads import command as wl
from deai.workloads import sandbox as impl

FORKS = r'''
import os, time
for i in range(64):
    try:
        if os.fork() == 0:
            time.sleep(1); os._exit(0)
    except OSError:
        break          # the refused fork is swallowed: nothing on stderr
print("hello")
'''


def forking_shard() -> tuple[cmd.CommandSpec, bytes]:
    spec = cmd.CommandSpec.model_validate({"kind": "command", "model": "bwrap-sandbox",
                                           "max_price": 1, "max_processes": 16,
                                           "wall_seconds": 20})
    line = json.dumps({"argv": ["/usr/bin/python3", "-c", FORKS]}).encode()
    return spec, cmd.CommandKind().split(spec, line)[0].payload


def as_capped(out: dict[str, Any], limits: impl.Limits) -> dict[str, Any]:
    """The same run as the sandbox reports it when its sample saw the process cap."""
    res = impl.classify(0, None, out["cpu_ms"], out["wall_ms"], limits.max_processes + 1,
                        limits, out["stderr_tail"])
    assert res.limit == "processes"
    return {**out, "status": "error", "error": res.error, "limit": res.limit}


def test_honest_runs_differing_only_by_the_process_sample_agree() -> None:
    ok, why = sandbox.available()
    if not ok:
        pytest.fail(f"bubblewrap is required for command jobs: {why}. `make test` installs "
                    "it (apt-get install -y bubblewrap).")
    spec, shard = forking_shard()
    raw, _ = wl.WORKLOAD.run("bwrap-sandbox", shard)
    run = json.loads(raw)
    assert run["stdout_tail"] == "hello\n" and run["exit_code"] == 0
    lim = cmd.parse_payload(shard)["limits"]
    limits = impl.Limits(cpu_seconds=lim["cpu_seconds"], wall_seconds=lim["wall_seconds"],
                         memory_mb=lim["memory_mb"], file_size_mb=lim["file_size_mb"],
                         max_processes=lim["max_processes"])
    plain = {**run, "status": "ok", "error": None, "limit": None}
    capped = as_capped(plain, limits)
    a, b = cmd.canonical(plain), cmd.canonical(capped)
    for x, y in ((a, b), (b, a)):
        got = cmd.CommandKind().compare(spec, shard, x, y)
        assert got.match and "inconclusive" in got.detail, got


def test_a_process_cap_does_not_excuse_a_deterministic_limit() -> None:
    spec, shard = forking_shard()
    p = cmd.parse_payload(shard)
    base = {"custom_id": p["custom_id"], "status": "error", "error": "e", "exit_code": 1,
            "signal": None, "cpu_ms": 5, "wall_ms": 5, "stdout_sha256": "0" * 64,
            "stderr_sha256": "0" * 64, "stdout_tail": "", "stderr_tail": "", "files": [],
            "manifest_sha256": cmd.manifest_sha256([])}
    mem = cmd.canonical({**base, "limit": "memory"})
    out = cmd.canonical({**base, "limit": "output"})
    assert not cmd.CommandKind().compare(spec, shard, mem, out).match


def test_an_input_file_where_the_output_folder_goes_is_refused_at_submit() -> None:
    spec = cmd.CommandSpec.model_validate({"kind": "command", "model": "bwrap-sandbox",
                                           "max_price": 1, "output_dir": "o/x"})
    line = json.dumps({"script": "true", "files": {"o": {"text": "hi"}}}).encode()
    with pytest.raises(InvalidInput) as err:
        cmd.CommandKind().split(spec, line)
    assert err.value.field == "input[line 1].files.o"
    assert "output folder 'o/x'" in str(err.value)
    ok = json.dumps({"script": "true", "files": {"o/y": {"text": "hi"},
                                                 "ox": {"text": "hi"}}}).encode()
    assert len(cmd.CommandKind().split(spec, ok)) == 1  # beside it, not in its way
