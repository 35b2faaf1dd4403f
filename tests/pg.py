"""A throwaway PostgreSQL server for tests, started the way dependencies.md describes.

initdb refuses to run as root, so when the tests run as root the server's
commands run as the ``postgres`` user and its data directory belongs to it. The
server listens on 127.0.0.1 on a port found free at start, keeps its socket in
its own temporary directory, trusts local connections, and is stopped with
``pg_ctl -m fast -w stop``. A missing server is an error, never a skip: CI must
run the PostgreSQL tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PG_VERSION = "15"
BIN_CANDIDATES = (f"/usr/lib/postgresql/{PG_VERSION}/bin", f"/usr/pgsql-{PG_VERSION}/bin")


class PgUnavailable(RuntimeError):
    """The server binaries are missing or the server would not start."""


def find_bindir() -> Path:
    """Where initdb and pg_ctl live: $DEAI_PG_BIN, the Debian/RPM paths, then $PATH."""
    candidates = [os.environ.get("DEAI_PG_BIN", ""), *BIN_CANDIDATES]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise PgUnavailable(
        f"PostgreSQL {PG_VERSION} server binaries (initdb, pg_ctl) not found in "
        f"{', '.join(BIN_CANDIDATES)} or on PATH; install them with "
        f"`apt-get install -y postgresql` or point DEAI_PG_BIN at their directory"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int = 0
    user: str = "postgres"
    _run_as: str | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @classmethod
    def start(cls, attempts: int = 3) -> PgServer:
        bindir = find_bindir()
        root = Path(tempfile.mkdtemp(prefix="deai-pg-"))
        server = cls(bindir, root)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no `postgres` user "
                                    "to run initdb as") from None
            os.chown(root, pw.pw_uid, pw.pw_gid)
            server._run_as = "postgres"
        try:
            server._cmd("initdb", "-D", str(server.data), "-A", "trust", "-U", server.user,
                        "-E", "UTF8", "--no-sync")
            for attempt in range(attempts):
                server.port = free_port()
                try:
                    server._cmd(
                        "pg_ctl", "-D", str(server.data), "-l", str(server.log), "-w",
                        "-t", "60", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} "
                        "-c fsync=off -c full_page_writes=off -c synchronous_commit=off",
                        "start",
                    )
                    break
                except PgUnavailable:
                    if attempt == attempts - 1:
                        raise
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def _cmd(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        kw: dict[str, object] = {}
        if self._run_as:
            kw = {"user": self._run_as, "group": self._run_as, "extra_groups": []}
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True,
                              timeout=120, check=False, **kw)  # type: ignore[call-overload]
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PgUnavailable(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{log}")

    def stop(self) -> None:
        try:
            if self.data.exists():
                self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for psycopg."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """A SQLAlchemy URL."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg
        from psycopg import sql

        name = name or f"deai_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name
