"""Every patient in the HL7 mCODE 4.0.0 examples (real shapes; none has
leptomeningeal disease) evaluates without error and comes out ineligible."""

import datetime as dt
from pathlib import Path

import pytest

from cds_service.engine import PatientRecord, Result, Status, evaluate
from cds_service.fhir.bundles import group_by_patient, parse_fhir_json

EXAMPLES = Path(__file__).parent / "fixtures" / "mcode-4.0.0"
AS_OF = dt.date(2026, 6, 15)


def _groups():
    loose = []
    for path in sorted(EXAMPLES.glob("*.json")):
        if not path.name.startswith("Bundle-"):
            loose += parse_fhir_json(path.read_bytes())
    groups = [("loose files", g) for g in group_by_patient(loose)]
    for path in sorted(EXAMPLES.glob("Bundle-*.json")):
        groups += [(path.name, g) for g in group_by_patient(parse_fhir_json(path.read_bytes()))]
    return groups


GROUPS = _groups()


def test_all_seven_example_patients_are_found():
    keys = {g.patient_key for _, g in GROUPS}
    assert len(keys) == 7


@pytest.mark.parametrize("source, group", GROUPS, ids=[f"{s}:{g.patient_key}" for s, g in GROUPS])
def test_example_patient_is_ineligible_for_lack_of_lm(nct06462092, source, group):
    evaluation = evaluate(nct06462092, PatientRecord(group.resources, group.full_urls), AS_OF)
    assert evaluation.status is Status.INELIGIBLE
    assert evaluation.criterion("leptomeningeal-metastases").result is Result.FAIL
    assert len(evaluation.criteria) == 16


def test_jenny_m_reads_her2_from_the_overall_interpretation(nct06462092):
    jenny = next(g for s, g in GROUPS if s.startswith("Bundle-mcode-patient-bundle-jenny-m"))
    evaluation = evaluate(nct06462092, PatientRecord(jenny.resources, jenny.full_urls), AS_OF)
    her2 = evaluation.criterion("her2-negative")
    assert her2.result is Result.PASS and "48676-1" in her2.evidence[0].code
    assert evaluation.criterion("breast-cancer").result is Result.PASS
    assert evaluation.criterion("neutrophils").result is Result.UNKNOWN  # 2018 result: stale
