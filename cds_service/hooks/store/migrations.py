"""Numbered schema migrations, recorded per component in a schema_version table,
in the SQL both back ends take.

One interface, two dialects: both databases take the same SQL, `?` placeholders
(turned into psycopg's %s), INSERT ... ON CONFLICT (SQLite >= 3.24), and the column
types {id} and {json}. A transaction yields an object with execute(sql, params) ->
cursor (rowcount, fetchone, fetchall). `durable` marks what the caller acknowledges
to a client: synced before the commit returns (SQLite synchronous=FULL; PostgreSQL
synchronous_commit=on); the rest may lose its last commits in a crash of the host
(SQLite NORMAL; PostgreSQL synchronous_commit=off), never its consistency.
"""

from __future__ import annotations

from typing import Any, Sequence

#: Migrations of one component: (version, statements). {id} and {json} are the dialect's
#: column types. A version once released is never edited: a change is a new version.
Migrations = Sequence[tuple[int, Sequence[str]]]


def migrate(tx: Any, types: dict[str, str], component: str, migrations: Migrations) -> None:
    """Run, in the transaction `tx`, the component's migrations newer than its recorded version."""
    tx.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = tx.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
    current = row[0] if row else 0
    latest = current
    for version, statements in migrations:
        if version > current:
            for statement in statements:
                tx.execute(statement.format(**types))
            latest = max(latest, version)
    if latest != current or row is None:
        tx.execute("INSERT INTO schema_version (component, version) VALUES (?, ?) "
                   "ON CONFLICT (component) DO UPDATE SET version = excluded.version", (component, latest))
