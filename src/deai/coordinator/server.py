"""Run the coordinator under uvicorn: one process, or N worker processes on one port.

``serve(settings, host, port, workers=N)`` with N > 1 binds the listening
socket once, forks N workers that each build their own app (their own
database pool, notifier and leader campaign) and accept on the shared socket,
and supervises them: a worker that dies is replaced, SIGTERM/SIGINT is passed
on to all and the supervisor exits when they have. Several workers need
PostgreSQL: they are replicas, and exactly one of them (the advisory-lock
leader, ``coordinator.leader``) runs the background loops. Replicas on several
machines are simply several ``deai coordinator`` processes with the same
``--database-url``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
from types import FrameType

import uvicorn

from deai.coordinator import http_protocol
from deai.coordinator.app import create_app
from deai.coordinator.notifier import Notifier
from deai.coordinator.settings import Settings

log = logging.getLogger("deai.coordinator.server")


class _Server(uvicorn.Server):
    """Releases open long-polls on SIGTERM/SIGINT so shutdown does not wait them out."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.notifier.close()
        super().handle_exit(sig, frame)


GC_THRESHOLD = (50_000, 20, 20)  # allocations before a young collection, young collections
# before a middle one, middle before a full one (Python's defaults: 700, 10, 10)


def tune_gc() -> None:
    """Set the cycle collector for a long-running server, once its start-up is done.

    With Python's defaults a matching round at 10,000 providers triggered a full
    collection: one pause of ~100 ms, and 20 % fewer placements a second
    (``bench/bench_matcher.py``). What start-up built (modules, the schema, the app) is
    moved out of the collector's reach (``gc.freeze``): it lives as long as the
    process, and a full collection no longer walks it. Young collections run every
    50,000 allocations instead of 700: requests and rounds allocate in bursts, and
    almost all of it is freed by reference counting, not by the collector.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _run(settings: Settings, host: str, port: int, sock: socket.socket | None = None) -> None:
    app = create_app(settings)
    tune_gc()
    # The HTTP front's bounds (docs/security.md): request heads by size and time
    # (http_protocol.BoundedHttp), connections served at once, idle kept-alive ones, and a file
    # limit high enough that idle sockets time out before accept fails.
    http_protocol.raise_nofile()
    # proxy_headers off: uvicorn would otherwise let any client on 127.0.0.1 rewrite its own
    # address with X-Forwarded-For; Settings.trust_forwarded_for decides that instead.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, proxy_headers=False,
                            http=http_protocol.http_protocol(settings.max_head_bytes,
                                                             settings.head_timeout),
                            limit_concurrency=settings.max_connections,
                            timeout_keep_alive=settings.keep_alive)
    server = _Server(config, app.state.coordinator.notifier)
    server.run(sockets=[sock] if sock is not None else None)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if workers <= 1:
        _run(settings, host, port)
        return
    if settings.db_url.startswith("sqlite"):
        raise SystemExit("--workers above 1 needs PostgreSQL (--database-url "
                         "postgresql+psycopg://...): SQLite serves one process")
    # proto IPPROTO_TCP, not 0: the accepted sockets inherit it, and asyncio sets TCP_NODELAY
    # only on sockets that say TCP. Without it every answer uvicorn writes in two parts
    # (head, body) waited ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    _supervise(settings, host, port, sock, workers)


def _supervise(settings: Settings, host: str, port: int, sock: socket.socket,
               workers: int) -> None:
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker: default signal handling, then uvicorn installs its own
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _run(settings, host, port, sock)
            except BaseException:  # noqa: BLE001 - a worker never returns into the parent
                logging.getLogger("deai.coordinator").exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.add(pid)

    def stop(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    log.info("coordinator: %d workers on %s:%d (supervisor pid %d)", workers, host, port,
             os.getpid())
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping:
            log.warning("worker %d exited (status %d); starting another", pid, status)
            time.sleep(0.5)
            spawn()
    sock.close()
