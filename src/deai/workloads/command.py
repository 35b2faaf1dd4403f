"""The command workload: run one command shard under bubblewrap and collect its output.

Shard and output formats are ``deai.core.kinds.command``'s. For each shard:

1. a fresh host folder ``deai-cmd-*`` (mode 0711) gets ``work/`` with the input
   files (inline base64, or blobs fetched by digest with ``ctx.fetch``) and an
   empty output folder; stdout and stderr go to files beside ``work/``, which
   the sandbox cannot see;
2. ``deai.provider.sandbox.run`` runs the argv with ``work/`` at ``/work`` and
   the shard's limits (its disk quota and tmpfs sizes derived from them: see
   ``sandbox.Limits``);
3. the output folder is collected by folder descriptors (``collect``: folders
   and files the command locked are opened for their owner, so they do not
   make a non-root provider differ): regular files only (symlinks, fifos and
   the like are skipped, and nothing is followed, not even a link the command
   put in place of a folder of ``output_dir``, so a link to a host file
   leaks nothing), paths sorted, each hashed with sha256 and carried inline
   as base64; if their bytes plus their manifest rows (``[path, size,
   sha256]``, so that many empty files cost too) total more than
   ``output_mb``, none is carried and the result is an "output" limit error;
4. the host folder is removed (``quota.remove_tree``: however deep the command
   nested its folders); if something cannot be removed, the result is a
   "disk" limit error, never an exception.

Memory: a shard whose ``memory_mb`` is over ``memory_ceiling_mb()`` is not run
(``NoCapacity``, which the agent reports as the task's failure): ``memory_mb``
sizes RAM-backed tmpfs, and the spec's bound (64 GiB) is not the host's.

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
import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from deai.core import catalog
from deai.core.errors import InvalidInput, NoCapacity
from deai.core.kinds import command as kind
from deai.workloads import quota, sandbox
from deai.workloads.base import TaskContext

MODEL = "bwrap-sandbox"
DISK_LIMIT = "disk" if "disk" in kind.LIMITS else "file_size"
log = logging.getLogger("deai.workloads.command")


def _check_model(model: str) -> None:
    if catalog.lookup(model, workload="command").name != MODEL:
        raise InvalidInput(f"model {model!r} is not a sandbox this provider runs",
                           field="model")


def memory_ceiling_mb() -> int:
    """The most ``memory_mb`` this provider gives one command: ``DEAI_COMMAND_MEMORY_MB``,
    else half of the host's RAM. Its ``/tmp`` and ``/dev/shm`` (half and a quarter of
    ``memory_mb``) are RAM, and RLIMIT_AS is per process, so a spec is not trusted to
    size them."""
    given = os.environ.get("DEAI_COMMAND_MEMORY_MB", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (2 * 1024 * 1024)


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


def _read_regular(name: str, dir_fd: int, limit: int) -> bytes | None:
    """The bytes of ``name`` in ``dir_fd`` if it is a regular file (never through a link),
    at most ``limit + 1`` of them."""
    try:
        fd = quota.open_as_owner(name, dir_fd, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit + 1)


def row_bytes(path: str, size: int, sha256: str) -> int:
    """What one file adds to the manifest: its canonical ``[path, size, sha256]`` row."""
    return len(kind.canonical([path, size, sha256])) + 1


def _open_out(out_dir: Path, root: Path) -> int | None:
    """A descriptor of ``out_dir``, each folder below ``root`` opened without following
    a link (the job may have made ``out``'s parent a link to a host folder)."""
    try:
        fd = os.open(root, quota.DIR_FLAGS)
    except OSError:
        return None
    for part in out_dir.relative_to(root).parts:
        try:
            nxt = quota.open_as_owner(part, fd)
        except OSError:
            nxt = None
        os.close(fd)
        if nxt is None:
            return None
        fd = nxt
    return fd


def _entries(fd: int) -> list[tuple[str, int]]:
    """(name, st_mode) of each entry of the folder ``fd``, links not followed."""
    out = []
    try:
        with os.scandir(fd) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    out.append((e.name, e.stat(follow_symlinks=False).st_mode))
    except OSError:
        pass
    return out


def collect(out_dir: Path, limit: int, *, root: Path | None = None
            ) -> list[dict[str, Any]] | None:
    """Regular files under ``out_dir``, sorted by path; None if their bytes and manifest
    rows (``row_bytes``) exceed ``limit`` bytes. The folders from ``root`` (default:
    ``out_dir``'s parent) down are opened by descriptor, never through a link; folders
    too deep for a path the manifest can carry are not entered; folders and files the
    command locked are opened for their owner (so a root and a non-root provider
    collect the same files whatever modes the command left)."""
    top = _open_out(out_dir, out_dir.parent if root is None else root)
    if top is None:
        return []
    files: list[dict[str, Any]] = []
    total = 0
    fds, rels = [top], [""]  # the open folders, out_dir first, and their paths in it
    todo: list[list[str]] = []  # per open folder: the subfolders still to enter
    try:
        while fds:
            if len(todo) < len(fds):  # entered just now: read it
                subs = []
                for name, mode in _entries(fds[-1]):
                    rel = rels[-1] + name
                    if stat.S_ISDIR(mode) and len(rel) + 2 <= kind.MAX_PATH_CHARS:
                        subs.append(name)
                    if not stat.S_ISREG(mode):
                        continue
                    try:
                        kind.check_path(rel)
                    except ValueError:
                        continue  # a name the manifest cannot carry
                    data = _read_regular(name, fds[-1], limit - total)
                    if data is None:
                        continue
                    digest = hashlib.sha256(data).hexdigest()
                    total += len(data) + row_bytes(rel, len(data), digest)
                    if total > limit:
                        return None
                    files.append({"path": rel, "size": len(data), "sha256": digest,
                                  "base64": base64.b64encode(data).decode()})
                todo.append(subs)
            if todo[-1]:
                name = todo[-1].pop()
                try:
                    child = quota.open_as_owner(name, fds[-1])
                except OSError:
                    continue
                fds.append(child)
                rels.append(f"{rels[-1]}{name}/")
            else:
                todo.pop()
                rels.pop()
                os.close(fds.pop())
    finally:
        for fd in fds:
            os.close(fd)
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


def _rmtree(path: Path) -> None:
    """Remove a folder a command wrote (``quota.remove_tree``); what is left is logged."""
    left = quota.remove_tree(path)
    if left is not None:
        log.error("%s", left)


def execute(payload: dict[str, Any], ctx: TaskContext | None = None) -> dict[str, Any]:
    """Run one command payload in the sandbox; the output object (see the kind's docstring)."""
    _require_sandbox()
    lim = payload["limits"]
    if lim["memory_mb"] > (most := memory_ceiling_mb()):  # the agent reports it failed
        raise NoCapacity(f"memory_mb {lim['memory_mb']} is more than this provider gives a "
                         f"command ({most} MB)")
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
        out_limit = lim["output_mb"] * 1024 * 1024
        files = collect(work / payload["output_dir"], out_limit, root=work)
        error, limit = res.error, DISK_LIMIT if res.limit == "disk" else res.limit
        if files is None:
            files = []
            msg = (f"output limit exceeded ({lim['output_mb']} MB in "
                   f"{payload['output_dir']}/); no file collected")
            error, limit = (msg if error is None else f"{error}; {msg}"), limit or "output"
        stdout_sha, stdout_tail = _stream(base / "stdout")
        stderr_sha, stderr_tail = _stream(base / "stderr")
    finally:
        left = quota.remove_tree(base)
        if left is not None:
            log.error("command %s: %s", payload.get("custom_id"), left)
    if left is not None:  # what the command left could not be removed: it is over quota
        msg = "disk quota exceeded (what the command wrote could not be removed)"
        error, limit = (msg if error is None else f"{error}; {msg}"), limit or DISK_LIMIT
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
