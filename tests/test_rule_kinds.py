"""The registry of rule kinds: a kind is one module in cds_service/engine/rules/, registered by
being defined; what the layers around the engine need of it (the data to fetch, the elements
to validate, where a type keeps its code) follows from its declarations, so a kind that reads a
resource type no other kind reads needs no edit elsewhere."""

from __future__ import annotations

import pkgutil
from types import SimpleNamespace
from typing import Literal

import pytest

import cds_service.engine.rules as rules_package
from cds_service.engine import RULE_KINDS, CodeEntry, CodeSet, PatientRecord, code_element
from cds_service.engine.definition import TrialDefinition
from cds_service.engine.rules.base import RULE_KIND_MODELS, RuleModel
from cds_service.engine.validation import read_elements, validate
from cds_service.fhir.needs import data_needs
from fhirbuild import PATIENT_REF, SNOMED, concept


def test_every_kind_module_is_registered_and_the_definition_union_is_built_from_the_registry():
    modules = {m.name for m in pkgutil.iter_modules(rules_package.__path__)}
    defining = {cls.__module__.rsplit(".", 1)[1] for cls in RULE_KIND_MODELS.values()}
    # Every module of the package defines a kind, but for the shared readers and parts.
    assert modules - defining == {"base", "cytology", "lab_limits", "mentions", "readers"}
    assert RULE_KINDS == tuple(RULE_KIND_MODELS)
    rule_field = TrialDefinition.model_fields["criteria"].annotation.__args__[0].model_fields["rule"]
    union = rule_field.annotation.__args__
    assert set(union) == set(RULE_KIND_MODELS.values())


def test_a_kind_name_can_be_defined_once_only():
    with pytest.raises(TypeError, match="rule kind 'lab' is defined twice"):
        class AnotherLab(RuleModel):  # noqa: F841
            type: Literal["lab"]


def test_parts_of_rules_are_not_kinds():
    class Part(RuleModel):
        codes: list[str] = []

    assert Part not in RULE_KIND_MODELS.values()


def _procedure(code: str, rid: str) -> dict:
    return {"resourceType": "Procedure", "id": rid, "status": "completed", "subject": PATIENT_REF,
            "code": concept((SNOMED, code)), "performedDateTime": "2026-06-01",
            "note": [{"text": "not read"}]}


def test_a_type_no_kind_read_before_is_indexed_validated_and_fetched_without_edits_elsewhere():
    radiotherapy = CodeSet(name="radiotherapy", title="Radiotherapy",
                           entries=[CodeEntry(system=SNOMED, code="108290001", prefix=None, display="Radiation oncology",
                                              source="test")])
    record = PatientRecord([{"resourceType": "Patient", "id": "p1"}, _procedure("108290001", "rt1"),
                            _procedure("80146002", "appendectomy")])
    assert [h.raw["id"] for h in record.find("Procedure", radiotherapy)] == ["rt1"]
    assert record.patient_raw["id"] == "p1"
    # validated on the common elements and what kinds reading it declare (elements_read); never the rest
    raw = _procedure("108290001", "rt1")
    trimmed = read_elements(raw)
    declared = {e for kind in RULE_KIND_MODELS.values() for e in kind.elements_read.get("Procedure", ())}
    assert set(trimmed) == {"resourceType", "id", "status", "subject", "code"} | (declared & set(raw))
    assert "note" not in trimmed
    assert validate("Procedure", trimmed).code.coding[0].code == "108290001"
    # fetched: a query of its own, restricted to the kind's codes, not required
    rule = SimpleNamespace(reads=lambda: {"Procedure": ["radiotherapy"]}, latest_within_days=lambda: None,
                           includes=lambda: {})
    trial = SimpleNamespace(definition=SimpleNamespace(criteria=[SimpleNamespace(id="rt", rule=rule)]),
                            library=SimpleNamespace(sets={"radiotherapy": radiotherapy}))
    (need,) = data_needs([trial])
    assert (need.key, need.resource_type, need.required) == ("procedures", "Procedure", False)
    assert ("code", f"{SNOMED}|108290001") in need.query.params
    assert need.selects(_procedure("108290001", "x")) and not need.selects(_procedure("80146002", "y"))


def test_where_a_type_keeps_its_code_is_declared_by_the_kind_that_reads_it():
    assert code_element("Specimen") == "type"  # declared by condition-present (cytology specimens)
    assert code_element("Observation") == "code"
