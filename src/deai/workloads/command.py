"""The command workload: run one command shard under bubblewrap and collect its output.

Shard and output formats are ``deai.core.kinds.command``'s. For each shard:

1. a fresh host folder ``deai-cmd-*`` (mode 0711) gets ``work/`` with the input
   files (inline base64, or blobs fetched by digest with ``ctx.fetch``) and an
   empty output folder; stdout and stderr go to files beside ``work/``, which
   the sandbox cannot see;
2. ``deai.provider.sandbox.run`` runs the argv with ``work/`` at ``/work`` and
   the shard's limits (its disk quota and tmpfs sizes derived from them: see
   ``sandbox.Limits``);
3. the output folder is collected (after ``unlock``, so folders the command
   made unreadable do not make a non-root provider differ): regular files only (symlinks, fifos and
   the like are skipped, and nothing is followed, so a link to a host file
   leaks nothing), paths sorted, each hashed with sha256 and carried inline
   as base64; if their bytes plus their manifest rows (``[path, size,
   sha256]``, so that many empty files cost too) total more than
   ``output_mb``, none is carried and the result is an "output" limit error;
4. the host folder is removed.

Units: the sandbox's CPU time in milliseconds, capped at the shard's
``cpu_seconds * 1000`` (the overrun of a process killed at its limit is the
provider's, not the user's). Without a working bubblewrap, ``load`` and
``run`` raise ``SandboxUnavailable``: a command is never run unsandboxed.

The sandbox's "disk" limit (work-folder or file-count quota, full tmpfs) is
reported as ``DISK_LIMIT``: "disk" once the kind lists it, "file_size" (the
limit family of what a job writes) until then; the error message names it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from deai.core import catalog
from deai.core.errors import InvalidInput
from deai.core.kinds import command as kind
from deai.workloads import sandbox
from deai.workloads.base import TaskContext

MODEL = "bwrap-sandbox"
DISK_LIMIT = "disk" if "disk" in kind.LIMITS else "file_size"
log = logging.getLogger("deai.workloads.command")


def _check_model(model: str) -> None:
    if catalog.lookup(model, workload="command").name != MODEL:
        raise InvalidInput(f"model {model!r} is not a sandbox this provider runs",
                           field="model")


def _require_sandbox() -> None:
    ok, why = sandbox.available()
    if not ok:
        raise sandbox.SandboxUnavailable(f"this provider cannot sandbox commands: {why}")


def _materialize(work: Path, payload: dict[str, Any], ctx: TaskContext) -> None:
    for path, content in sorted(payload["files"].items()):
        dest = work / kind.check_path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = (ctx.fetch(content["digest"]) if "digest" in content
                else base64.b64decode(content["base64"], validate=True))
        dest.write_bytes(data)
    (work / kind.check_path(payload["output_dir"])).mkdir(parents=True, exist_ok=True)


def _read_regular(path: str, limit: int) -> bytes | None:
    """The file's bytes if it is a regular file (not followed through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit + 1)


def row_bytes(path: str, size: int, sha256: str) -> int:
    """What one file adds to the manifest: its canonical ``[path, size, sha256]`` row."""
    return len(kind.canonical([path, size, sha256])) + 1


def collect(out_dir: Path, limit: int) -> list[dict[str, Any]] | None:
    """Regular files under ``out_dir``, sorted by path; None if their bytes and manifest
    rows (``row_bytes``) exceed ``limit`` bytes."""
    if out_dir.is_symlink() or not out_dir.is_dir():
        return []
    files: list[dict[str, Any]] = []
    total = 0
    for d, dirs, names in os.walk(out_dir, followlinks=False):
        dirs.sort()
        for name in names:
            full = os.path.join(d, name)
            rel = os.path.relpath(full, out_dir)
            try:
                kind.check_path(rel)
            except ValueError:
                continue  # a name the manifest cannot carry
            data = _read_regular(full, limit - total)
            if data is None:
                continue
            digest = hashlib.sha256(data).hexdigest()
            total += len(data) + row_bytes(rel, len(data), digest)
            if total > limit:
                return None
            files.append({"path": rel, "size": len(data), "sha256": digest,
                          "base64": base64.b64encode(data).decode()})
    return sorted(files, key=lambda f: str(f["path"]))


def _stream(path: Path) -> tuple[str, str]:
    """(sha256, tail) of a captured stream."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        size = f.tell()
        f.seek(max(0, size - kind.TAIL_BYTES))
        tail = f.read().decode("utf-8", errors="replace")
    return h.hexdigest(), tail


def unlock(root: Path) -> None:
    """Give the owner rwx on every folder and r on every file under ``root``, so a
    root and a non-root provider collect (and remove) the same files whatever modes
    the command left. Never through a symlink: each entry is lstat-ed first, and
    the sandbox is gone, so nothing can swap it in between."""
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                os.chmod(p, st.st_mode | stat.S_IRWXU)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(p, st.st_mode | stat.S_IRUSR)


def _rmtree(path: Path) -> None:
    try:
        unlock(path)
    finally:
        shutil.rmtree(path, onerror=lambda _f, p, exc: log.warning(
            "could not remove %s: %s", p, exc[1]))


def execute(payload: dict[str, Any], ctx: TaskContext | None = None) -> dict[str, Any]:
    """Run one command payload in the sandbox; the output object (see the kind's docstring)."""
    _require_sandbox()
    lim = payload["limits"]
    limits = sandbox.Limits(cpu_seconds=lim["cpu_seconds"], wall_seconds=lim["wall_seconds"],
                            memory_mb=lim["memory_mb"], file_size_mb=lim["file_size_mb"],
                            max_processes=lim["max_processes"])
    base = Path(tempfile.mkdtemp(prefix="deai-cmd-"))
    try:
        os.chmod(base, 0o711)  # the sandbox uid reaches work/, nothing else here
        work = base / "work"
        work.mkdir()
        _materialize(work, payload, ctx or TaskContext())
        res = sandbox.run(list(payload["argv"]), work, limits, env=dict(payload["env"]),
                          stdout=base / "stdout", stderr=base / "stderr")
        unlock(work)
        out_limit = lim["output_mb"] * 1024 * 1024
        files = collect(work / payload["output_dir"], out_limit)
        error, limit = res.error, DISK_LIMIT if res.limit == "disk" else res.limit
        if files is None:
            files = []
            msg = (f"output limit exceeded ({lim['output_mb']} MB in "
                   f"{payload['output_dir']}/); no file collected")
            error, limit = (msg if error is None else f"{error}; {msg}"), limit or "output"
        stdout_sha, stdout_tail = _stream(base / "stdout")
        stderr_sha, stderr_tail = _stream(base / "stderr")
    finally:
        _rmtree(base)
    return {"custom_id": payload["custom_id"], "status": "ok" if error is None else "error",
            "error": error, "limit": limit, "exit_code": res.exit_code, "signal": res.signal,
            "cpu_ms": min(res.cpu_ms, lim["cpu_seconds"] * 1000), "wall_ms": res.wall_ms,
            "stdout_sha256": stdout_sha, "stderr_sha256": stderr_sha,
            "stdout_tail": stdout_tail, "stderr_tail": stderr_tail, "files": files,
            "manifest_sha256": kind.manifest_sha256(files)}


class CommandWorkload:
    name = "command"

    def available(self, model: str) -> bool:
        """Whether this machine can run commands: only with a working bubblewrap."""
        ok, why = sandbox.available()
        if not ok:
            log.warning("not offering %s: no sandbox here (%s)", model, why)
        return ok

    def load(self, model: str) -> None:
        _check_model(model)
        _require_sandbox()

    def run(self, model: str, shard: bytes, ctx: TaskContext | None = None
            ) -> tuple[bytes, int]:
        _check_model(model)
        out = execute(kind.parse_payload(shard), ctx)
        return kind.canonical(out), int(out["cpu_ms"])


WORKLOAD = CommandWorkload()
