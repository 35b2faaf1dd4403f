"""The command kind, purely: spec and input checks that name the field, shards,
metering of a provider's output (hashes, bounds), assembly and ``same_output``."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from deai.core import kinds, specs
from deai.core.errors import InvalidInput, UnknownModel
from deai.core.kinds import command as cmd

KIND = kinds.get("command")
SPEC = {"kind": "command", "model": "bwrap-sandbox", "max_price": 100, "cpu_seconds": 3}


def spec(**over: Any) -> cmd.CommandSpec:
    s = specs.parse_spec({**SPEC, **over})
    assert isinstance(s, cmd.CommandSpec)
    return s


def lines(*objs: Any) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def field_of(fn: Any, *args: Any) -> str | None:
    with pytest.raises(InvalidInput) as exc:
        fn(*args)
    return exc.value.field


def output(payload: dict[str, Any], files: dict[str, bytes] | None = None,
           **over: Any) -> bytes:
    fl = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(),
           "base64": base64.b64encode(d).decode()} for p, d in sorted((files or {}).items())]
    empty = hashlib.sha256(b"").hexdigest()
    out = {"custom_id": payload["custom_id"], "status": "ok", "error": None, "limit": None,
           "exit_code": 0, "signal": None, "cpu_ms": 12, "wall_ms": 30,
           "stdout_sha256": empty, "stderr_sha256": empty, "stdout_tail": "",
           "stderr_tail": "", "files": fl, "manifest_sha256": cmd.manifest_sha256(fl)}
    return cmd.canonical({**out, **over})


def one_shard(**over: Any) -> tuple[cmd.CommandSpec, bytes, dict[str, Any]]:
    s = spec(**over)
    [sh] = KIND.split(s, lines({"custom_id": "a", "script": "echo hi > out/x"}))
    return s, sh.payload, json.loads(sh.payload)


def test_spec_defaults_and_bad_fields_named() -> None:
    s = spec()
    assert (s.cpu_seconds, s.wall_seconds, s.output_dir) == (3, 30, "out")
    assert field_of(specs.parse_spec, {**SPEC, "cpu_seconds": 0}) == "spec.cpu_seconds"
    assert field_of(specs.parse_spec, {**SPEC, "memory_mb": "64"}) == "spec.memory_mb"
    assert field_of(specs.parse_spec, {**SPEC, "output_dir": "../x"}) == "spec.output_dir"
    assert field_of(specs.parse_spec, {**SPEC, "shell": "bash"}) == "spec.shell"
    with pytest.raises(UnknownModel):
        specs.parse_spec({**SPEC, "model": "all-MiniLM-L6-v2"})


def test_split_one_shard_per_command_self_contained() -> None:
    s = spec(wall_seconds=7)
    data = lines({"custom_id": "a", "script": "sort d > out/s", "files": {"d": {"text": "b\n"}}},
                 {"argv": ["/usr/bin/env"], "env": {"LC_ALL": "C"},
                  "files": {"x/y.bin": {"base64": "AAE="}, "big": {"digest": "a" * 64}}})
    shards = KIND.split(s, data)
    assert [sh.max_units for sh in shards] == [3000, 3000]
    assert [sh.items for sh in shards] == [1, 1]
    p0, p1 = (json.loads(sh.payload) for sh in shards)
    assert p0["argv"] == ["/bin/sh", "-c", "sort d > out/s"]
    assert p0["files"] == {"d": {"base64": base64.b64encode(b"b\n").decode()}}
    assert p0["limits"]["wall_seconds"] == 7 and p0["output_dir"] == "out"
    assert p1["custom_id"] == "cmd-2" and p1["env"] == {"LC_ALL": "C"}
    assert p1["files"]["big"] == {"digest": "a" * 64}


def test_single_json_object_is_one_command() -> None:
    data = json.dumps({"script": "true", "files": {"a": {"text": "1"}}}, indent=2).encode()
    [sh] = KIND.split(spec(), data)
    assert json.loads(sh.payload)["custom_id"] == "cmd-1"


@pytest.mark.parametrize(("obj", "field"), [
    ({"files": {}}, "input[line 2]"),                                     # no command
    ({"script": "x", "argv": ["y"]}, "input[line 2]"),                    # both
    ({"script": "x", "stdin": "y"}, "input[line 2].stdin"),               # unknown field
    ({"argv": []}, "input[line 2].argv"),
    ({"script": "x", "files": {"../etc/passwd": {"text": ""}}},
     "input[line 2].files.../etc/passwd"),
    ({"script": "x", "files": {"/abs": {"text": ""}}}, "input[line 2].files./abs"),
    ({"script": "x", "files": {"a": {"text": "1", "base64": "AA=="}}}, "input[line 2].files.a"),
    ({"script": "x", "files": {"a": {"base64": "%%%"}}}, "input[line 2].files.a"),
    ({"script": "x", "files": {"a": {"digest": "xyz"}}}, "input[line 2].files.a.digest"),
    ({"script": "x", "files": {"out/a": {"text": ""}}}, "input[line 2].files.out/a"),
    ({"script": "x", "files": {"a": {"text": ""}, "a/b": {"text": ""}}},
     "input[line 2].files.a"),
    ({"script": "x", "env": {"1BAD": "v"}}, "input[line 2].env"),
    ({"custom_id": "a", "script": "x"}, "input[line 2].custom_id"),       # duplicate id
])
def test_bad_input_names_the_field(obj: dict[str, Any], field: str) -> None:
    data = lines({"custom_id": "a", "script": "true"}, obj)
    assert field_of(KIND.split, spec(), data) == field


def test_bad_input_files() -> None:
    assert field_of(KIND.split, spec(), b"") == "input"
    assert field_of(KIND.split, spec(), b'{"script": "x"}\n[1]\n') == "input[line 2]"
    assert field_of(KIND.split, spec(), b'{"script": "x"}\nnot json\n') == "input[line 2]"
    big = {"script": "x" * (cmd.MAX_SCRIPT_BYTES + 1)}
    assert field_of(KIND.split, spec(), lines(big)) == "input[line 1].script"


def test_meter_returns_cpu_ms_of_a_valid_output() -> None:
    s, shard, p = one_shard()
    out = output(p, {"x": b"hi\n", "sub/y": b""}, cpu_ms=1234)
    assert KIND.meter(s, shard, out) == 1234
    errored = output(p, status="error", error="CPU-time limit exceeded (3 s)", limit="cpu",
                     exit_code=152, signal="SIGXCPU", cpu_ms=3000)
    assert KIND.meter(s, shard, errored) == 3000


@pytest.mark.parametrize("over", [
    {"cpu_ms": 3001},                   # more than the shard's max_units
    {"cpu_ms": -1},
    {"cpu_ms": 1.5},
    {"custom_id": "b"},
    {"status": "ok", "error": "boom"},
    {"status": "error", "error": None},
    {"limit": "bogus", "status": "error", "error": "x"},
    {"manifest_sha256": "0" * 64},
    {"stdout_sha256": "nope"},
    {"stdout_tail": "x" * (cmd.TAIL_BYTES + 1)},
    {"extra": 1},
])
def test_meter_rejects_malformed_output(over: dict[str, Any]) -> None:
    s, shard, p = one_shard()
    with pytest.raises(InvalidInput):
        KIND.meter(s, shard, output(p, **over))


def test_meter_rejects_files_that_do_not_match_their_hashes() -> None:
    s, shard, p = one_shard()
    good = json.loads(output(p, {"a": b"1", "b": b"2"}))
    tampered = json.loads(json.dumps(good))
    tampered["files"][0]["base64"] = base64.b64encode(b"X").decode()
    unsorted = json.loads(json.dumps(good))
    unsorted["files"].reverse()
    unsorted["manifest_sha256"] = cmd.manifest_sha256(unsorted["files"])
    escaping = json.loads(output(p, {"../a": b"1"}))
    for bad in (tampered, unsorted, escaping):
        with pytest.raises(InvalidInput):
            KIND.meter(s, shard, cmd.canonical(bad))
    with pytest.raises(InvalidInput):
        KIND.meter(s, shard, b"not json")


def test_meter_rejects_output_over_output_mb() -> None:
    s, shard, p = one_shard(output_mb=1)
    with pytest.raises(InvalidInput, match="output_mb"):
        KIND.meter(s, shard, output(p, {"big": b"\0" * (1024 * 1024 + 1)}))


def test_same_output_compares_results_not_timings() -> None:
    _, _, p = one_shard()
    a = output(p, {"x": b"1"}, cpu_ms=10, wall_ms=20, stderr_tail="took 3 ms")
    b = output(p, {"x": b"1"}, cpu_ms=99, wall_ms=80, stderr_tail="took 9 ms",
               stderr_sha256="1" * 64)
    assert cmd.same_output(a, b)
    assert not cmd.same_output(a, output(p, {"x": b"2"}))
    assert not cmd.same_output(a, output(p, {"x": b"1"}, exit_code=1, status="error",
                                         error="command exited with 1"))
    assert not cmd.same_output(a, output(p, {"x": b"1"}, stdout_sha256="2" * 64))
    assert not cmd.same_output(b"junk", b"junk")


def test_manifest_is_order_free_and_content_bound() -> None:
    f1 = {"path": "a", "size": 1, "sha256": "1" * 64}
    f2 = {"path": "b", "size": 2, "sha256": "2" * 64}
    assert cmd.manifest_sha256([f1, f2]) == cmd.manifest_sha256([f2, f1])
    assert cmd.manifest_sha256([f1]) != cmd.manifest_sha256([{**f1, "size": 2}])


def test_assemble_is_jsonl_in_shard_order_and_errors_are_listed() -> None:
    s, _, p = one_shard()
    ok = output(p)
    bad = output({"custom_id": "z"}, status="error", error="wall-clock limit exceeded (30 s)",
                 limit="wall")
    result = KIND.assemble("job1", s, [ok, bad])
    assert [json.loads(x)["custom_id"] for x in result.splitlines()] == ["a", "z"]
    assert isinstance(KIND, cmd.CommandKind)
    assert KIND.errors([ok, bad]) == ["z: wall-clock limit exceeded (30 s)"]


def test_the_shipped_example_is_valid() -> None:
    import yaml

    root = Path(__file__).resolve().parents[1] / "examples"
    s = specs.parse_spec(yaml.safe_load((root / "command.yaml").read_text()))
    shards = KIND.split(s, (root / "commands.jsonl").read_bytes())
    assert [json.loads(sh.payload)["custom_id"] for sh in shards] == ["word-count", "python"]
