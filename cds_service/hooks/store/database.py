"""Which database a setting names: a postgresql:// URL's shared pool, else a
SQLite file. Both back ends keep one interface: transaction(durable=, immediate=),
execute, rows, migrate, and `errors`, the exception classes a caller catches."""

from __future__ import annotations

from pathlib import Path

from .postgres import DatabaseUrl, PostgresDatabase, is_postgres_url, postgres_database
from .sqlite import SqliteDatabase

Database = SqliteDatabase | PostgresDatabase


def database_for(target: str | Path, *, synchronous: str | None = None) -> Database:
    """A postgresql:// URL's shared PostgresDatabase, else a SQLite file at `target`."""
    if is_postgres_url(target):
        return postgres_database(str(target) if not isinstance(target, DatabaseUrl) else target)
    return SqliteDatabase(Path(target), synchronous=synchronous)
