"""Configuration from the environment, and discovery derived from trial files."""

import datetime as dt
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cds_service.engine.codes import coding_key
from cds_service.fhir.queries import Read, Search
from cds_service.hooks.config import ConfigError, Settings
from cds_service.hooks.discovery import data_needs
from cds_service.hooks.store import DatabaseUrl
from cds_service.trials import load_trial


def test_defaults_need_no_configuration():
    s = Settings.from_env({})
    assert s.trials == () and s.allowed_fhir_servers == () and not s.show_ineligible
    assert s.database_path == Path(".cds-data/cds-service.sqlite3")
    assert s.evaluation_date is None and s.fhir_deadline == 3.0


def test_settings_are_parsed_and_checked():
    s = Settings.from_env({"CDS_TRIALS": "NCT06462092, TEST-0002", "CDS_SHOW_INELIGIBLE": "yes",
                           "CDS_ALLOWED_FHIR_SERVERS": "https://a.example/fhir, http://127.0.0.1:8081/fhir",
                           "CDS_EVALUATION_DATE": "2026-06-15", "CDS_FHIR_DEADLINE": "1.5",
                           "CDS_CORS_ORIGINS": "https://sandbox.cds-hooks.org"})
    assert s.trials == ("NCT06462092", "TEST-0002") and s.show_ineligible
    assert s.allowed_fhir_servers == ("https://a.example/fhir", "http://127.0.0.1:8081/fhir")
    assert s.evaluation_date == dt.date(2026, 6, 15) and s.fhir_deadline == 1.5
    assert s.cors_origins == ("https://sandbox.cds-hooks.org",)
    assert Settings.from_env({}).jwt_max_lifetime == 3600
    assert Settings.from_env({"CDS_JWT_MAX_LIFETIME": "900"}).jwt_max_lifetime == 900


# Every setting, from its variable, as the hand-written parser before pydantic-settings read it.
FULL_ENV = {
    "CDS_TRIALS": "NCT06462092, TEST-0002", "CDS_ALLOWED_FHIR_SERVERS": "https://a.example/fhir, http://127.0.0.1:81/f",
    "CDS_SHOW_INELIGIBLE": "on", "CDS_DATA_DIR": "/var/lib/cds", "CDS_DATABASE": "postgresql://cds:pw@db.example/cds",
    "CDS_DATABASE_POOL_SIZE": "12", "CDS_FHIR_DEADLINE": "2.5", "CDS_FHIR_PAGE_LIMIT": " 7 ",
    "CDS_FHIR_PAGE_SIZE": "50",
    "CDS_FHIR_CACHE_TTL": "30", "CDS_FHIR_CACHE_BYTES": "1048576", "CDS_FHIR_MAX_RESPONSE_BYTES": "2048",
    "CDS_CORS_ORIGINS": "https://ehr.example.org,", "CDS_CARD_TEMPLATES": "/etc/cds/cards",
    "CDS_EVALUATION_DATE": "2026-06-15", "CDS_MAX_REQUEST_BYTES": "4096", "CDS_TRUSTED_CLIENTS": "/etc/cds/c.yaml",
    "CDS_PUBLIC_BASE_URL": " https://cds.example.org/ ", "CDS_JWT_LEEWAY": "5", "CDS_JWT_MAX_LIFETIME": "600",
    "CDS_JTI_STORE": "redis://r:6379/0", "CDS_TERMINOLOGY_SERVER": "https://TX.example.org/fhir/",
    "CDS_TERMINOLOGY_TIMEOUT": "0.5", "CDS_TERMINOLOGY_CACHE_TTL": "600", "CDS_TERMINOLOGY_CACHE_SIZE": "50",
    "CDS_TERMINOLOGY_MAX_LOOKUPS": "8", "CDS_INSECURE_NO_AUTH": "1"}
FULL = {
    "trials": ("NCT06462092", "TEST-0002"), "allowed_fhir_servers": ("https://a.example/fhir", "http://127.0.0.1:81/f"),
    "show_ineligible": True, "data_dir": Path("/var/lib/cds"), "database": "postgresql://cds:pw@db.example/cds",
    "database_pool_size": 12, "fhir_deadline": 2.5, "fhir_page_limit": 7, "fhir_page_size": 50, "fhir_cache_ttl": 30.0,
    "fhir_cache_bytes": 1048576, "fhir_max_response_bytes": 2048, "cors_origins": ("https://ehr.example.org",),
    "card_templates": Path("/etc/cds/cards"), "evaluation_date": dt.date(2026, 6, 15), "max_request_bytes": 4096,
    "trusted_clients": Path("/etc/cds/c.yaml"), "public_base_url": "https://cds.example.org", "jwt_leeway": 5.0,
    "jwt_max_lifetime": 600.0, "jti_store": "redis://r:6379/0", "terminology_server": "https://tx.example.org/fhir",
    "terminology_timeout": 0.5, "terminology_cache_ttl": 600.0, "terminology_cache_size": 50,
    "terminology_max_lookups": 8, "insecure_no_auth": True}
DEFAULTS = {
    "trials": (), "allowed_fhir_servers": (), "show_ineligible": False, "data_dir": Path(".cds-data"), "database": None,
    "database_pool_size": 8, "fhir_deadline": 3.0, "fhir_page_limit": 20, "fhir_page_size": 100, "fhir_cache_ttl": 60.0,
    "fhir_cache_bytes": 64 * 1024 * 1024, "fhir_max_response_bytes": 20 * 1024 * 1024, "cors_origins": (),
    "card_templates": None, "evaluation_date": None, "max_request_bytes": 20 * 1024 * 1024, "trusted_clients": None,
    "public_base_url": None, "jwt_leeway": 60.0, "jwt_max_lifetime": 3600.0, "jti_store": "sqlite",
    "terminology_server": None, "terminology_timeout": 1.0, "terminology_cache_ttl": 3600.0,
    "terminology_cache_size": 10000, "terminology_max_lookups": 32, "insecure_no_auth": False}


@pytest.mark.parametrize("env,expected", [(FULL_ENV, FULL), ({}, DEFAULTS),
                                          ({name: "  " for name in FULL_ENV}, DEFAULTS)],  # blank = unset
                         ids=["every-variable", "none", "blank"])
def test_every_setting_is_read_from_its_variable(env, expected):
    settings = Settings.from_env(env)
    assert set(expected) == set(Settings.model_fields)
    assert {name: getattr(settings, name) for name in expected} == expected
    assert {name: type(getattr(settings, name)) for name in expected} == {
        name: DatabaseUrl if name == "database" and value else type(value) for name, value in expected.items()}
    if expected is FULL:
        assert (settings.database.local_dir, settings.database.pool_size) == (Path("/var/lib/cds"), 12)
        assert ":pw@" not in repr(settings) and settings.database_path == settings.database


def test_every_setting_has_one_variable_and_one_default(monkeypatch):
    variables = {field.validation_alias for field in Settings.model_fields.values()}
    # each one documented for integrators, in the configuration table's first column
    rows = [line.split("|")[1] for line in (Path(__file__).parents[1] / "docs" / "integration.md").read_text(
        encoding="utf-8").splitlines() if line.startswith("| `CDS_")]
    documented = {v for cell in rows for v in re.findall(r"`(CDS_[A-Z_]+)`", cell)}
    assert variables <= documented, sorted(variables - documented)
    assert "CDS_FHIR_DEADLINE" in variables and len(variables) == len(Settings.model_fields)
    # Settings(...) is what the caller says: the environment is read by from_env only.
    monkeypatch.setenv("CDS_FHIR_DEADLINE", "9")
    assert Settings() == Settings.from_env({}) and Settings().fhir_deadline == 3.0
    assert Settings.from_env().fhir_deadline == 9.0  # os.environ by default
    with pytest.raises(ValidationError, match="frozen"):
        Settings().fhir_deadline = 1.0


@pytest.mark.parametrize("env,message", [
    ({"CDS_SHOW_INELIGIBLE": "maybe"}, "CDS_SHOW_INELIGIBLE: must be 1/0, true/false, yes/no or on/off (got 'maybe')"),
    ({"CDS_FHIR_DEADLINE": "0"}, "CDS_FHIR_DEADLINE: Input should be greater than or equal to 0.1 (got '0')"),
    ({"CDS_FHIR_DEADLINE": "lots"}, "CDS_FHIR_DEADLINE: Input should be a valid number, unable to parse string as a "
                                    "number (got 'lots')"),
    ({"CDS_FHIR_PAGE_LIMIT": "1.5"}, "CDS_FHIR_PAGE_LIMIT: Input should be a valid integer, unable to parse string as "
                                     "an integer (got '1.5')"),
    ({"CDS_FHIR_MAX_RESPONSE_BYTES": "1023"}, "CDS_FHIR_MAX_RESPONSE_BYTES: Input should be greater than or equal to "
                                              "1024 (got '1023')"),
    # nan passes every `<` check and would switch the skew check off
    ({"CDS_JWT_LEEWAY": "nan"}, "CDS_JWT_LEEWAY: Input should be a finite number (got 'nan')"),
    ({"CDS_JWT_MAX_LIFETIME": "inf"}, "CDS_JWT_MAX_LIFETIME: Input should be a finite number (got 'inf')"),
    ({"CDS_JWT_MAX_LIFETIME": "30"}, "CDS_JWT_MAX_LIFETIME: Input should be greater than or equal to 60 (got '30')"),
    ({"CDS_TERMINOLOGY_MAX_LOOKUPS": "-1"}, "CDS_TERMINOLOGY_MAX_LOOKUPS: Input should be greater than or equal to 0 "
                                            "(got '-1')"),
    ({"CDS_EVALUATION_DATE": "15/06/2026"}, "CDS_EVALUATION_DATE: must be YYYY-MM-DD (got '15/06/2026')"),
    ({"CDS_ALLOWED_FHIR_SERVERS": "https://a.example, ftp://x"},
     "CDS_ALLOWED_FHIR_SERVERS: 'ftp://x' is not an http(s) URL"),
    ({"CDS_PUBLIC_BASE_URL": "cds.example.org"},
     "CDS_PUBLIC_BASE_URL: must be the service's http(s) base URL (got 'cds.example.org')"),
    ({"CDS_TRUSTED_CLIENTS": "/etc/cds/clients.yaml"}, "CDS_TRUSTED_CLIENTS: needs CDS_PUBLIC_BASE_URL: a client JWT's "
                                                       "aud must equal the public URL of the endpoint it calls"),
    # a URL may hold a password: not echoed
    ({"CDS_DATABASE": "mysql://cds:s3cret@db/cds"}, "CDS_DATABASE: must be a SQLite file path or a postgresql:// URL"),
    ({"CDS_JTI_STORE": "memcached://cds:s3cret@cache"},
     "CDS_JTI_STORE: must be 'database' (the default), 'sqlite', a postgresql:// URL or a redis:// URL"),
    ({"CDS_TERMINOLOGY_SERVER": "https://cds:s3cret@tx.example.org/fhir"}, "CDS_TERMINOLOGY_SERVER: must be a FHIR "
     "server's plain http(s) base URL (no credentials, query or fragment)"),
    # the first refused setting is named when there are several
    ({"CDS_FHIR_PAGE_SIZE": "0", "CDS_JWT_LEEWAY": "-1"},
     "CDS_FHIR_PAGE_SIZE: Input should be greater than or equal to 1 (got '0')"),
])
def test_a_bad_value_is_one_line_naming_its_variable(env, message):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message


def test_settings_given_by_name_are_checked_the_same_way():
    for settings, message in ((dict(fhir_deadline=0), "CDS_FHIR_DEADLINE: Input should be greater than or equal to"),
                              (dict(trusted_clients=Path("c.yaml")), "CDS_TRUSTED_CLIENTS: needs CDS_PUBLIC_BASE_URL"),
                              (dict(database="mysql://db/cds"), "CDS_DATABASE: must be"),
                              (dict(fhir_dedline=1.0), "fhir_dedline: Extra inputs are not permitted")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            Settings(**settings)
    assert Settings(database="relative.sqlite3").database_path == Path("relative.sqlite3")


def test_data_needs_follow_the_trials(nct06462092):
    second = load_trial(Path(__file__).parent / "trials" / "TEST-0002.yaml")
    needs = {n.key: n for n in data_needs([nct06462092], page_size=50)}
    assert set(needs) == {"patient", "conditions", "labResults", "observations", "allergies", "cytologyReports",
                          "specimens"}
    assert isinstance(needs["patient"].query, Read)
    assert {k for k, n in needs.items() if n.required} == {"patient", "conditions", "labResults", "observations",
                                                          "allergies"}
    # Conditions use ICD-10-CM prefixes (C50.*): not expressible as a token search, so all are fetched
    assert needs["conditions"].query == Search("Condition", (("_count", "50"),)) and needs["conditions"].codes is None
    # Observations in two queries, both newest first: the lab rules' tests, and the rest.
    labs, rest = (dict(needs[k].query.params) for k in ("labResults", "observations"))
    assert labs["_sort"] == rest["_sort"] == "-date" and labs["_count"] == rest["_count"] == "50"
    assert "http://loinc.org|751-8" in labs["code"] and "http://loinc.org|85319-2" in rest["code"]
    assert not set(labs["code"].split(",")) & set(rest["code"].split(","))
    assert needs["labResults"].newest_first and needs["labResults"].codes == frozenset(
        coding_key(*token.split("|")) for token in labs["code"].split(","))
    only_second = {n.key for n in data_needs([second])}
    assert only_second == {"patient", "conditions", "labResults", "observations"}  # no allergy, pregnancy, cytology
    both = {n.key: n for n in data_needs([nct06462092, second])}
    assert dict(both["labResults"].query.params)["code"] == labs["code"]


def test_a_data_need_selects_what_its_query_returns(nct06462092):
    needs = {n.key: n for n in data_needs([nct06462092])}
    anc = {"resourceType": "Observation", "code": {"coding": [
        {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.72", "code": "1502"},  # the EHR's own code first
        {"system": "http://loinc.org", "code": "751-8"}]}}
    her2 = {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "85319-2"}]}}
    creatinine = {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]}}
    assert needs["labResults"].selects(anc) and not needs["observations"].selects(anc)
    assert needs["observations"].selects(her2) and not needs["labResults"].selects(her2)
    assert not any(n.selects(creatinine) for n in needs.values())  # no criterion reads it
    assert needs["conditions"].selects({"resourceType": "Condition"})  # fetched whole
    assert not needs["labResults"].selects({"resourceType": "Observation", "code": "751-8"})  # not a concept


def test_a_lab_history_is_read_back_as_far_as_a_lab_criterion_looks(nct06462092):
    # The lab criteria look back 28 days: once newest-first results reach more than 29 days
    # (a day's margin for offsets) before the evaluation date, older pages cannot decide.
    labs = {n.key: n for n in data_needs([nct06462092])}["labResults"]
    as_of = dt.date(2026, 6, 15)

    def result(when):
        return {"resourceType": "Observation", "effectiveDateTime": when} if when else {"resourceType": "Observation"}

    recent = [result("2026-06-10T08:00:00-04:00"), result("2026-05-20T08:00:00Z")]
    assert labs.lookback_days == 28
    assert not labs.read_enough(recent, as_of)
    assert not labs.read_enough(recent + [result("2026-05-17T00:00:00Z")], as_of)  # within the margin
    assert labs.read_enough(recent + [result("2026-05-16T23:59:59Z")], as_of)
    assert labs.read_enough(recent + [result("2026-05-16T23:59:59Z"), result(None)], as_of)  # undated sort last
    assert labs.read_enough(recent + [result("2026-01-01")], as_of)
    # Not newest first (the server ignored _sort): nothing can be concluded from the order.
    assert not labs.read_enough([result("2026-01-01"), *recent], as_of)
    assert not labs.read_enough([], as_of)
    # The other Observations are read whole: HER2 and hCG of any age count.
    rest = {n.key: n for n in data_needs([nct06462092])}["observations"]
    assert rest.lookback_days is None and not rest.read_enough(recent + [result("2020-01-01")], as_of)
