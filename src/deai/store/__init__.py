"""Persistence: SQLAlchemy tables, the journal appender, migrations and the blob store."""
