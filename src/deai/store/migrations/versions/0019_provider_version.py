"""A provider's version: bumped by the database whenever what matching builds from changes

Revision ID: 0019v
Revises: 0018k
Create Date: 2026-12-01 19:45:00.000000

Matching re-reads every provider it places work on, inside the transaction that
records the lease (``coordinator.provider_index``). Most of a provider's state
(its hardware, benchmark, slots, compute units, identity, offers and verified
hardware claim) changes only when it registers again or a challenge judges it;
its stake, load, reputation and last beat change all the time. ``version`` lets
the re-read fetch only the moving parts and the version, and build the rest again
only when the version moved.

The database keeps it, not the code: a trigger bumps it whenever a row it covers
changes (any column of ``offers``; the columns above of ``providers`` and
``hw_claims``), so no write path, present or future, can change a provider's
matching state without the re-read seeing it. The triggers fire on writes of those
columns only: a heartbeat's ``last_seen``, a rating's ``reputation`` or a
challenge's bookkeeping (``next_at``, ``passes``) does not bump it.
"""
import sqlalchemy as sa
from alembic import op

revision = '0019v'
down_revision = '0018k'
branch_labels = None
depends_on = None

PROVIDER_COLUMNS = ("hardware", "benchmark", "slots", "compute_units", "operator", "origin",
                    "fingerprint", "status")
CLAIM_COLUMNS = ("fingerprint", "status", "verified", "verified_units", "wrong")
_BUMP = "UPDATE providers SET version = version + 1 WHERE id = {}.provider_id"


def _sqlite() -> list[str]:
    out = [f"CREATE TRIGGER providers_version AFTER UPDATE OF {', '.join(PROVIDER_COLUMNS)} "
           "ON providers FOR EACH ROW BEGIN "
           "UPDATE providers SET version = version + 1 WHERE id = NEW.id; END"]
    for table, update_of in (("offers", ""), ("hw_claims", " OF " + ", ".join(CLAIM_COLUMNS))):
        out += [
            f"CREATE TRIGGER {table}_version_insert AFTER INSERT ON {table} FOR EACH ROW "
            f"BEGIN {_BUMP.format('NEW')}; END",
            f"CREATE TRIGGER {table}_version_delete AFTER DELETE ON {table} FOR EACH ROW "
            f"BEGIN {_BUMP.format('OLD')}; END",
            f"CREATE TRIGGER {table}_version_update AFTER UPDATE{update_of} ON {table} "
            f"FOR EACH ROW BEGIN {_BUMP.format('OLD')}; {_BUMP.format('NEW')}; END",
        ]
    return out


def _postgres() -> list[str]:
    return [
        "CREATE FUNCTION deai_provider_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.version := OLD.version + 1; RETURN NEW; END $$",
        f"CREATE TRIGGER providers_version BEFORE UPDATE OF {', '.join(PROVIDER_COLUMNS)} "
        "ON providers FOR EACH ROW EXECUTE FUNCTION deai_provider_version()",
        "CREATE FUNCTION deai_provider_part_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF TG_OP <> 'INSERT' THEN {_BUMP.format('OLD')}; END IF; "
        f"IF TG_OP <> 'DELETE' THEN {_BUMP.format('NEW')}; END IF; RETURN NULL; END $$",
        "CREATE TRIGGER offers_version AFTER INSERT OR UPDATE OR DELETE ON offers "
        "FOR EACH ROW EXECUTE FUNCTION deai_provider_part_version()",
        "CREATE TRIGGER hw_claims_version AFTER INSERT OR DELETE OR UPDATE OF "
        f"{', '.join(CLAIM_COLUMNS)} ON hw_claims "
        "FOR EACH ROW EXECUTE FUNCTION deai_provider_part_version()",
    ]


def upgrade() -> None:
    op.add_column('providers', sa.Column('version', sa.BigInteger(), nullable=False,
                                         server_default='0'))
    sqlite = op.get_bind().dialect.name == "sqlite"
    for sql in _sqlite() if sqlite else _postgres():
        op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in ("offers", "hw_claims"):
            for when in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_version_{when}")
        op.execute("DROP TRIGGER IF EXISTS providers_version")
        # In place (SQLite 3.35+), not Alembic's batch: that rebuilds the table from its
        # reflection, and 0018k's downgrade finds its checks by their text.
        op.execute("ALTER TABLE providers DROP COLUMN version")
        return
    for table in ("providers", "offers", "hw_claims"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_version ON {table}")
    op.execute("DROP FUNCTION IF EXISTS deai_provider_version()")
    op.execute("DROP FUNCTION IF EXISTS deai_provider_part_version()")
    op.drop_column('providers', 'version')
