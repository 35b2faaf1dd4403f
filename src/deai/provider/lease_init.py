"""The program that keeps a lease's sandbox alive and serves its sessions (stdlib only).

It runs *inside* the bubblewrap sandbox of a lease, as the sandbox's user, on
the host's ``/usr/bin/python3``, so it imports nothing of DeAI: the agent
copies this file into the lease's folder and binds it read-only. It inherits a
listening Unix socket (fd ``DEAI_CTL_FD``) that the agent bound on the host in
a folder the sandbox cannot see, so nothing inside can swap the socket for a
link to a host service; it marks it close-on-exec at once (and a PTY's child
closes every descriptor above 2), so no program it starts holds it. Each
connection is one session:

    agent → init   T {"op": "exec", "argv": [...], "pty": bool, "rows", "cols", "env"}
                   T {"op": "put", "path": P, "mode": 0o644} | {"op": "get", "path": P}
                   T {"op": "connect", "port": N} | {"op": "ping"}
                   T {"op": "notice", "at": T}  (a spot lease's preemption notice:
                     ``~/.deai/preempt`` is written, then SIGTERM to every process but
                     this one) | {"op": "withdraw"} (the notice was withdrawn:
                     ``~/.deai/preempt`` is removed)
    then, both ways, frames: B <channel byte><data>  (0 stdin/upload, 1 stdout/download,
                   2 stderr) and T {"type": "resize"|"eof"|"signal"|"ready"|"exit"|"error"}

A frame on the socket is ``type (1 byte: B or T) + length (4 bytes, big-endian) +
payload``; the agent maps B to a binary WebSocket message and T to a text one,
one to one. Every session ends with T ``exit`` (code: the program's status,
128+N for a signal) or T ``error`` (message), then the connection closes.
A session that closes before its program has exited takes the program's process
group with it (SIGKILL for pipes, SIGHUP for a PTY); what a program left running in
the background after it exited runs on, as over ssh.
Paths are relative to ``$HOME`` unless absolute, and are resolved in here, so a
link made inside the lease can only point inside the lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from typing import Any

HEADER = struct.Struct(">cI")
MAX_FRAME = 4 * 1024 * 1024
CHUNK = 64 * 1024
STDIN, STDOUT, STDERR = 0, 1, 2


class Channel:
    """Frames over a connected socket; ``send`` may be called from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send = threading.Lock()

    def send(self, kind: bytes, payload: bytes) -> None:
        with self._send:
            self.sock.sendall(HEADER.pack(kind, len(payload)) + payload)

    def text(self, **msg: Any) -> None:
        self.send(b"T", json.dumps(msg).encode())

    def data(self, channel: int, data: bytes) -> None:
        self.send(b"B", bytes([channel]) + data)

    def recv(self) -> tuple[bytes, bytes] | None:
        head = self._exactly(HEADER.size)
        if head is None:
            return None
        kind, n = HEADER.unpack(head)
        if n > MAX_FRAME or kind not in (b"B", b"T"):
            raise ValueError(f"bad frame ({kind!r}, {n} bytes)")
        body = self._exactly(n)
        return None if body is None else (kind, body)

    def _exactly(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf


def _home_path(path: str) -> str:
    home = os.environ.get("HOME", "/")
    return os.path.normpath(os.path.join(home, os.path.expanduser(path)))


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def run_pty(ch: Channel, req: dict[str, Any]) -> None:
    import pty

    argv = [str(a) for a in req.get("argv") or ["/bin/bash", "-i"]]
    env = _env({"TERM": req.get("term", "xterm-256color"), **(req.get("env") or {})})
    pid, master = pty.fork()
    if pid == 0:  # the child: its own session, the pty as its controlling terminal
        try:
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # nothing of init's: no sockets
            os.chdir(env.get("HOME", "/"))
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    _winsize(master, int(req.get("rows", 24)), int(req.get("cols", 80)))
    exited = threading.Event()
    status: list[int] = []

    def wait() -> None:
        status.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        exited.set()

    def inbound() -> None:
        while (frame := _recv_quiet(ch)) is not None:
            kind, body = frame
            if kind == b"B" and body[:1] == bytes([STDIN]):
                with contextlib.suppress(OSError):
                    os.write(master, body[1:])
            elif kind == b"T":
                msg = json.loads(body)
                if msg.get("type") == "resize":
                    _winsize(master, int(msg["rows"]), int(msg["cols"]))
                elif msg.get("type") == "signal":
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(os.getpgid(pid), int(msg["signal"]))
        with contextlib.suppress(ProcessLookupError):  # the client went away: hang up
            os.killpg(pid, signal.SIGHUP)

    threading.Thread(target=wait, daemon=True).start()
    threading.Thread(target=inbound, daemon=True).start()
    while True:  # copy output until the child has exited and the pty is drained
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                out = os.read(master, CHUNK)
            except OSError:  # EIO: every holder of the terminal is gone
                out = b""
            if out:
                ch.data(STDOUT, out)
                continue
            exited.wait()
            break
        if exited.is_set():
            break
    os.close(master)
    ch.text(type="exit", code=_status(status[0]))


def _recv_quiet(ch: Channel) -> tuple[bytes, bytes] | None:
    try:
        return ch.recv()
    except (OSError, ValueError):
        return None


def run_pipes(ch: Channel, req: dict[str, Any]) -> None:
    argv = [str(a) for a in req["argv"]]
    env = _env(req.get("env") or {})
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=env.get("HOME", "/"), env=env,
                                start_new_session=True)
    except OSError as exc:
        ch.data(STDERR, f"{argv[0]}: {exc.strerror}\n".encode())
        ch.text(type="exit", code=127)
        return
    assert proc.stdin and proc.stdout and proc.stderr
    exited = threading.Event()

    def pump(stream: Any, channel: int) -> None:
        while out := stream.read1(CHUNK):
            ch.data(channel, out)

    def inbound() -> None:
        assert proc.stdin
        while (frame := _recv_quiet(ch)) is not None:
            kind, body = frame
            try:
                if kind == b"B" and body[:1] == bytes([STDIN]):
                    proc.stdin.write(body[1:])
                    proc.stdin.flush()
                elif kind == b"T":
                    msg = json.loads(body)
                    if msg.get("type") == "eof":
                        proc.stdin.close()
                    elif msg.get("type") == "signal":
                        os.killpg(proc.pid, int(msg["signal"]))
            except (OSError, ValueError):
                continue
        if exited.is_set():  # what it left running in the background runs on, as over ssh
            return
        with contextlib.suppress(ProcessLookupError):  # the client hung up mid-run
            os.killpg(proc.pid, signal.SIGKILL)

    pumps = [threading.Thread(target=pump, args=(proc.stdout, STDOUT), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, STDERR), daemon=True)]
    for t in pumps:
        t.start()
    threading.Thread(target=inbound, daemon=True).start()
    code = proc.wait()
    exited.set()  # before the client can learn it and hang up
    for t in pumps:
        t.join(5.0)
    ch.text(type="exit", code=_status(code))


def put(ch: Channel, req: dict[str, Any]) -> None:
    path = _home_path(str(req["path"]))
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    size = 0
    with open(path, "wb") as f:
        while (frame := ch.recv()) is not None:
            kind, body = frame
            if kind == b"B":
                f.write(body[1:])
                size += len(body) - 1
            elif json.loads(body).get("type") == "eof":
                break
        else:
            raise ConnectionError("upload cut short")
    if "mode" in req:
        os.chmod(path, int(req["mode"]) & 0o777)
    ch.text(type="exit", code=0, size=size)


def get(ch: Channel, req: dict[str, Any]) -> None:
    path = _home_path(str(req["path"]))
    with open(path, "rb") as f:
        ch.text(type="ready", mode=os.fstat(f.fileno()).st_mode & 0o777)
        while chunk := f.read(CHUNK):
            ch.data(STDOUT, chunk)
    ch.text(type="exit", code=0)


def connect(ch: Channel, req: dict[str, Any]) -> None:
    port = int(req["port"])
    tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
    tcp.settimeout(None)
    ch.text(type="ready")

    def inbound() -> None:
        while (frame := _recv_quiet(ch)) is not None:
            kind, body = frame
            try:
                if kind == b"B":
                    tcp.sendall(body[1:])
                elif json.loads(body).get("type") == "eof":
                    tcp.shutdown(socket.SHUT_WR)
            except OSError:
                break
        with contextlib.suppress(OSError):
            tcp.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=inbound, daemon=True).start()
    try:
        while out := tcp.recv(CHUNK):
            ch.data(STDOUT, out)
    except OSError:
        pass
    tcp.close()
    ch.text(type="exit", code=0)


def notice(ch: Channel, req: dict[str, Any]) -> None:
    """A spot lease's preemption notice: a file, then SIGTERM to every other process."""
    folder = _home_path(".deai")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "preempt"), "w") as f:
        json.dump({"at": req.get("at"), "seconds": req.get("seconds")}, f)
    os.kill(-1, signal.SIGTERM)  # this process ignores it (main), the bwrap pid 1 is spared
    ch.text(type="exit", code=0)


def withdraw(ch: Channel) -> None:
    """A preemption notice taken back: the lease runs on, ``~/.deai/preempt`` goes."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_home_path(".deai"), "preempt"))
    ch.text(type="exit", code=0)


def serve(conn: socket.socket) -> None:
    ch = Channel(conn)
    try:
        first = ch.recv()
        if first is None or first[0] != b"T":
            return
        req = json.loads(first[1])
        op = req.get("op")
        if op == "ping":
            ch.text(type="exit", code=0, pid=os.getpid())
        elif op == "exec":
            (run_pty if req.get("pty") else run_pipes)(ch, req)
        elif op == "put":
            put(ch, req)
        elif op == "get":
            get(ch, req)
        elif op == "connect":
            connect(ch, req)
        elif op == "notice":
            notice(ch, req)
        elif op == "withdraw":
            withdraw(ch)
        else:
            ch.text(type="error", message=f"unknown op {op!r}")
    except OSError as exc:
        with contextlib.suppress(OSError):
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            ch.text(type="error", message=f"{exc.strerror or exc}{where}")
    except Exception as exc:  # a bad request must not take the lease down
        with contextlib.suppress(OSError):
            ch.text(type="error", message=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def main() -> None:
    srv = socket.socket(fileno=int(os.environ.pop("DEAI_CTL_FD")))
    srv.set_inheritable(False)  # inherited from the agent; no program of the lease gets it
    # a handler, not SIG_IGN: programs started from here get the default action back
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    os.chdir(os.environ.get("HOME", "/"))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
    sys.exit(0)
