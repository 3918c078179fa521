"""The one CDS service this server offers, derived from the enabled trial
definitions, with the FHIR data it needs (fhir/needs.py) as prefetch templates."""

from __future__ import annotations

from ..engine import Trial
from ..fhir.needs import DataNeed, data_needs
from .wire import CdsService

SERVICE_ID = "trial-eligibility"
HOOK = "patient-view"
__all__ = ["SERVICE_ID", "HOOK", "DataNeed", "data_needs", "service_description"]


def service_description(trials: list[Trial], needs: list[DataNeed]) -> CdsService:
    names = "; ".join(f"{t.id} ({t.definition.short_title})" for t in trials)
    required = ", ".join(dict.fromkeys(n.resource_type for n in needs if n.required))
    return {
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "Clinical trial eligibility",
        "description": (f"Screens the patient in context for the clinical trials this site runs and shows, "
                        f"criterion by criterion, why the patient may qualify or what data is missing. "
                        f"Trials: {names}." if trials else "Screens the patient for clinical trials (none enabled)."),
        "prefetch": {n.key: n.query.prefetch_template() for n in needs},
        "usageRequirements": (f"Needs the patient's {required} (prefetch, or fhirServer on the service's "
                              f"allowlist with fhirAuthorization granting read access). Patient ids are FHIR "
                              f"logical ids."),
    }
