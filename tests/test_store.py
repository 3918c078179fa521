"""The records (cds_service/hooks/store.py) and the SQL replay store (hooks/replay.py),
each test against both back ends where it applies: a SQLite file and PostgreSQL
(see tests/postgres_server.py for where the PostgreSQL comes from)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from cds_service.hooks.replay import (JTI_MIGRATIONS, DatabaseJtiStore, PostgresJtiStore, ReplayStoreUnavailable,
                                      SqliteJtiStore, jti_store_for)
from cds_service.hooks.store import (STORE_MIGRATIONS, Connections, PostgresDatabase, SqliteDatabase, Store,
                                     database_for)
from cds_service.hooks.store import postgres as postgres_backend
from cds_service.hooks.store import sqlite as sqlite_backend
from postgres_server import database, postgres_url, table_locked, terminate_sessions  # noqa: F401,F811

NOW = 1_780_000_000


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def separate():
    """Opens a back end's database as another worker or host would: its own connections
    (on PostgreSQL its own pool, not the process's shared one), closed after the test."""
    opened: list[PostgresDatabase] = []

    def open_database(target):
        if isinstance(target, str):  # a postgresql:// URL
            opened.append(PostgresDatabase(target))
            return opened[-1]
        return SqliteDatabase(target)

    yield open_database
    for db in opened:
        db.close()


def a_card(uuid: str = "u1") -> dict:
    return {"uuid": uuid, "trial": "NCT06462092", "definitionVersion": "1.2.0", "status": "eligible",
            "suggestions": ["s1", "s2"]}


def feedback_item(card: str = "u1", outcome: str = "accepted", **extra) -> dict:
    item = {"card": card, "outcome": outcome, "outcomeTimestamp": "2026-06-15T14:02:10Z"}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": "s1"}]
    return {**item, **extra}


# --------------------------------------------------------------------------- both back ends

def test_hook_calls_cards_and_feedback_round_trip(database):
    store = Store(database)
    store.record_hook_call(hook_instance="h1", service="trial-eligibility", status_code=200, outcome="cards",
                           latency_ms=12.345, data_sources={"patient": {"source": "prefetch"}},
                           trials=[{"trial": "NCT06462092", "status": "eligible", "card": "u1"}],
                           timings={"total": 12.3}, cards=[a_card()])
    # The same card again (a retried audit write) is kept once.
    store.record_hook_call(hook_instance="h1", service="trial-eligibility", status_code=200, outcome="cards",
                           latency_ms=1.0, cards=[a_card()])
    (first, second) = store.hook_calls()
    assert first["latency_ms"] == 12.35 and first["data_sources"] == {"patient": {"source": "prefetch"}}
    assert first["trials"][0]["card"] == "u1" and first["timings"] == {"total": 12.3}
    assert second["data_sources"] is None and second["id"] > first["id"]
    assert store.db.rows("SELECT COUNT(*) AS n FROM card") == [{"n": 1}]

    assert store.record_feedback("trial-eligibility", [feedback_item(), feedback_item("other", "overridden")]) == 2
    assert store.record_feedback("trial-eligibility", [feedback_item(), feedback_item()]) == 0  # stored once
    rows = store.feedback()
    assert [(r["card"], r["known_card"], r["accepted_suggestions"]) for r in rows] == [
        ("u1", 1, ["s1"]), ("other", 0, None)]


def test_free_text_comments_are_not_stored(database):
    store = Store(database)
    comment = {"userComment": "Mrs Ada Testpatient declined on the phone",
               "reason": {"system": "http://example.org/reasons", "code": "declined"}}
    store.record_feedback("s", [feedback_item(outcome="overridden", overrideReason=comment)])
    (row,) = store.feedback()
    assert row["has_comment"] == 1 and row["override_code"] == "declined"
    dumped = repr([store.db.rows(f"SELECT * FROM {table}") for table in ("feedback", "card", "hook_call")])
    assert "Testpatient" not in dumped


def test_a_failed_transaction_is_rolled_back_and_the_database_stays_usable(database):
    store = Store(database)
    insert = ("INSERT INTO card (uuid, hook_instance, trial, definition_version, status, created_at) "
              "VALUES ('u1', 'h', 't', '1', 'eligible', 'now')")
    with pytest.raises(store.db.errors):
        with store.db.transaction() as db:
            db.execute(insert)
            db.execute(insert)  # same primary key
    assert store.db.rows("SELECT * FROM card") == []  # the first insert went with the rollback
    store.record_hook_call(hook_instance="h", service="s", status_code=200, outcome="cards", latency_ms=1.0)
    assert [r["hook_instance"] for r in store.hook_calls()] == ["h"]


def test_the_schema_is_created_once_and_versioned(database):
    Store(database)
    store = Store(database)  # a second start (another worker, another host): nothing to do, nothing lost
    store.record_feedback("s", [feedback_item()])
    Store(database)
    assert store.db.rows("SELECT component, version FROM schema_version") == [
        {"component": "store", "version": STORE_MIGRATIONS[-1][0]}]
    assert len(Store(database).feedback()) == 1


def test_workers_starting_at_once_do_not_race_on_the_schema(database, separate):
    # Eight processes' worth of start-ups at the same moment, each on its own connection
    # (on PostgreSQL, separate pools, as separate hosts would have).
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    databases = [separate(database) for _ in range(8)]

    def start(db):
        barrier.wait()
        try:
            db.migrate("store", STORE_MIGRATIONS)
            db.migrate("jti", JTI_MIGRATIONS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted((r["component"], r["version"]) for r in database_for(database).rows(
        "SELECT component, version FROM schema_version")) == [("jti", 1), ("store", 1)]


def test_concurrent_writers_lose_no_feedback(database):
    store = Store(database)
    errors: list[BaseException] = []

    def writer(n: int):
        try:
            for i in range(15):
                # every writer also repeats one shared entry: stored once however they interleave
                assert store.record_feedback("s", [feedback_item(f"c{n}-{i}", "overridden"),
                                                   feedback_item("shared", "overridden")]) in (1, 2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    cards = [r["card"] for r in store.feedback()]
    assert len(cards) == 6 * 15 + 1 and cards.count("shared") == 1


# --------------------------------------------------------------------------- the replay store, both back ends

def test_a_jti_seen_twice_is_refused_by_every_host(database, separate):
    clock = Clock()
    one, two = (DatabaseJtiStore(separate(database), clock=clock) for _ in range(2))
    assert one.remember("https://ehr.example.org", "j-1", NOW + 300) is True
    assert two.remember("https://ehr.example.org", "j-1", NOW + 300) is False
    assert one.remember("https://ehr.example.org", "j-1", NOW + 300) is False
    assert two.remember("https://other.example.org", "j-1", NOW + 300) is True


def test_of_simultaneous_presentations_of_one_jti_exactly_one_is_accepted(database, separate):
    clock = Clock()
    stores = [DatabaseJtiStore(separate(database), clock=clock) for _ in range(4)]
    barrier = threading.Barrier(8)
    answers: list[bool] = []

    def present(store):
        barrier.wait()
        answers.append(store.remember("iss", "raced", NOW + 300))

    threads = [threading.Thread(target=present, args=(stores[i % 4],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [False] * 7 + [True]


def test_expired_rows_are_pruned_and_do_not_block_a_later_token(database, separate):
    clock = Clock()
    jtis = DatabaseJtiStore(separate(database), clock=clock, leeway=60, purge_every=3)

    def rows():
        return sorted(r["jti"] for r in jtis.db.rows("SELECT jti FROM jti"))

    assert jtis.remember("iss", "old-1", NOW + 10)
    assert jtis.remember("iss", "live", NOW + 1000)
    clock.now += 100  # old-1 expired more than the leeway ago; live has not
    assert rows() == ["live", "old-1"]
    assert jtis.remember("iss", "old-1", int(clock.now) + 300) is True  # an expired row is taken over
    assert jtis.remember("iss", "old-1", int(clock.now) + 300) is False
    assert jtis.remember("iss", "new", NOW + 1000)  # the third new entry purges
    assert jtis.remember("iss", "gone", NOW + 110)
    clock.now += 40  # gone: expired 30 s ago, within the leeway: still refused
    assert jtis.remember("iss", "gone", NOW + 500) is False
    clock.now += 2000
    assert jtis.purge() == 4 and rows() == []


def test_jti_store_chosen_by_setting(database, tmp_path):
    store = jti_store_for("sqlite", tmp_path / "jti.sqlite3", leeway=60)
    assert isinstance(store, SqliteJtiStore) and store.path == tmp_path / "jti.sqlite3"
    if isinstance(database, str):
        assert isinstance(jti_store_for(database, tmp_path / "unused", leeway=60), PostgresJtiStore)
        assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------------- SQLite only

def test_each_thread_has_its_own_sqlite_connection_and_sees_committed_rows(tmp_path):
    store = Store(tmp_path / "audit.sqlite3")
    seen: dict[str, object] = {}

    def worker():
        seen["db"] = store.db.connections.get()
        store.record_hook_call(hook_instance="from-thread", service="s", status_code=200, outcome="cards",
                               latency_ms=1.0)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["db"] is not store.db.connections.get()
    assert store.db.connections.get() is store.db.connections.get()  # kept, not reopened per operation
    assert [r["hook_instance"] for r in store.hook_calls()] == ["from-thread"]


def test_a_forked_child_opens_its_own_sqlite_connection(tmp_path, monkeypatch):
    connections = Connections(tmp_path / "x.sqlite3")
    parent = connections.get()
    monkeypatch.setattr(sqlite_backend.os, "getpid", lambda: -1)  # as if in a child after fork
    child = connections.get()
    assert child is not parent
    assert parent in sqlite_backend._inherited  # kept, not closed: the parent may still be using the file
    assert connections.get() is child


def test_sqlite_feedback_is_written_with_full_sync_and_the_audit_with_normal(tmp_path):
    # Set once per kept connection, not on every call: FULL (2) for what the EHR is told
    # is stored, NORMAL (1) for the audit.
    store = Store(tmp_path / "audit.sqlite3")
    store.record_feedback("s", [feedback_item()])
    store.record_hook_call(hook_instance="h", service="s", status_code=200, outcome="cards", latency_ms=1.0)
    assert store.db.durable_connections.get().execute("PRAGMA synchronous").fetchone() == (2,)
    assert store.db.connections.get().execute("PRAGMA synchronous").fetchone() == (1,)
    assert store.db.connections.get().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert len(store.feedback()) == 1 and len(store.hook_calls()) == 1


def test_a_sqlite_file_from_before_the_schema_version_keeps_its_rows(tmp_path):
    # The layout of the releases before migrations: the same tables, no schema_version.
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE card (uuid TEXT PRIMARY KEY, hook_instance TEXT NOT NULL, trial TEXT NOT NULL,
                definition_version TEXT NOT NULL, status TEXT NOT NULL, suggestions TEXT, created_at TEXT NOT NULL);
            CREATE TABLE feedback (id INTEGER PRIMARY KEY, service TEXT NOT NULL, card TEXT NOT NULL,
                outcome TEXT NOT NULL, outcome_timestamp TEXT NOT NULL, accepted_suggestions TEXT,
                override_system TEXT, override_code TEXT, has_comment INTEGER NOT NULL DEFAULT 0,
                known_card INTEGER NOT NULL, received_at TEXT NOT NULL,
                UNIQUE (service, card, outcome, outcome_timestamp));
            INSERT INTO feedback (service, card, outcome, outcome_timestamp, accepted_suggestions, known_card,
                received_at) VALUES ('s', 'u1', 'accepted', '2026-06-15T14:02:10Z', '["s1"]', 0, 'then');
        """)
    db.close()
    store = Store(path)
    assert [(r["card"], r["accepted_suggestions"]) for r in store.feedback()] == [("u1", ["s1"])]
    assert store.record_feedback("s", [feedback_item()]) == 0  # the old row still counts as stored
    assert store.db.rows("SELECT version FROM schema_version") == [{"version": 1}]


# --------------------------------------------------------------------------- PostgreSQL only

def test_postgres_feedback_commits_synchronously_and_the_audit_asynchronously(postgres_url):
    db = PostgresDatabase(postgres_url)
    try:
        with db.transaction(durable=True) as tx:
            assert tx.execute("SHOW synchronous_commit").fetchone() == ("on",)
        with db.transaction() as tx:
            assert tx.execute("SHOW synchronous_commit").fetchone() == ("off",)
        assert db.rows("SHOW synchronous_commit") == [{"synchronous_commit": "on"}]  # SET LOCAL ended with it
        assert db.rows("SHOW statement_timeout") == [{"statement_timeout": "5s"}]
    finally:
        db.close()


def test_a_forked_child_opens_its_own_postgres_pool(postgres_url, monkeypatch):
    db = PostgresDatabase(postgres_url)
    try:
        parent = db.pool()
        monkeypatch.setattr(postgres_backend.os, "getpid", lambda: -1)  # as if in a child after fork
        child = db.pool()
        assert child is not parent and parent in postgres_backend._inherited and not parent.closed
        assert db.pool() is child and db.rows("SELECT 1 AS one") == [{"one": 1}]
    finally:
        db.close()
        monkeypatch.undo()
        postgres_backend._inherited.remove(parent)
        parent.close()


def test_the_pool_is_bounded_and_a_wait_for_it_is_bounded(postgres_url, monkeypatch):
    monkeypatch.setattr(postgres_backend, "POOL_TIMEOUT", 0.2)
    db = PostgresDatabase(postgres_url, pool_size=2)
    try:
        with db.pool().connection(), db.pool().connection():
            with pytest.raises(db.errors):  # PoolTimeout: both connections are taken
                db.rows("SELECT 1")
        assert db.pool().get_stats()["pool_max"] == 2
        assert db.rows("SELECT 1 AS one") == [{"one": 1}]
    finally:
        db.close()


def test_connections_the_server_dropped_are_replaced_before_use(postgres_url, separate):
    clock = Clock(time.time())
    jtis = DatabaseJtiStore(separate(postgres_url), clock=clock)
    assert jtis.remember("iss", "before", int(clock.now) + 300)
    with jtis.db.pool().connection(), jtis.db.pool().connection():
        pass  # two pooled connections
    terminate_sessions(postgres_url)
    assert jtis.remember("iss", "after", int(clock.now) + 300) is True  # no request pays for the dead ones
    assert jtis.remember("iss", "after", int(clock.now) + 300) is False


def test_a_database_that_does_not_answer_fails_closed_within_the_statement_timeout(postgres_url, separate,
                                                                                  monkeypatch):
    monkeypatch.setattr(postgres_backend, "STATEMENT_TIMEOUT_MS", 300)
    clock = Clock(time.time())
    jtis = DatabaseJtiStore(separate(postgres_url), clock=clock)
    with table_locked(postgres_url, "jti"):
        with pytest.raises(ReplayStoreUnavailable, match="QueryCanceled"):
            jtis.remember("iss", "while-locked", int(clock.now) + 300)
    assert jtis.remember("iss", "while-locked", int(clock.now) + 300) is True  # nothing was recorded
