"""FHIR dates as day intervals, look-back windows, age; code matching."""

import datetime as dt

import pytest
from fhir.resources.R4B.observation import Observation

from cds_service.engine.codes import ICD10CM, LOINC, CodeEntry, CodeSet, coding_key
from cds_service.engine.dates import Recency, age_on, age_range, parse_fhir_date, recency
from cds_service.engine.record import PatientRecord

AS_OF = dt.date(2026, 6, 15)


def _fhir_datetime(text):
    """What fhir.resources hands the engine for an effectiveDateTime."""
    obs = Observation.model_validate({"resourceType": "Observation", "status": "final",
                                      "code": {"text": "x"}, "effectiveDateTime": text})
    return parse_fhir_date(obs.effectiveDateTime)


@pytest.mark.parametrize("text, expected", [
    ("2026-05-18", Recency.FRESH),  # exactly 28 days: inclusive
    ("2026-05-17", Recency.STALE),
    ("2026-06-15", Recency.FRESH),
    ("2026-06-16", Recency.FUTURE),
    ("2026-05", Recency.IMPRECISE),  # could be 1 May (stale) or 31 May (fresh)
    ("2026-06", Recency.IMPRECISE),  # could be after the evaluation date
    ("2025", Recency.STALE),
    ("2026-05-18T00:30:00+09:00", Recency.FRESH),  # 17 May in UTC, but 18 May where it was taken
    ("2026-05-17T23:30:00-05:00", Recency.STALE),  # 18 May in UTC, but 17 May where it was taken
])
def test_recency_in_local_calendar_days(text, expected):
    assert recency(_fhir_datetime(text), AS_OF, 28) is expected


def test_partial_dates_are_intervals():
    d = parse_fhir_date("2024-02")
    assert (d.first_day, d.last_day) == (dt.date(2024, 2, 1), dt.date(2024, 2, 29))
    assert parse_fhir_date("1970").last_day == dt.date(1970, 12, 31)
    assert parse_fhir_date("not a date") is None
    assert parse_fhir_date("2024-13") is None


def test_offset_aware_instants_order_by_utc():
    early = _fhir_datetime("2026-06-01T10:00:00+02:00")  # 08:00Z
    late = _fhir_datetime("2026-06-01T09:00:00Z")
    assert early.sort_key() < late.sort_key()


@pytest.mark.parametrize("birth, on, age", [
    ("2008-06-15", "2026-06-15", 18),  # 18th birthday
    ("2008-06-16", "2026-06-15", 17),  # the day before
    ("2008-06-14", "2026-06-15", 18),
    ("1950-06-16", "2026-06-15", 75),  # day before the 76th birthday: still 75
    ("1950-06-15", "2026-06-15", 76),
    ("2004-02-29", "2026-02-28", 21),  # leap-day birthday: not yet in a common year
    ("2004-02-29", "2026-03-01", 22),
    ("2004-02-29", "2028-02-29", 24),
])
def test_age_in_completed_years(birth, on, age):
    assert age_on(dt.date.fromisoformat(birth), dt.date.fromisoformat(on)) == age


def test_age_range_of_a_partial_birth_date():
    assert age_range(parse_fhir_date("1951"), AS_OF) == (74, 75)
    assert age_range(parse_fhir_date("1970"), AS_OF) == (55, 56)
    assert age_range(parse_fhir_date("1970-01"), AS_OF) == (56, 56)


ICD = CodeSet("x", "x", [
    CodeEntry(ICD10CM, "C79.32", None, "LM", "test"),
    CodeEntry(ICD10CM, None, "C50", "breast", "test"),
    CodeEntry(LOINC, "2106-3", None, "hCG urine", "test"),
])


@pytest.mark.parametrize("system, code, matches", [
    (ICD10CM, "C79.32", True),
    (ICD10CM, "C7932", True),  # undotted
    (ICD10CM, "c79.32", True),
    (ICD10CM, "C79.31", False),
    (ICD10CM, "C50.912", True),  # prefix
    (ICD10CM, "C50912", True),
    (ICD10CM, "C79.81", False),  # secondary neoplasm OF the breast
    ("urn:oid:2.16.840.1.113883.6.90", "C50.911", True),  # ICD-10-CM by OID
    ("http://hl7.org/fhir/sid/icd-10", "C50.9", False),  # WHO ICD-10 is another system
    (LOINC, "2106-3", True),
    ("urn:oid:2.16.840.1.113883.6.238", "2106-3", False),  # CDC race code "White"
    (None, "2106-3", False),  # no system: never matched
    (LOINC, "", False),
])
def test_codes_match_by_system_and_code(system, code, matches):
    assert ICD.contains(coding_key(system, code)) is matches


def test_prefix_matches_are_per_code_set():
    other = CodeSet("y", "y", [CodeEntry(ICD10CM, None, "C79", "secondary", "test")])
    key = coding_key(ICD10CM, "C79.81")
    for _ in range(2):  # asked twice: the same answer, and per set
        assert ICD.contains(key) is False
        assert other.contains(key) is True


def _obs(rid, *codings, components=()):
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": s, "code": c} for s, c in codings]},
            "component": [{"code": {"coding": [{"system": s, "code": c}]}} for s, c in components]}


def test_record_finds_each_match_once_in_record_order():
    hcg = CodeSet("hcg", "hcg", [CodeEntry(LOINC, "2106-3", None, "hCG", "test"),
                                 CodeEntry(LOINC, "2107-1", None, "hCG other", "test")])
    record = PatientRecord([
        _obs("panel", ("http://loinc.org", "0-0"), components=[(LOINC, "2107-1"), (LOINC, "2106-3")]),
        _obs("both", (LOINC, "2107-1"), ("urn:oid:2.16.840.1.113883.6.1", "2106-3")),  # two codings, one resource
        _obs("other", (LOINC, "751-8")),
        _obs("dx", (ICD10CM, "C50912")),
    ])
    found = [(h.raw["id"], h.component) for h in record.find("Observation", hcg)]
    assert found == [("panel", 0), ("panel", 1), ("both", None)]
    breast = CodeSet("breast", "breast", [CodeEntry(ICD10CM, None, "C50", "breast", "test")])
    assert [h.raw["id"] for h in record.find("Observation", breast)] == ["dx"]  # prefix C50, undotted code
    assert record.find("Condition", hcg) == []
    first = record.find("Observation", hcg)
    first.clear()  # callers get their own list: the remembered answer is untouched
    assert len(record.find("Observation", hcg)) == 3


def test_record_finds_a_concept_coded_twice_alike_once():
    anc = CodeSet("anc", "anc", [CodeEntry(LOINC, "751-8", None, "ANC", "test")])
    # The same code twice (once with the OID spelling of LOINC) in one concept, and in a component.
    record = PatientRecord([
        _obs("twice", (LOINC, "751-8"), ("urn:oid:2.16.840.1.113883.6.1", "751-8"), components=[(LOINC, "751-8")]),
        _obs("once", (LOINC, "751-8")),
    ])
    assert [(h.raw["id"], h.component) for h in record.find("Observation", anc)] == \
        [("twice", None), ("twice", 0), ("once", None)]


def test_code_library_gives_one_union_for_a_list_an_equal_list_and_single_names():
    from cds_service.engine.rules.base import CodeLibrary

    other = CodeSet("y", "y", [CodeEntry(ICD10CM, None, "C79", "secondary", "test")])
    library = CodeLibrary({"x": ICD, "y": other})
    names = ["x", "y"]
    both = library.get(names)
    assert library.get(names) is both  # asked again with the same list
    assert library.get(["x", "y"]) is both  # an equal list of names: the same union
    assert library.get("y") is other and library.get(["y"]) is other
    assert both.contains(coding_key(ICD10CM, "C79.81")) and both.contains(coding_key(LOINC, "2106-3"))


def test_equal_instants_in_other_offsets_stay_other_days():
    # Parsed dates are shared between calls; an instant equal to one seen before, but recorded
    # in another offset, is another local day and another text.
    evening = dt.datetime(2026, 6, 8, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    utc = dt.datetime(2026, 6, 9, 4, 30, tzinfo=dt.timezone.utc)
    assert evening == utc and hash(evening) == hash(utc)
    for _ in range(2):
        first, second = parse_fhir_date(evening), parse_fhir_date(utc)
        assert (first.first_day, first.text) == (dt.date(2026, 6, 8), "2026-06-08T23:30:00-05:00")
        assert (second.first_day, second.text) == (dt.date(2026, 6, 9), "2026-06-09T04:30:00+00:00")
        assert parse_fhir_date(evening.replace(microsecond=1)).text == "2026-06-08T23:30:00.000001-05:00"


def _found_by_scanning(resources, resource_type, codes):
    """Reference for PatientRecord.find: every resource scanned, in record order."""
    found = []
    for position, raw in enumerate(resources):
        if not isinstance(raw, dict) or raw.get("resourceType") != resource_type:
            continue
        concepts = [(None, raw.get("code"))]
        parts = raw.get("component") if resource_type == "Observation" else None
        if isinstance(parts, list):
            concepts += [(i, p.get("code") if isinstance(p, dict) else None) for i, p in enumerate(parts)]
        for component, concept in concepts:
            codings = concept.get("coding") if isinstance(concept, dict) else None
            if isinstance(codings, list) and any(
                    isinstance(c, dict) and codes.contains(coding_key(c.get("system"), c.get("code")))
                    for c in codings):
                found.append((position, component))
    return found


@pytest.mark.parametrize("seed", range(40))
def test_record_index_finds_what_scanning_finds_in_odd_shapes(seed):
    # Resources as EHRs and broken interfaces send them: codings repeated, in components, and
    # every part of the path missing, null or of the wrong JSON type.
    import random

    rng = random.Random(seed)
    anc = CodeSet("anc", "anc", [CodeEntry(LOINC, "751-8", None, "ANC", "test")])
    breast = CodeSet("breast", "breast", [CodeEntry(ICD10CM, None, "C50", "breast", "test")])
    odd = [None, "text", 7, [], {}, ["x"]]

    def coding():
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(odd)
        return {"system": rng.choice([LOINC, "urn:oid:2.16.840.1.113883.6.1", ICD10CM, None, ["x"]]),
                "code": rng.choice(["751-8", "C50.912", "C50912", "777-3", None, 5])}

    def concept():
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(odd)
        return {"coding": [coding() for _ in range(rng.randint(0, 3))] if rng.random() < 0.9 else rng.choice(odd)}

    def resource(i):
        if rng.random() < 0.05:
            return rng.choice(odd)
        raw = {"resourceType": rng.choice(["Observation", "Observation", "Condition", "Patient", ["x"], None]),
               "id": f"r{i}"}
        if rng.random() < 0.9:
            raw["code"] = concept()
        if rng.random() < 0.3:
            raw["component"] = [{"code": concept()} if rng.random() < 0.8 else rng.choice(odd)
                                for _ in range(rng.randint(0, 3))] if rng.random() < 0.9 else rng.choice(odd)
        return raw

    resources = [resource(i) for i in range(30)]
    record = PatientRecord(resources)
    for rtype in ("Observation", "Condition"):
        for codes in (anc, breast):
            got = [(h.position, h.component) for h in record.find(rtype, codes)]
            assert got == _found_by_scanning(resources, rtype, codes)
            assert all(resources[h.position] is h.raw for h in record.find(rtype, codes))


@pytest.mark.parametrize("value, ok", [("g001", True), ("a.b-C9", True), ("x" * 64, True), ("x" * 65, False),
                                       ("g001\n", False), ("", False), ("a/b", False), ("a b", False), (7, False)])
def test_a_fhir_id_is_read_one_way_everywhere(value, ok):
    # The hook request's ids, the card's links and the FHIR client's searches all use this one reading.
    from cds_service.engine import is_fhir_id
    assert is_fhir_id(value) is ok


def test_a_union_matches_what_its_sets_match(trials):
    # Joined from the sets' own look-ups (not normalised again): the same as one set of all their entries.
    from cds_service.engine.codes import union

    sets = [s for trial in trials.values() for s in trial.library.sets.values()]
    joined = union("all", sets)
    built = CodeSet(name="all", title="all", entries=[e for s in sets for e in s.entries],
                    intension=tuple(r for s in sets for r in s.intension))
    assert (joined.exact, joined.prefixes, joined.entries, joined.intension) == \
        (built.exact, built.prefixes, built.entries, built.intension)
    for key in [("http://hl7.org/fhir/sid/icd-10-cm", "C50911"), ("http://loinc.org", "751-8"),
                ("http://hl7.org/fhir/sid/icd-10-cm", "Q99"), ("http://loinc.org", "0-0")]:
        assert joined.contains(key) == built.contains(key) == any(s.contains(key) for s in sets)
