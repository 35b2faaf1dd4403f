"""Sandboxed command jobs: a script or argv, input files, an output folder and limits.

Spec::

    kind: command
    model: bwrap-sandbox     # the sandbox a provider runs it in (catalog entry)
    max_price: 100           # micro-units per 1,000 units, i.e. per CPU-second
    cpu_seconds: 10          # CPU time of the command's whole process tree
    wall_seconds: 30         # wall clock, start to kill
    memory_mb: 256           # address space of each process (RLIMIT_AS)
    file_size_mb: 16         # largest file a process may write (RLIMIT_FSIZE)
    max_processes: 32        # processes alive at once (RLIMIT_NPROC)
    output_dir: out          # folder under the work folder collected after the run
    output_mb: 16            # most bytes collected from it

Unit: one CPU-millisecond of the sandboxed process tree, so ``max_price`` is
micro-units per CPU-second. A command's ``max_units`` is ``cpu_seconds * 1000``.

Input (``deai job submit spec.yaml --input job.json``): one JSON object, or
JSONL with one object a line; each object is one command and one shard::

    {"custom_id": "sort-1",                       # optional; default "cmd-<line>"
     "script": "sort data.txt > out/sorted.txt",  # run by /bin/sh -c; or
     "argv": ["/usr/bin/sort", "data.txt"],       # exactly one of script / argv
     "files": {"data.txt": {"text": "b\\na\\n"},     # UTF-8 text,
               "bin/x.dat": {"base64": "AAE="},   # bytes, or
               "big.csv": {"digest": "<sha256>"}},# a blob uploaded before submitting
     "env": {"LC_ALL": "C"}}

The shard payload is the line made self-contained: ``{"custom_id", "argv",
"files", "env", "limits", "output_dir"}`` (canonical JSON; a script becomes
``["/bin/sh", "-c", script]``).

Output of a shard: one JSON object (canonical, sorted keys) ::

    {"custom_id", "status": "ok" | "error", "error": str | null,
     "limit": null | "cpu" | "wall" | "memory" | "file_size" | "disk" | "processes"
              | "output",
     "exit_code": int | null, "signal": "SIGXCPU" | ... | null,
     "cpu_ms": int, "wall_ms": int,
     "stdout_sha256", "stderr_sha256", "stdout_tail", "stderr_tail",
     "files": [{"path", "size", "sha256", "base64"}, ...],   # sorted by path
     "manifest_sha256": sha256 of manifest(files)}

Files travel inline (base64) in the output blob, bounded by ``output_mb``; a
run that exceeds a limit is still a result (status "error", ``limit`` names
it, the CPU it used is billed), because the user's command, not the
provider, chose to exceed it. The job's result is these objects as JSONL, in
input order. ``same_output`` is what two runs' results must agree on: exit
status, limit, the file manifest and stdout's hash; tails and stderr are left
out (they legitimately differ between runs). ``CommandKind.compare`` adds the
wall clock: a wall-clock limit the other run came nowhere near (``SLOWDOWN`` times
plus ``SLACK_MS``) is a disagreement (``limit_disagreement``). CPU times are never
compared: they grow with a machine's cores.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deai.core import batch
from deai.core.errors import InvalidInput
from deai.core.kinds.base import Comparison, Kind, Shard, SpecBase, first_error

MAX_COMMANDS = 10_000
MAX_FILES = 1_000
MAX_INLINE_BYTES = 32 * 1024 * 1024
MAX_SCRIPT_BYTES = 100_000  # one argv string must stay under the kernel's 128 KiB
MAX_PATH_CHARS = 255
TAIL_BYTES = 4096
LIMITS = ("cpu", "wall", "memory", "file_size", "disk", "processes", "output")
# Limits whose hit depends on the machine's speed or on when the sandbox sampled, not on
# the command alone: two honest runs may differ there.
TIMED_LIMITS = ("cpu", "wall", "disk", "processes")
# "processes" is among them: the sandbox learns that a command reached its process cap
# from a refused fork (which depends on how fast children exit) or from its process
# count sampled every 50 ms, so one honest run of a forking command may report it and
# another not.
# A wall-clock limit hit is plausible only if the other run, on a machine SLOWDOWN times
# slower (plus SLACK_MS), would have reached that limit too: per-core speed differs about
# 2x between a current server core and a ten-year-old one, so 4x leaves as much again for
# noise, and the slack is what does not scale with speed (starting the shell, loading
# libraries, the sandbox's 50 ms polls). The other run's CPU time counts as wall time too
# (a one-core machine needs at least that long), which also covers a parallel command
# that a machine with fewer cores runs longer. CPU times themselves are not compared: a
# command's CPU time grows with the machine's core count (threads that spin on every
# core, OpenMP's active wait, a GC per core, a client's ``$(nproc)`` busy loops), and no
# tolerance makes two honest runs on 2 and 64 cores agree: comparing them let a client
# get honest providers slashed. So neither a padded bill with the right output nor a
# CPU-limit claim can be refuted; both are bounded by the ``cpu_seconds`` the client set.
SLOWDOWN = 4
SLACK_MS = 250
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class CommandSpec(SpecBase):
    kind: Literal["command"]
    cpu_seconds: int = Field(default=10, ge=1, le=86_400, strict=True)
    wall_seconds: int = Field(default=30, ge=1, le=86_400, strict=True)
    memory_mb: int = Field(default=256, ge=16, le=65_536, strict=True)
    file_size_mb: int = Field(default=16, ge=1, le=4096, strict=True)
    max_processes: int = Field(default=32, ge=1, le=4096, strict=True)
    output_dir: str = Field(default="out", min_length=1, max_length=MAX_PATH_CHARS)
    output_mb: int = Field(default=16, ge=1, le=48, strict=True)

    @field_validator("output_dir")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_path(v)

    def limits(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("cpu_seconds", "wall_seconds", "memory_mb",
                                              "file_size_mb", "max_processes", "output_mb")}


def check_path(p: str) -> str:
    """A relative path inside the work folder: no absolute path, ``..``, or odd characters."""
    parts = p.split("/")
    if (not p or len(p) > MAX_PATH_CHARS or p.startswith("/") or "\\" in p
            or any(part in ("", ".", "..") for part in parts)
            or any(ord(ch) < 32 or ch == "\x7f" for ch in p)):
        raise ValueError("must be a relative path without '..', '.', '//', or control "
                         f"characters (at most {MAX_PATH_CHARS} characters)")
    return p


class FileIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None = None
    base64: str | None = None
    digest: str | None = Field(default=None, pattern=_DIGEST.pattern)

    def content(self) -> dict[str, str]:
        """The file as it travels in the shard: ``{"base64"}`` or ``{"digest"}``."""
        given = [k for k in ("text", "base64", "digest") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, base64, digest")
        if self.digest is not None:
            return {"digest": self.digest}
        if self.text is not None:
            return {"base64": base64.b64encode(self.text.encode()).decode()}
        assert self.base64 is not None
        try:
            raw = base64.b64decode(self.base64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("base64: not valid base64") from None
        return {"base64": base64.b64encode(raw).decode()}


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    custom_id: str | None = Field(default=None, min_length=1, max_length=512)
    script: str | None = Field(default=None, min_length=1)
    argv: list[str] | None = Field(default=None, min_length=1, max_length=4096)
    files: dict[str, FileIn] = Field(default_factory=dict, max_length=MAX_FILES)
    env: dict[str, str] = Field(default_factory=dict, max_length=64)


def _command(obj: Any, where: str, n: int, output_dir: str) -> dict[str, Any]:
    """Check one input object; return its shard payload without limits."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where}: must be a JSON object", field=where)
    try:
        cmd = CommandIn.model_validate(obj)
    except ValidationError as exc:
        raise first_error(exc, where) from None
    if (cmd.script is None) == (cmd.argv is None):
        raise InvalidInput(f"{where}: give exactly one of script, argv", field=where)
    if cmd.script is not None:
        if len(cmd.script.encode()) > MAX_SCRIPT_BYTES or "\x00" in cmd.script:
            raise InvalidInput(f"{where}.script: at most {MAX_SCRIPT_BYTES} bytes, no NUL",
                               field=f"{where}.script")
        argv = ["/bin/sh", "-c", cmd.script]
    else:
        assert cmd.argv is not None
        argv = list(cmd.argv)
        if not argv[0] or any("\x00" in a or len(a.encode()) > MAX_SCRIPT_BYTES
                              for a in argv):
            raise InvalidInput(f"{where}.argv: non-empty program, no NUL, each argument at "
                               f"most {MAX_SCRIPT_BYTES} bytes", field=f"{where}.argv")
    for name in cmd.env:
        if not _ENV_NAME.match(name) or len(cmd.env[name]) > 4096 or "\x00" in cmd.env[name]:
            raise InvalidInput(f"{where}.env.{name}: a name like LC_ALL and a value of at "
                               "most 4096 characters", field=f"{where}.env")
    files: dict[str, dict[str, str]] = {}
    for path, f in cmd.files.items():
        field = f"{where}.files.{path}"
        try:
            check_path(path)
            files[path] = f.content()
        except ValueError as exc:
            raise InvalidInput(f"{field}: {exc}", field=field) from None
        if path == output_dir or path.startswith(output_dir + "/"):
            raise InvalidInput(f"{field}: inside the output folder {output_dir!r}",
                               field=field)
        if output_dir.startswith(path + "/"):  # the output folder could not be made
            raise InvalidInput(f"{field}: a file where the output folder {output_dir!r} "
                               "needs a folder", field=field)
    for path in files:  # "a" and "a/b" cannot both be files
        if any(other.startswith(path + "/") for other in files):
            raise InvalidInput(f"{where}.files.{path}: also a folder of another file",
                               field=f"{where}.files.{path}")
    return {"custom_id": cmd.custom_id or f"cmd-{n}", "argv": argv, "files": files,
            "env": dict(sorted(cmd.env.items()))}


def parse_input(data: bytes, spec: CommandSpec) -> list[dict[str, Any]]:
    """Every command of an input file, as shard payloads; errors name ``input[line N]``."""
    if len(data) > MAX_INLINE_BYTES * 2:
        raise InvalidInput("input: over 64 MiB; upload big files as blobs and name them "
                           "by digest", field="input")
    objs: list[tuple[str, Any]]
    try:
        whole = batch.loads(data.decode("utf-8"), "input")  # bounded depth, finite numbers
    except (UnicodeDecodeError, InvalidInput):
        whole = None
    if isinstance(whole, dict) and b"\n" in data.strip():  # one pretty-printed object
        objs = [("input", whole)]
    else:
        objs = [(f"input[line {n}]", obj) for n, obj in batch.jsonl(data)]
    if not objs:
        raise InvalidInput("input has no commands", field="input")
    if len(objs) > MAX_COMMANDS:
        raise InvalidInput(f"input: at most {MAX_COMMANDS} commands", field="input")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, (where, obj) in enumerate(objs, start=1):
        cmd = _command(obj, where, n, spec.output_dir)
        if cmd["custom_id"] in seen:
            raise InvalidInput(f"{where}.custom_id: duplicate {cmd['custom_id']!r}",
                               field=f"{where}.custom_id")
        seen.add(cmd["custom_id"])
        out.append({**cmd, "limits": spec.limits(), "output_dir": spec.output_dir})
    inline = sum(len(f.get("base64", "")) for c in out for f in c["files"].values())
    if inline > MAX_INLINE_BYTES * 4 // 3:
        raise InvalidInput("input: inline files over 32 MiB in all; upload big files as "
                           "blobs and name them by digest", field="input")
    return out


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def manifest_sha256(files: list[dict[str, Any]]) -> str:
    """The digest of a file list: sha256 of canonical ``[[path, size, sha256], ...]``."""
    rows = sorted([f["path"], f["size"], f["sha256"]] for f in files)
    return hashlib.sha256(canonical(rows)).hexdigest()


_OUTPUT_FIELDS = {"custom_id", "status", "error", "limit", "exit_code", "signal", "cpu_ms",
                  "wall_ms", "stdout_sha256", "stderr_sha256", "stdout_tail", "stderr_tail",
                  "files", "manifest_sha256"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_output(payload: dict[str, Any], output: bytes) -> dict[str, Any]:  # noqa: C901 - flat
    """Check a shard output's shape and file hashes against its payload; return it parsed.

    One flat check per field of an untrusted record: split up, they would scatter."""
    def bad(msg: str) -> InvalidInput:
        return InvalidInput(f"output: {msg}", field="output")

    try:
        out = batch.safe_loads(output.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("not a JSON object") from None
    if not isinstance(out, dict) or set(out) != _OUTPUT_FIELDS:
        raise bad(f"needs exactly the fields {sorted(_OUTPUT_FIELDS)}")
    if out["custom_id"] != payload["custom_id"]:
        raise bad("custom_id does not match the command")
    if out["status"] not in ("ok", "error") or (out["status"] == "ok") != (out["error"] is None):
        raise bad("status is 'ok' with no error, or 'error' with a message")
    if out["limit"] is not None and (out["limit"] not in LIMITS or out["status"] != "error"):
        raise bad(f"limit is null or one of {', '.join(LIMITS)} on an error")
    if not (out["exit_code"] is None or _is_int(out["exit_code"])):
        raise bad("exit_code is an integer or null")
    if not (out["signal"] is None or isinstance(out["signal"], str)):
        raise bad("signal is a name or null")
    max_units = payload["limits"]["cpu_seconds"] * 1000
    if not _is_int(out["cpu_ms"]) or not 0 <= out["cpu_ms"] <= max_units:
        raise bad(f"cpu_ms is an integer from 0 to {max_units}")
    if not _is_int(out["wall_ms"]) or out["wall_ms"] < 0:
        raise bad("wall_ms is a non-negative integer")
    for k in ("stdout_sha256", "stderr_sha256", "manifest_sha256"):
        if not isinstance(out[k], str) or not _DIGEST.match(out[k]):
            raise bad(f"{k} is a sha256 hex digest")
    for k in ("stdout_tail", "stderr_tail"):
        if not isinstance(out[k], str) or len(out[k]) > TAIL_BYTES:
            raise bad(f"{k} is a string of at most {TAIL_BYTES} characters")
    files = out["files"]
    if not isinstance(files, list):
        raise bad("files is a list")
    total, last = 0, ""
    for f in files:
        if not isinstance(f, dict) or set(f) != {"path", "size", "sha256", "base64"}:
            raise bad("each file is {path, size, sha256, base64}")
        try:
            check_path(f["path"])
            raw = base64.b64decode(f["base64"], validate=True)
        except (ValueError, TypeError, binascii.Error):
            raise bad(f"file {str(f['path'])[:100]!r}: bad path or base64") from None
        if f["path"] <= last:
            raise bad("files are sorted by path, each once")
        last = f["path"]
        if f["size"] != len(raw) or f["sha256"] != hashlib.sha256(raw).hexdigest():
            raise bad(f"file {f['path']!r}: size or sha256 does not match its content")
        total += len(raw)
    if total > payload["limits"]["output_mb"] * 1024 * 1024:
        raise bad("files exceed output_mb")
    if out["manifest_sha256"] != manifest_sha256(files):
        raise bad("manifest_sha256 does not match the files")
    return out


def same_output(a: bytes, b: bytes) -> bool:
    """Whether two outputs of one command agree: exit status, limit, files and stdout.

    Timings, stderr and the tails are left out: they differ between honest runs.
    Malformed outputs never agree.
    """
    def key(raw: bytes) -> tuple[Any, ...] | None:
        try:
            o = batch.safe_loads(raw.decode("utf-8"))
            return (o["status"], o["limit"], o["exit_code"], o["signal"],
                    o["manifest_sha256"], o["stdout_sha256"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None

    ka = key(a)
    return ka is not None and ka == key(b)


def within_slowdown(ms: int, other_ms: int) -> bool:
    """Whether ``ms`` could be ``other_ms`` measured on an honest machine up to
    ``SLOWDOWN`` times slower (plus ``SLACK_MS``)."""
    return ms <= SLOWDOWN * other_ms + SLACK_MS


def _timings(raw: bytes) -> dict[str, Any] | None:
    """An output's fields that ``compare`` reads, or None if it has none of that shape."""
    try:
        o = batch.safe_loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (not isinstance(o, dict) or not {"limit", "exit_code", "cpu_ms", "wall_ms"} <= set(o)
            or not _is_int(o["cpu_ms"]) or not _is_int(o["wall_ms"])
            or not (o["exit_code"] is None or _is_int(o["exit_code"]))):
        return None
    return o


def limit_disagreement(wall_seconds: int, hit: dict[str, Any], done: dict[str, Any]
                       ) -> str | None:
    """Why ``hit``'s claimed wall-clock limit cannot be honest next to ``done``, a run of
    the same command that ended on its own; None when it can (an inconclusive
    difference): it reached the limit only if ``done``'s wall or CPU time would have on a
    machine ``SLOWDOWN`` times slower. Only the wall clock: a CPU or disk limit depends on
    the machine's cores or on when a quota sample ran, which the outputs do not show."""
    if hit["limit"] == "wall" and not within_slowdown(
            wall_seconds * 1000, max(done["wall_ms"], done["cpu_ms"])):
        return (f"wall-clock limit ({wall_seconds} s) claimed; the other run finished in "
                f"{done['wall_ms']} ms ({done['cpu_ms']} CPU-ms), out of reach on a "
                f"{SLOWDOWN}x slower machine")
    return None


def parse_payload(shard: bytes) -> dict[str, Any]:
    """A shard's command payload, as ``split`` wrote it; ``InvalidInput`` if it is not one."""
    try:
        p = batch.safe_loads(shard.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("shard: not a command payload", field="shard") from None
    if not isinstance(p, dict) or "limits" not in p or "custom_id" not in p:
        raise InvalidInput("shard: not a command payload", field="shard")
    return p


class CommandKind(Kind):
    name: ClassVar[str] = "command"
    unit: ClassVar[str] = "CPU-millisecond"
    spec_type: ClassVar[type[SpecBase]] = CommandSpec

    def quote_shards(self, spec: SpecBase, inputs: int) -> list[int]:
        """One command a shard, each bounded by its CPU-seconds."""
        assert isinstance(spec, CommandSpec)
        return [spec.cpu_seconds * 1000] * inputs

    def split(self, spec: SpecBase, data: bytes) -> list[Shard]:
        assert isinstance(spec, CommandSpec)
        return [Shard(canonical(p), 1, spec.cpu_seconds * 1000,
                      tuple(sorted({f["digest"] for f in p["files"].values() if "digest" in f})))
                for p in parse_input(data, spec)]

    def run_bound(self, spec: SpecBase) -> float | None:
        """The wall-clock limit: an honest run is killed there."""
        assert isinstance(spec, CommandSpec)
        return float(spec.wall_seconds)

    def payload_units(self, shard: bytes) -> int | None:
        """Its CPU budget in milliseconds."""
        seconds = parse_payload(shard)["limits"].get("cpu_seconds")
        if not _is_int(seconds) or seconds < 0:
            raise InvalidInput("shard: limits.cpu_seconds is not an integer", field="shard")
        return int(seconds) * 1000

    def meter(self, spec: SpecBase, shard: bytes, output: bytes) -> int:
        return int(check_output(parse_payload(shard), output)["cpu_ms"])

    def assemble(self, job_id: str, spec: SpecBase, outputs: list[bytes]) -> bytes:
        return b"".join(out.rstrip(b"\n") + b"\n" for out in outputs)

    def compare(self, spec: SpecBase, shard: bytes, a: bytes, b: bytes) -> Comparison:
        """Same exit status, limit, files and stdout.

        Where the results differ and exactly one run hit a timing-dependent limit
        (CPU, wall clock, a disk or process-count sample, a refused fork), it is
        inconclusive and counts as agreement, evidence against nobody, unless the
        limit is the wall clock and the other run
        finished far inside it (``limit_disagreement``): then it is a disagreement,
        which goes to a trusted referee, whose own run judges each party the same
        way (an honest slow run that hit the wall is not convicted by a referee whose
        run came near the limit too). Where both runs were stopped by the sandbox the
        difference is inconclusive.
        """
        assert isinstance(spec, CommandSpec)
        oa, ob = _timings(a), _timings(b)
        if oa is None or ob is None:
            return Comparison(False, 1.0, "malformed output")
        if same_output(a, b):
            return Comparison(True, 0.0, "same status, files and stdout")
        timed_a, timed_b = oa["limit"] in TIMED_LIMITS, ob["limit"] in TIMED_LIMITS
        if not (timed_a or timed_b):
            return Comparison(False, 1.0, "outputs differ (status, files or stdout)")
        hit, done = (oa, ob) if timed_a else (ob, oa)
        # Both stopped where timing put them (a run reporting another limit, such as a
        # fork bomb's "processes", may still have been killed at the clock: exit_code null).
        if (timed_a and timed_b) or done["exit_code"] is None:
            return Comparison(True, 0.0, "both runs stopped at a timing-dependent limit: "
                                         "inconclusive")
        why = limit_disagreement(spec.wall_seconds, hit, done)
        if why is not None:
            return Comparison(False, 1.0, why)
        return Comparison(True, 0.0, f"{hit['limit']} limit hit within reach of the other "
                                     "run: inconclusive")

    def errors(self, outputs: list[bytes]) -> list[str]:
        """``"<custom_id>: <error>"`` for each command that failed, in order."""
        msgs = []
        for raw in outputs:
            o = batch.safe_loads(raw)
            if o.get("status") == "error":
                msgs.append(f"{o['custom_id']}: {o['error']}")
        return msgs
