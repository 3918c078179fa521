"""The SQLite connections kept per thread and process (cds_service/hooks/store.py)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from cds_service.hooks import store as store_module
from cds_service.hooks.store import Connections, Store


def test_a_failed_transaction_is_rolled_back_and_the_connection_stays_usable(tmp_path):
    store = Store(tmp_path / "audit.sqlite3")
    with pytest.raises(sqlite3.IntegrityError):
        with store._db.transaction() as db:
            db.execute("INSERT INTO card (uuid, hook_instance, trial, definition_version, status, created_at) "
                       "VALUES ('u1', 'h', 't', '1', 'eligible', 'now')")
            db.execute("INSERT INTO card (uuid, hook_instance, trial, definition_version, status, created_at) "
                       "VALUES ('u1', 'h', 't', '1', 'eligible', 'now')")  # same primary key
    assert not store._db.get().in_transaction
    assert store._db.rows("SELECT * FROM card") == []  # the first insert went with the rollback
    store.record_hook_call(hook_instance="h", service="s", status_code=200, outcome="cards", latency_ms=1.0)
    assert [r["hook_instance"] for r in store.hook_calls()] == ["h"]


def test_each_thread_has_its_own_connection_and_sees_committed_rows(tmp_path):
    store = Store(tmp_path / "audit.sqlite3")
    seen: dict[str, object] = {}

    def worker():
        seen["db"] = store._db.get()
        store.record_hook_call(hook_instance="from-thread", service="s", status_code=200, outcome="cards",
                               latency_ms=1.0)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["db"] is not store._db.get()
    assert store._db.get() is store._db.get()  # kept, not reopened per operation
    assert [r["hook_instance"] for r in store.hook_calls()] == ["from-thread"]


def test_a_forked_child_opens_its_own_connection(tmp_path, monkeypatch):
    connections = Connections(tmp_path / "x.sqlite3")
    parent = connections.get()
    monkeypatch.setattr(store_module.os, "getpid", lambda: -1)  # as if in a child after fork
    child = connections.get()
    assert child is not parent
    assert parent in store_module._inherited  # kept, not closed: the parent may still be using the file
    assert connections.get() is child


def test_feedback_is_written_with_full_sync_and_the_audit_with_normal(tmp_path):
    # Set once per kept connection, not on every call: FULL (2) for what the EHR is told
    # is stored, NORMAL (1) for the audit.
    store = Store(tmp_path / "audit.sqlite3")
    store.record_feedback("s", [{"card": "c1", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}])
    store.record_hook_call(hook_instance="h", service="s", status_code=200, outcome="cards", latency_ms=1.0)
    assert store._durable.get().execute("PRAGMA synchronous").fetchone() == (2,)
    assert store._db.get().execute("PRAGMA synchronous").fetchone() == (1,)
    assert len(store.feedback()) == 1 and len(store.hook_calls()) == 1
