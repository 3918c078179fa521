"""The eligibility engine: pure functions from FHIR resources and a date to a
per-criterion evaluation. No Flask, no network, no clock."""

from .evaluate import Trial, evaluate
from .model import CriterionResult, Evidence, Result, Status, TrialEvaluation, Why
from .record import Cut, PatientRecord

__all__ = ["Trial", "evaluate", "PatientRecord", "Cut", "TrialEvaluation", "CriterionResult", "Evidence", "Result",
           "Status", "Why"]
