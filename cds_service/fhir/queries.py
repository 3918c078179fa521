"""A FHIR query about one patient, as data: the same object gives the CDS Hooks
prefetch template (advertised in discovery) and the URL the service fetches
itself when the prefetch key is missing."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import quote, urlencode

PATIENT_TOKEN = "{{context.patientId}}"

_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.-]*$")
# An _include value: SourceType:searchParam[:TargetType] (FHIR R4 search §3.1.1.5.4).
_INCLUDE = re.compile(r"^[A-Z][A-Za-z]+:[a-z][A-Za-z0-9-]*(?::[A-Z][A-Za-z]+)?$")
# Kept readable in query values: the spec's own templates show them unencoded
# (code=http://loinc.org|751-8,...), and FHIR servers accept them as they are.
_READABLE = "|,:/"


def _check_resource_type(resource_type: str) -> None:
    if not isinstance(resource_type, str) or not _RESOURCE_TYPE.match(resource_type):
        raise ValueError(f"not a FHIR resource type: {resource_type!r}")


def _check_param_name(name: str) -> None:
    if not isinstance(name, str) or not _PARAM_NAME.match(name):
        raise ValueError(f"not a FHIR search parameter name: {name!r}")


@dataclass(frozen=True)
class Read:
    """Instance read of the patient's own resource, e.g. Patient/{id}."""

    resource_type: str

    def __post_init__(self) -> None:
        _check_resource_type(self.resource_type)

    def prefetch_template(self) -> str:
        return f"{self.resource_type}/{PATIENT_TOKEN}"

    def relative_url(self, patient_id: str) -> str:
        return f"{self.resource_type}/{quote(patient_id, safe='')}"


@dataclass(frozen=True)
class Search:
    """Type-level search restricted to one patient; `params` come after the
    patient parameter, in order. `includes` (e.g. "DiagnosticReport:result") are
    asked only when the service searches itself: CDS Hooks prefetch templates keep
    to the spec's restricted subset (read; search by reference, token and date;
    _count; _sort), which has no _include."""

    resource_type: str
    params: tuple[tuple[str, str], ...] = ()
    patient_param: str = "patient"
    includes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_resource_type(self.resource_type)
        _check_param_name(self.patient_param)
        for name, value in self.params:
            _check_param_name(name)
            if not isinstance(value, str):
                raise ValueError(f"search parameter {name} has a value that is not a string")
        for include in self.includes:
            if not isinstance(include, str) or not _INCLUDE.match(include):
                raise ValueError(f"not a FHIR _include value: {include!r}")

    def prefetch_template(self) -> str:
        # The token must stay literal ({{ }} unencoded) for the CDS client to fill it in.
        pairs = [f"{self.patient_param}={PATIENT_TOKEN}"]
        pairs += [f"{quote(name, safe=':')}={quote(value, safe=_READABLE)}" for name, value in self.params]
        return f"{self.resource_type}?{'&'.join(pairs)}"

    def relative_url(self, patient_id: str) -> str:
        query = urlencode(((self.patient_param, patient_id), *self.params,
                           *(("_include", include) for include in self.includes)), safe=_READABLE)
        return f"{self.resource_type}?{query}"

    def without_includes(self) -> "Search":
        return replace(self, includes=()) if self.includes else self


Query = Read | Search
