"""Create or upgrade the schema with Alembic; the coordinator calls this at start-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade to ``revision`` (the newest schema) in one transaction (``_migrate``)."""
    _migrate(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade to ``revision`` in one transaction (``_migrate``)."""
    _migrate(engine, lambda cfg: command.downgrade(cfg, revision))


def _migrate(engine: Engine, run: Callable[[Config], None]) -> None:
    """Run Alembic in one transaction. On SQLite, with foreign keys off until it is
    done: a migration that rebuilds a table (SQLite cannot add a constraint to one in
    place) drops the old table, which its children's keys would refuse. The pragma
    cannot change inside a transaction, so it is set before, and every key is checked
    before the commit when a migration ran: one that left a key dangling is rolled
    back. (A start at the newest schema runs none, and reads no table.)"""
    cfg = config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")  # no transaction open yet: it applies
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                before = MigrationContext.configure(conn).get_current_revision()
                run(cfg)
                if raw is not None and (
                        MigrationContext.configure(conn).get_current_revision() != before):
                    dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if dangling:
                        raise RuntimeError(
                            f"the migration left {len(dangling)} rows whose foreign key "
                            f"names no row, e.g. {tuple(dangling[0])}: not committed")
        finally:
            if raw is not None:
                try:
                    raw.execute("PRAGMA foreign_keys=ON")
                except Exception:
                    conn.invalidate()  # never back in the pool with its keys unchecked
                    raise
