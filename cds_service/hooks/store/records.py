"""The records kept in the service's database: the audit of every hook call (its
cards included) and the feedback on cards. Nothing here holds PHI or tokens: hook
calls are keyed by hookInstance, cards by uuid, and free-text feedback comments are
not kept (only whether there was one)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from werkzeug.exceptions import ServiceUnavailable

from .database import database_for
from .migrations import Migrations

log = logging.getLogger("cds_service.store")

#: The store's migrations (migrations.py): the audit of hook calls, their cards, and the feedback.
STORE_MIGRATIONS: Migrations = (
    (1, (
        """CREATE TABLE IF NOT EXISTS hook_call (
            id {id},
            hook_instance TEXT NOT NULL,
            service TEXT NOT NULL,
            received_at TEXT NOT NULL,
            status_code INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL,
            data_sources {json},  -- prefetch key -> source, counts, why
            trials {json},        -- [{{trial, definitionVersion, status, card}}]
            timings {json}        -- phase -> ms
        )""",
        "CREATE INDEX IF NOT EXISTS hook_call_instance ON hook_call (hook_instance)",
        """CREATE TABLE IF NOT EXISTS card (
            uuid TEXT PRIMARY KEY,
            hook_instance TEXT NOT NULL,
            trial TEXT NOT NULL,
            definition_version TEXT NOT NULL,
            status TEXT NOT NULL,
            suggestions {json},   -- list of suggestion uuids
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS feedback (
            id {id},
            service TEXT NOT NULL,
            card TEXT NOT NULL,
            outcome TEXT NOT NULL,
            outcome_timestamp TEXT NOT NULL,
            accepted_suggestions {json},
            override_system TEXT,
            override_code TEXT,
            has_comment INTEGER NOT NULL DEFAULT 0,
            known_card INTEGER NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (service, card, outcome, outcome_timestamp)
        )""",
    )),
)

_JSON_COLUMNS = ("data_sources", "trials", "timings", "suggestions", "accepted_suggestions")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _json(value: Any) -> str | None:
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if value else None


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns as Python values: SQLite keeps them as text,
    PostgreSQL (JSONB) hands them over parsed."""
    for name in _JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


class StoreUnavailable(ServiceUnavailable):
    """Feedback could not be stored (the database is unreachable, or failed): the
    client gets a 503 OperationOutcome instead of its 200, and sends it again."""

    description = "the feedback could not be stored now; send it again"


def _unavailable(operation: str, exc: BaseException) -> None:
    # The class only: a database error's message may quote the values it was given.
    log.error(json.dumps({"event": "store", "outcome": "unavailable", "operation": operation,
                          "error": type(exc).__name__}, separators=(",", ":")))


class Store:
    """Feedback and the audit, in a SQLite file (a path) or PostgreSQL (a postgresql:// URL)."""

    def __init__(self, target: str | Path):
        # SQLite: WAL + NORMAL survives a crash of the process: enough for the audit. Feedback is
        # acknowledged to the EHR, so it is written durably (FULL; synced before the 200).
        self.db = database_for(target, synchronous="NORMAL")
        self.db.migrate("store", STORE_MIGRATIONS)

    def ping(self) -> None:
        self.db.rows("SELECT 1 FROM hook_call LIMIT 1")

    def record_hook_call(self, *, hook_instance: str, service: str, status_code: int, outcome: str,
                         latency_ms: float, data_sources: dict[str, Any] | None = None,
                         trials: list[dict[str, Any]] | None = None, timings: dict[str, float] | None = None,
                         cards: Iterable[dict[str, Any]] = ()) -> None:
        """Written after the response has gone out: a failure is logged, not raised."""
        try:
            self._record_hook_call(hook_instance, service, status_code, outcome, latency_ms, data_sources, trials,
                                   timings, cards)
        except self.db.errors as exc:
            _unavailable("audit", exc)

    def _record_hook_call(self, hook_instance, service, status_code, outcome, latency_ms, data_sources, trials,
                          timings, cards) -> None:
        now = _now()
        with self.db.transaction() as db:
            db.execute("INSERT INTO hook_call (hook_instance, service, received_at, status_code, outcome, "
                       "latency_ms, data_sources, trials, timings) VALUES (?,?,?,?,?,?,?,?,?)",
                       (hook_instance, service, now, status_code, outcome, round(latency_ms, 2),
                        _json(data_sources), _json(trials), _json(timings)))
            for card in cards:
                db.execute("INSERT INTO card (uuid, hook_instance, trial, definition_version, status, "
                           "suggestions, created_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                           (card["uuid"], hook_instance, card["trial"], card["definitionVersion"], card["status"],
                            _json(card.get("suggestions")), now))

    def record_feedback(self, service: str, items: list[dict[str, Any]]) -> int:
        """Store feedback entries; repeats of the same entry are stored once.
        Returns how many were new. Committed durably before returning; StoreUnavailable
        (a 503) when it could not be."""
        try:
            return self._record_feedback(service, items)
        except self.db.errors as exc:
            _unavailable("feedback", exc)
            raise StoreUnavailable() from None

    def _record_feedback(self, service: str, items: list[dict[str, Any]]) -> int:
        now = _now()
        new = 0
        with self.db.transaction(durable=True, immediate=True) as db:
            for item in items:
                known = db.execute("SELECT 1 FROM card WHERE uuid = ?", (item["card"],)).fetchone() is not None
                reason = (item.get("overrideReason") or {}).get("reason") or {}
                cursor = db.execute(
                    "INSERT INTO feedback (service, card, outcome, outcome_timestamp, "
                    "accepted_suggestions, override_system, override_code, has_comment, known_card, received_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (service, item["card"], item["outcome"], item["outcomeTimestamp"],
                     _json([s["id"] for s in item.get("acceptedSuggestions", [])]), reason.get("system"),
                     reason.get("code"), int(bool((item.get("overrideReason") or {}).get("userComment"))),
                     int(known), now))
                new += cursor.rowcount
        return new

    def feedback(self) -> list[dict[str, Any]]:
        return [_decoded(r) for r in self.db.rows("SELECT * FROM feedback ORDER BY id")]

    def hook_calls(self) -> list[dict[str, Any]]:
        return [_decoded(r) for r in self.db.rows("SELECT * FROM hook_call ORDER BY id")]
