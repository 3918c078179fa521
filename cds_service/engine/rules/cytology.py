"""Cytology: a result positive for malignant cells on a specimen of a named type
(CSF), read from Observations and DiagnosticReports."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import Field

from ..model import Evidence, Role
from ..record import InvalidResource
from .base import Context, RuleModel, concept_in, matching_coding, read_results


class Cytology(RuleModel):
    """A positive cytology result on a named specimen type also qualifies."""

    codes: list[str] = Field(min_length=1)
    specimen_type_codes: list[str] = Field(min_length=1)
    positive_value_codes: list[str] = Field(min_length=1)
    label: str


class CytologyFindings(NamedTuple):
    positive: list[Evidence]  # positive for malignant cells, on the named specimen type
    unsure: list[Evidence]  # positive, on a specimen not recorded as that type
    unreadable: list[Evidence]  # resulted, but the value cannot be read: it may be positive
    ignored: list[Evidence]


def read_cytology(ctx: Context, spec: Cytology) -> CytologyFindings:
    codes = ctx.codes(spec.codes)
    positive_values = ctx.codes(spec.positive_value_codes)
    specimen_types = ctx.codes(spec.specimen_type_codes)
    positive, unsure, ignored = [], [], []
    for rtype in ("Observation", "DiagnosticReport"):
        readings, more_ignored = read_results(ctx, codes, rtype, components=False)
        ignored += more_ignored
        for r in readings:
            res, ev = r.resource, r.evidence
            values = [res.valueCodeableConcept] if rtype == "Observation" else list(res.conclusionCode or ())
            value_coding = next(filter(None, (matching_coding(v, positive_values) for v in values)), None)
            if value_coding is None:
                ev.role, ev.note = Role.IGNORED, "not positive for malignant cells"
                ignored.append(ev)
                continue
            ev.value = value_coding.display or value_coding.code
            specimens = [res.specimen] if rtype == "Observation" else list(res.specimen or ())
            if any(_specimen_is(ctx, res, s, specimen_types) for s in specimens if s is not None):
                positive.append(ev)
            else:
                ev.note = "specimen type not recorded as " + spec.label
                unsure.append(ev)
    return CytologyFindings(positive, unsure, [], ignored)


def _specimen_is(ctx: Context, resource: Any, ref: Any, types) -> bool:
    target = ref.reference or ""
    if target.startswith("#"):
        for contained in resource.contained or ():
            if contained.id == target[1:]:
                return concept_in(getattr(contained, "type", None), types)
        return False
    raw = ctx.record.resolve(target)
    if raw is None or raw.get("resourceType") != "Specimen":
        return False
    try:
        specimen = ctx.record.model(raw)
    except InvalidResource:
        return False
    return concept_in(specimen.type, types)
