"""Durable records: the audit of every hook call and the feedback on cards, and
the database they (and the replay store) are kept in.

Two back ends behind one set of queries (a small dialect layer: placeholders,
two column types, how a transaction is made durable):

- SQLite, the embedded default (CDS_DATABASE a file path): WAL mode, one
  connection per thread and process kept open, so several threads and gunicorn
  workers on one host can share the file.
- PostgreSQL (CDS_DATABASE=postgresql://...), for a service on several hosts:
  one bounded psycopg connection pool per worker process.

The schema is created on start by numbered migrations recorded in a
schema_version table; on PostgreSQL under an advisory lock, so that workers and
hosts starting at once do not race. Nothing here holds PHI or tokens.

The package: records.py (the Store: the audit and feedback records, their schema),
database.py (which database a setting names), sqlite.py and postgres.py (the back
ends; the PostgreSQL URL), migrations.py (numbered migrations, the shared dialect).
"""

from .database import Database, database_for
from .postgres import (DEFAULT_POOL_SIZE, DatabaseUrl, PostgresDatabase, close_databases, is_postgres_url,
                       postgres_database)
from .records import STORE_MIGRATIONS, Store, StoreUnavailable
from .sqlite import Connections, SqliteDatabase

__all__ = ["Store", "StoreUnavailable", "STORE_MIGRATIONS", "Database", "database_for", "SqliteDatabase",
           "Connections", "PostgresDatabase", "postgres_database", "close_databases", "DatabaseUrl",
           "is_postgres_url", "DEFAULT_POOL_SIZE"]
