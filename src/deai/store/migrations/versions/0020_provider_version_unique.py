"""A provider's version never repeats, even after a rollback

Revision ID: 0020u
Revises: 0019v
Create Date: 2026-12-01 21:50:00.000000

0019's triggers counted a provider's version up by one. A bump that is rolled
back gives its number back: the next change that commits reaches the same number
with other contents. A process that read the provider inside the transaction that
was rolled back (its memo keeps the state with the version it was built at,
``coordinator.provider_index.load``) would then take the later state for the one
it built, and never build it again. No path reads a provider in a transaction that
changed it and then rolls back today; the version should not rely on that.

Now each change draws a number that is never given back: PostgreSQL's sequence
``deai_provider_version`` (``nextval`` is not transactional), SQLite's
``random()`` (64 bits: two changes of one provider draw the same number with
probability 2⁻⁶⁴). A new provider draws one too, so a registration rolled back and
made again does not reuse 0. The version is compared for equality only.
"""
from alembic import op

revision = '0020u'
down_revision = '0019v'
branch_labels = None
depends_on = None

PROVIDER_COLUMNS = ("hardware", "benchmark", "slots", "compute_units", "operator", "origin",
                    "fingerprint", "status")
CLAIM_COLUMNS = ("fingerprint", "status", "verified", "verified_units", "wrong")
SEQUENCE = "deai_provider_version"


def _sqlite(fresh: str, *, on_insert: bool) -> list[str]:
    """0019's triggers with ``fresh`` as a changed provider's version (``version + 1``
    there, ``random()`` here); ``on_insert``: a new provider draws one too."""
    bump = f"UPDATE providers SET version = {fresh} WHERE id = {{}}.provider_id"
    out = [f"CREATE TRIGGER providers_version AFTER UPDATE OF {', '.join(PROVIDER_COLUMNS)} "
           "ON providers FOR EACH ROW BEGIN "
           f"UPDATE providers SET version = {fresh} WHERE id = NEW.id; END"]
    if on_insert:
        out.append("CREATE TRIGGER providers_version_insert AFTER INSERT ON providers "
                   f"FOR EACH ROW BEGIN UPDATE providers SET version = {fresh} "
                   "WHERE id = NEW.id; END")
    for table, update_of in (("offers", ""), ("hw_claims", " OF " + ", ".join(CLAIM_COLUMNS))):
        out += [
            f"CREATE TRIGGER {table}_version_insert AFTER INSERT ON {table} FOR EACH ROW "
            f"BEGIN {bump.format('NEW')}; END",
            f"CREATE TRIGGER {table}_version_delete AFTER DELETE ON {table} FOR EACH ROW "
            f"BEGIN {bump.format('OLD')}; END",
            f"CREATE TRIGGER {table}_version_update AFTER UPDATE{update_of} ON {table} "
            f"FOR EACH ROW BEGIN {bump.format('OLD')}; {bump.format('NEW')}; END",
        ]
    return out


_SQLITE_TRIGGERS = ("providers_version", "providers_version_insert",
                    *(f"{t}_version_{w}" for t in ("offers", "hw_claims")
                      for w in ("insert", "delete", "update")))


def _postgres(fresh: str, new: str, *, on_insert: bool) -> list[str]:
    """0019's functions with ``fresh`` as a changed provider's version and ``new`` as
    the providers trigger's (``OLD.version + 1`` there)."""
    bump = f"UPDATE providers SET version = {fresh} WHERE id = {{}}.provider_id"
    when = "INSERT OR UPDATE" if on_insert else "UPDATE"
    return [
        "CREATE OR REPLACE FUNCTION deai_provider_version() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$ BEGIN NEW.version := {new}; RETURN NEW; END $$",
        "DROP TRIGGER IF EXISTS providers_version ON providers",
        f"CREATE TRIGGER providers_version BEFORE {when} OF {', '.join(PROVIDER_COLUMNS)} "
        "ON providers FOR EACH ROW EXECUTE FUNCTION deai_provider_version()",
        "CREATE OR REPLACE FUNCTION deai_provider_part_version() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ "
        f"BEGIN IF TG_OP <> 'INSERT' THEN {bump.format('OLD')}; END IF; "
        f"IF TG_OP <> 'DELETE' THEN {bump.format('NEW')}; END IF; RETURN NULL; END $$",
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for sql in _sqlite("random()", on_insert=True):
            op.execute(sql)
        return
    op.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE} AS bigint")
    # Above every version counted so far: no number is drawn that a provider had.
    op.execute(f"SELECT setval('{SEQUENCE}', (SELECT COALESCE(max(version), 0) + 1 "
               "FROM providers), false)")
    fresh = f"nextval('{SEQUENCE}')"
    for sql in _postgres(fresh, fresh, on_insert=True):
        op.execute(sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for sql in _sqlite("version + 1", on_insert=False):
            op.execute(sql)
        return
    for sql in _postgres("version + 1", "OLD.version + 1", on_insert=False):
        op.execute(sql)
    op.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")
