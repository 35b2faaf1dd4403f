"""Terminal and socket plumbing for leases: an interactive shell and a forwarded port.

``shell`` runs a program (default bash) on a PTY inside the lease: the local
terminal goes raw, so every key (Ctrl-C included) reaches the remote terminal,
which turns it into a signal there; a SIGWINCH here sends the new size; the
return value is the remote program's exit status. With a non-terminal stdin it
still works (size 24x80), which is how scripts drive it.

``forward`` listens on a local TCP port (loopback only) and, for every
connection, opens a ``connect`` session to a port inside the lease; bytes go
both ways until either side closes. ``serve_forward`` returns the listening
socket's port and a stop function, for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import termios
import threading
import tty
from collections.abc import Callable
from types import FrameType

from deai.client.leases import STDIN, Leases, Session
from deai.core.errors import DeAIError

CHUNK = 64 * 1024


def _size(fd: int) -> tuple[int, int]:
    try:
        cols, rows = os.get_terminal_size(fd)
        return rows, cols
    except OSError:
        return 24, 80


def shell(leases: Leases, lease_id: str, argv: list[str] | None = None) -> int:
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(fd_in)
    rows, cols = _size(fd_in if is_tty else fd_out)
    params = {"op": "exec", "pty": True, "rows": rows, "cols": cols,
              "term": os.environ.get("TERM", "xterm-256color")}
    if argv:
        params["argv"] = argv
    session = leases.open(lease_id, params)
    saved = termios.tcgetattr(fd_in) if is_tty else None
    old_winch = None

    def on_winch(signum: int, frame: FrameType | None) -> None:
        r, c = _size(fd_in)
        with contextlib.suppress(Exception):
            session.control(type="resize", rows=r, cols=c)

    def keys() -> None:
        while True:
            try:
                data = os.read(fd_in, CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                session.send(data, STDIN)
            except Exception:
                return

    try:
        if saved is not None:
            tty.setraw(fd_in)
        if threading.current_thread() is threading.main_thread():
            old_winch = signal.signal(signal.SIGWINCH, on_winch)
        threading.Thread(target=keys, daemon=True, name="deai-shell-keys").start()
        for m in session.messages():
            if isinstance(m, tuple):
                os.write(fd_out, m[1])
            elif m.get("type") == "exit":
                return int(m["code"])
        raise DeAIError("the shell's session closed without an exit status")
    finally:
        if saved is not None:
            termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        session.close()


def _pipe(session: Session, conn: socket.socket) -> None:
    def upstream() -> None:
        try:
            while data := conn.recv(CHUNK):
                session.send(data, STDIN)
            session.control(type="eof")
        except Exception:
            with contextlib.suppress(Exception):
                session.close()

    t = threading.Thread(target=upstream, daemon=True)
    t.start()
    try:
        for m in session.messages():
            if isinstance(m, tuple):
                conn.sendall(m[1])
            elif m.get("type") in ("exit", "eof"):
                break
    except (OSError, DeAIError):
        pass
    finally:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        session.close()


def _handle(leases: Leases, lease_id: str, port: int, conn: socket.socket,
            on_error: Callable[[str], None]) -> None:
    try:
        session = leases.open(lease_id, {"op": "connect", "port": port})
        first = session.recv(timeout=30)
        if not (isinstance(first, dict) and first.get("type") == "ready"):
            raise DeAIError(f"unexpected first message {first!r}")
    except Exception as exc:
        on_error(f"cannot connect to port {port} in {lease_id}: {exc}")
        conn.close()
        return
    _pipe(session, conn)


def serve_forward(leases: Leases, lease_id: str, port: int, local_port: int = 0,
                  on_error: Callable[[str], None] | None = None
                  ) -> tuple[int, Callable[[], None]]:
    """Listen on 127.0.0.1:``local_port`` (0: any free port) in a background thread;
    returns (the port, a function that stops listening)."""
    srv = socket.create_server(("127.0.0.1", local_port))
    stopped = threading.Event()
    report = on_error or (lambda msg: print(msg, file=sys.stderr))

    def accept() -> None:
        while not stopped.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_handle, args=(leases, lease_id, port, conn, report),
                             daemon=True).start()

    threading.Thread(target=accept, daemon=True, name="deai-forward").start()

    def stop() -> None:
        stopped.set()
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        srv.close()

    return int(srv.getsockname()[1]), stop
