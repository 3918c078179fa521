"""The one CDS service this server offers, and the FHIR data it needs, both
derived from the enabled trial definitions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..engine.evaluate import Trial
from ..fhir.queries import Query, Read, Search

SERVICE_ID = "trial-eligibility"
HOOK = "patient-view"

# Per resource type: the prefetch key, whether the evaluation cannot go on
# without it, how its resources are selected, and how they are ordered.
_KEYS = {
    "Patient": ("patient", True),
    "Condition": ("conditions", True),
    "Observation": ("observations", True),
    "AllergyIntolerance": ("allergies", True),
    "DiagnosticReport": ("cytologyReports", False),
    "Specimen": ("specimens", False),
}
_CODE_PARAM = {"Observation": "code", "Condition": "code", "DiagnosticReport": "code", "Specimen": "type"}
_SORTED_BY_DATE = {"Observation", "DiagnosticReport"}


@dataclass(frozen=True)
class DataNeed:
    key: str  # prefetch key
    resource_type: str
    query: Query
    required: bool  # without it the hook answers 412
    newest_first: bool = False  # sorted by -date: a cut (page limit, deadline) drops only the oldest


def data_needs(trials: Iterable[Trial], page_size: int = 100) -> list[DataNeed]:
    """One query per resource type any criterion reads. A search is restricted to
    the codes criteria use when every code set is a list of exact codes; a set
    with prefixes (ICD-10-CM C50.*) cannot be written as a token search, so that
    type is fetched whole."""
    wanted_by_type: dict[str, set[tuple[str, str]] | None] = {}  # None: every resource of the type
    for trial in trials:
        for criterion in trial.definition.criteria:
            for rtype, names in criterion.rule.reads().items():
                if rtype not in _KEYS:
                    raise ValueError(f"criterion {criterion.id} reads {rtype}, which the service does not fetch")
                wanted = _exact_codes(trial, names)
                if rtype in wanted_by_type:
                    current = wanted_by_type[rtype]
                    wanted = None if current is None or wanted is None else current | wanted
                wanted_by_type[rtype] = wanted
    needs = []
    for rtype, (key, required) in _KEYS.items():
        if rtype not in wanted_by_type:
            continue
        if rtype == "Patient":
            needs.append(DataNeed(key, rtype, Read("Patient"), required))
            continue
        params: list[tuple[str, str]] = []
        wanted = wanted_by_type[rtype]
        if wanted:
            params.append((_CODE_PARAM[rtype], ",".join(f"{s}|{c}" for s, c in sorted(wanted))))
        if rtype in _SORTED_BY_DATE:
            params.append(("_sort", "-date"))
        params.append(("_count", str(page_size)))
        needs.append(DataNeed(key, rtype, Search(rtype, tuple(params)), required, rtype in _SORTED_BY_DATE))
    return needs


def _exact_codes(trial: Trial, names: list[str]) -> set[tuple[str, str]] | None:
    if not names:
        return None
    codes: set[tuple[str, str]] = set()
    for name in names:
        codeset = trial.library.sets[name]
        if codeset.prefixes:
            return None
        codes |= {(e.system, e.code) for e in codeset.entries}
    return codes


def service_description(trials: list[Trial], needs: list[DataNeed]) -> dict[str, Any]:
    names = "; ".join(f"{t.id} ({t.definition.short_title})" for t in trials)
    required = ", ".join(n.resource_type for n in needs if n.required)
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
