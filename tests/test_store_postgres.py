"""The service on PostgreSQL (CDS_DATABASE=postgresql://...): configuration, and
the app's feedback, audit and replay store in one database shared by several
hosts. The store's own tests, on both back ends, are in test_store.py."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.hooks.config import ConfigError, Settings
from cds_service.hooks.replay import PostgresJtiStore, SqliteJtiStore, jti_store_for
from cds_service.hooks.store import postgres as postgres_backend
from cds_service.hooks.store import DatabaseUrl, PostgresDatabase
from conftest import SECRETS
from hookdata import demo
from netutil import free_port
from postgres_server import postgres_url, table_locked  # noqa: F401,F811  (postgres_url: a fixture)

URL = "postgresql://cds:s3cret-pw@db.example.org:5432/cds"
SERVICE = "/cds-services/trial-eligibility"
BASE = "https://cds.example.org"
ISS = "https://ehr.example.org/fhir"
KEY = ec.generate_private_key(ec.SECP384R1())


# --------------------------------------------------------------------------- configuration

def test_a_postgresql_url_selects_postgres_for_records_and_replays():
    s = Settings.from_env({"CDS_DATABASE": URL, "CDS_DATA_DIR": "/var/lib/cds", "CDS_DATABASE_POOL_SIZE": "12"})
    assert isinstance(s.database, DatabaseUrl) and s.database == URL and s.database_path == URL
    assert s.database.pool_size == 12
    assert s.jti_store == URL  # the replay store follows the database unless CDS_JTI_STORE says otherwise
    # What stays on the host: a per-host SQLite replay store, if asked for, goes in the data dir.
    assert s.database_path.with_name("jti.sqlite3") == Path("/var/lib/cds/jti.sqlite3")
    assert Settings.from_env({"CDS_DATABASE": URL, "CDS_JTI_STORE": "sqlite"}).jti_store == "sqlite"
    assert Settings.from_env({"CDS_DATABASE": URL, "CDS_JTI_STORE": "redis://r:6379/0"}).jti_store == "redis://r:6379/0"
    assert Settings.from_env({"CDS_DATABASE": "postgres://h/db"}).database.pool_size == 8  # the libpq alias
    # SQLite stays the default, with the replay store in a file beside the database.
    assert Settings.from_env({}).jti_store == "sqlite" and Settings().jti_store == "sqlite"
    assert Settings.from_env({"CDS_DATABASE": "/srv/cds.sqlite3"}).database == Path("/srv/cds.sqlite3")
    # Settings built in code (tests, the harness) get the same treatment.
    built = Settings(database=URL, jti_store="database")
    assert isinstance(built.database, DatabaseUrl) and built.jti_store is built.database


def test_the_password_never_shows():
    settings = Settings.from_env({"CDS_DATABASE": URL})
    assert "s3cret-pw" not in repr(settings) and "cds:***@db.example.org" in repr(settings)
    assert "s3cret-pw" not in repr(DatabaseUrl("postgresql://db.example.org/cds?user=cds&password=s3cret-pw"))
    assert "s3cret-pw" not in repr(PostgresDatabase(URL))
    for env, name in (({"CDS_DATABASE": "mysql://cds:s3cret-pw@db/cds"}, "CDS_DATABASE"),
                      ({"CDS_JTI_STORE": "memcached://cds:s3cret-pw@cache"}, "CDS_JTI_STORE"),
                      ({"CDS_DATABASE": URL, "CDS_DATABASE_POOL_SIZE": "0"}, "CDS_DATABASE_POOL_SIZE")):
        with pytest.raises(ConfigError, match=name) as raised:
            Settings.from_env(env)
        assert "s3cret-pw" not in str(raised.value)


def test_replay_store_chosen_by_setting(tmp_path):
    assert isinstance(jti_store_for("sqlite", tmp_path / "jti.sqlite3", leeway=60), SqliteJtiStore)


def test_an_unreachable_database_stops_the_start_with_the_reason_and_no_password(make_app):
    import psycopg

    url = f"postgresql://cds:s3cret-pw@127.0.0.1:{free_port()}/cds?connect_timeout=3"
    with pytest.raises(psycopg.OperationalError) as raised:
        make_app(database=url)
    assert "127.0.0.1" in str(raised.value) and "s3cret-pw" not in str(raised.value)


# --------------------------------------------------------------------------- the app on PostgreSQL

def public_jwk(private_key, kid):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    return dict(jwk, kid=kid, alg="ES384", use="sig")


def token(path: str) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": BASE + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode(payload, KEY, algorithm="ES384", headers={"kid": "ehr-1", "typ": "JWT"})


def post(client, path, body, bearer=None):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def all_rows(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
        return json.dumps({t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables}, default=str)


def test_feedback_and_audit_live_in_postgres_and_survive_a_restart(make_app, postgres_url, tmp_path):
    app = make_app(database=postgres_url, data_dir=tmp_path / "data")
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    card = post(client, SERVICE, demo("eligible")).get_json()["cards"][0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z",
            "overrideReason": {"reason": {"code": "already-screened", "system": card["overrideReasons"][0]["system"]},
                               "userComment": "Ada Testpatient declined"}}
    assert post(client, SERVICE + "/feedback", {"feedback": [item]}).get_json() == {"stored": 1, "duplicates": 0}

    another_host = make_app(database=postgres_url, data_dir=tmp_path / "other-host")
    assert post(another_host.test_client(), SERVICE + "/feedback", {"feedback": [item, item]}).get_json() == {
        "stored": 0, "duplicates": 2}
    store = another_host.extensions["trial_eligibility"].store
    (row,) = store.feedback()
    assert row["known_card"] == 1 and row["has_comment"] == 1 and row["override_code"] == "already-screened"
    (call,) = store.hook_calls()
    assert call["outcome"] == "cards" and call["trials"][0]["card"] == card["uuid"]
    assert isinstance(call["data_sources"], dict)
    # Nothing is kept on the hosts themselves, and no PHI in the database.
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    dumped = all_rows(postgres_url)
    assert card["uuid"] in dumped and not [s for s in SECRETS if s in dumped]


def test_a_replayed_token_is_refused_by_another_host(make_app, postgres_url, tmp_path):
    trusted = tmp_path / "trusted-clients.yaml"
    trusted.write_text(yaml.safe_dump({"clients": [{"iss": ISS, "jwks": {"keys": [public_jwk(KEY, "ehr-1")]}}]}))
    hosts = [make_app(database=postgres_url, data_dir=tmp_path / f"host-{n}", trusted_clients=trusted,
                      public_base_url=BASE) for n in range(2)]
    assert isinstance(hosts[0].extensions["cds_authenticator"]._jti_store, PostgresJtiStore)
    once = token(SERVICE)
    assert post(hosts[0].test_client(), SERVICE, demo("eligible"), once).status_code == 200
    replay = post(hosts[1].test_client(), SERVICE, demo("eligible"), once)
    assert replay.status_code == 401
    assert post(hosts[1].test_client(), SERVICE, demo("eligible"), token(SERVICE)).status_code == 200
    assert json.loads(all_rows(postgres_url))["jti"].__len__() == 2
    assert not list(tmp_path.rglob("*.sqlite3"))


def test_without_postgres_binaries_the_tests_skip_locally_and_fail_under_ci(monkeypatch):
    import postgres_server

    monkeypatch.setattr(postgres_server, "binaries", lambda: None)
    monkeypatch.setattr(postgres_server, "_server", [])
    monkeypatch.delenv("CDS_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        postgres_server.base_url(None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CDS_TEST_POSTGRES_URL"):
        postgres_server.base_url(None)


def test_feedback_the_database_could_not_take_is_a_503_and_is_taken_when_sent_again(
        make_app, postgres_url, monkeypatch, no_secrets_in_logs):
    monkeypatch.setattr(postgres_backend, "STATEMENT_TIMEOUT_MS", 300)
    app = make_app(database=postgres_url)
    client = app.test_client()
    item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:03:00Z"}
    with table_locked(postgres_url, "feedback"):  # a database that does not answer in time
        refused = post(client, SERVICE + "/feedback", {"feedback": [item]})
    assert refused.status_code == 503
    assert refused.get_json()["issue"][0]["code"] == "transient"
    assert "send it again" in refused.get_json()["issue"][0]["diagnostics"]
    again = post(client, SERVICE + "/feedback", {"feedback": [item]})
    assert again.status_code == 200 and again.get_json() == {"stored": 1, "duplicates": 0}
    events = [json.loads(line) for line in no_secrets_in_logs.lines if '"store"' in line]
    assert [(e["operation"], e["outcome"], e["error"]) for e in events] == [
        ("feedback", "unavailable", "QueryCanceled")]


def test_an_audit_row_the_database_could_not_take_is_logged_not_raised(make_app, postgres_url, monkeypatch,
                                                                        no_secrets_in_logs):
    monkeypatch.setattr(postgres_backend, "STATEMENT_TIMEOUT_MS", 300)
    app = make_app(database=postgres_url)
    client = app.test_client()
    with table_locked(postgres_url, "hook_call"):
        assert post(client, SERVICE, demo("eligible")).status_code == 200  # the audit is written after the answer
    assert post(client, SERVICE, demo("eligible")).status_code == 200
    assert len(app.extensions["trial_eligibility"].store.hook_calls()) == 1
    events = [json.loads(line) for line in no_secrets_in_logs.lines if '"store"' in line]
    assert [(e["operation"], e["outcome"]) for e in events] == [("audit", "unavailable")]
