"""The eligibility engine: pure functions from FHIR resources and a date to a
per-criterion evaluation. No Flask, no network, no clock.

Outer layers import from here only (tests/test_engine_purity.py checks it): the
names below are the engine's public API; its modules are its own business."""

from .codes import CodeEntry, CodeSet, Provenance, canonical_system, coding_key, system_name
from .definition import RULE_KINDS, TrialDefinition
from .evaluate import Trial, evaluate
from .model import (CriterionResult, Evidence, Measured, Order, Result, Role, Status, TrialEvaluation, UpperLimit, Why,
                    shown_number, shown_recorded, shown_text)
from .quantities import UnitBridge, UnitTable, is_ucum
from .record import Cut, PatientRecord, code_element, type_and_id
from .validation import FHIR_ID, error_message, error_path, is_fhir_id, validations_done
from .rules.base import CodeLibrary, codeset_fields
from .rules.readers import instant_rank, newest_first, raw_observation_rank, sorted_newest_first

__all__ = [
    # evaluating
    "Trial", "evaluate", "PatientRecord", "Cut", "validations_done",
    # what an evaluation says
    "TrialEvaluation", "CriterionResult", "Evidence", "Measured", "UpperLimit", "Order", "Result", "Role", "Status",
    "Why", "shown_number", "shown_recorded", "shown_text",
    # trial definitions, code sets and units (read by the loader, the terminology client, the data needs)
    "TrialDefinition", "RULE_KINDS", "CodeLibrary", "CodeSet", "CodeEntry", "Provenance", "canonical_system",
    "coding_key", "codeset_fields", "system_name", "UnitTable", "UnitBridge", "is_ucum",
    # reading FHIR dates and references as the engine does (data access uses the same rules)
    "FHIR_ID", "is_fhir_id", "error_message", "error_path", "type_and_id", "code_element", "instant_rank", "newest_first", "raw_observation_rank", "sorted_newest_first",
]
