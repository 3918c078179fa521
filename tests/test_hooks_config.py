"""Configuration from the environment, and discovery derived from trial files."""

import datetime as dt
from pathlib import Path

import pytest

from cds_service.engine.codes import coding_key
from cds_service.fhir.queries import Read, Search
from cds_service.hooks.config import ConfigError, Settings
from cds_service.hooks.discovery import data_needs
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
    for env, name in (({"CDS_SHOW_INELIGIBLE": "maybe"}, "CDS_SHOW_INELIGIBLE"),
                      ({"CDS_FHIR_DEADLINE": "0"}, "CDS_FHIR_DEADLINE"),
                      ({"CDS_EVALUATION_DATE": "15/06/2026"}, "CDS_EVALUATION_DATE"),
                      ({"CDS_ALLOWED_FHIR_SERVERS": "ftp://x"}, "CDS_ALLOWED_FHIR_SERVERS"),
                      # nan passes every `<` check and would switch the skew check off
                      ({"CDS_JWT_LEEWAY": "nan"}, "CDS_JWT_LEEWAY"),
                      ({"CDS_JWT_MAX_LIFETIME": "inf"}, "CDS_JWT_MAX_LIFETIME"),
                      ({"CDS_JWT_MAX_LIFETIME": "30"}, "CDS_JWT_MAX_LIFETIME")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env)


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
