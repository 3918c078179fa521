"""The CDS Hooks 2.0 wire format of what the service writes: the hook response and
its cards (suggestions, actions, links, source, the trial-eligibility evaluation under
`extension`), discovery, the feedback answer, health and readiness, and the FHIR
OperationOutcome of every error. What clients send is typed in hooks/validation.py.

These are TypedDicts: the service writes plain dicts on the hot path (the renderer
builds a card as a dict, orjson writes it) and nothing is converted per call; the types
say what those dicts are. Pydantic validates them in the tests (tests/test_wire.py) and
writes their JSON Schema into /openapi.json (hooks/openapi.py).

- The fields are the ones the service writes, and every shape forbids others: a
  renderer change that adds a field fails the tests until it is described here.
- A field the service always writes is required; one it writes only when it has a
  value is NotRequired, and then absent, never null or empty (CDS Hooks 2.0 §Use of JSON).
- Codes are typed by their value sets: the spec's (indicator, selection behaviour,
  action and link types), FHIR's (issue severity and type) and the engine's enums
  (result, status, evidence role, reason code), so the schema lists exactly those.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

from ..engine import Result, Role, Status, Why

UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID.strip("^$"))


def is_uuid(value: object) -> bool:
    """Whether `value` is a UUID in its canonical text form (what the service logs of a
    client's hookInstance: nothing else a client writes reaches a log)."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None

Text = Annotated[str, Field(min_length=1)]
Uri = Annotated[str, Field(min_length=1, json_schema_extra={"format": "uri"})]
Uuid = Annotated[str, Field(pattern=UUID, json_schema_extra={"format": "uuid"})]
Count = Annotated[int, Field(ge=0)]

written = with_config(ConfigDict(extra="forbid"))  # the service writes it: no field it does not name


# -- cards -----------------------------------------------------------------------------------------

@written
class CardCoding(TypedDict):
    """A Coding as the service writes it (the source's topic: the trial's NCT id; an override
    reason): always with a display, which CDS Hooks requires of override reasons."""

    system: Text
    code: Text
    display: Text


@written
class Source(TypedDict):
    """Where the card's guidance comes from: the trial and its registry page."""

    label: Text
    url: Uri
    topic: CardCoding


@with_config(ConfigDict(extra="allow"))
class FhirResource(TypedDict):
    """A FHIR R4 resource (here a draft ServiceRequest: an order or a referral)."""

    resourceType: Text


@written
class Action(TypedDict):
    type: Literal["create", "update", "delete"]
    description: Text
    resource: FhirResource


@written
class Suggestion(TypedDict):
    """An order that would settle a criterion the data leaves unknown, or a referral to the study team."""

    label: Text
    uuid: Annotated[Uuid, Field(description="Sent back in feedback (acceptedSuggestions[].id).")]
    isRecommended: bool
    actions: Annotated[list[Action], Field(min_length=1)]


@written
class Link(TypedDict):
    label: Text
    url: Uri
    type: Literal["absolute", "smart"]


@written
class Order(TypedDict):
    """An orderable test that would settle an unknown criterion."""

    key: Text
    system: Text
    code: Text
    display: Text
    category: NotRequired[Literal["imaging"]]  # absent: a laboratory test


@written
class Converted(TypedDict):
    """A lab value converted to the unit of the criterion's threshold."""

    value: Text
    unit: Text


@written
class UpperLimit(TypedDict):
    """The upper limit of normal used for a ×ULN rule."""

    value: Text
    unit: Text
    source: Text
    assumed: bool
    note: NotRequired[Text]


@written
class Evidence(TypedDict):
    """A record the criterion read."""

    reference: Annotated[str, Field(min_length=1, examples=["Observation/anc-1"])]
    role: Role
    code: NotRequired[Annotated[str, Field(min_length=1, description="`system|code` that matched.")]]
    display: NotRequired[Text]
    value: NotRequired[Annotated[str, Field(min_length=1, description="The value as recorded.")]]
    unit: NotRequired[Text]
    comparator: NotRequired[Text]
    date: NotRequired[Text]
    status: NotRequired[Text]
    converted: NotRequired[Converted]
    uln: NotRequired[UpperLimit]
    ratioToUln: NotRequired[Text]
    note: NotRequired[Text]


@written
class CriterionResult(TypedDict):
    """One criterion of the trial, evaluated."""

    id: Text
    kind: Literal["inclusion", "exclusion"]
    result: Result
    reason: Text
    title: NotRequired[Text]
    reasonCode: NotRequired[Annotated[Why, Field(description=(
        "Why the result is unknown, or which unreadable record put it up for review "
        "(unrecognised-code, text-only, invalid-resource)."))]]
    order: NotRequired[Order]
    evidence: NotRequired[Annotated[list[Evidence], Field(min_length=1)]]
    notRead: NotRequired[Annotated[int, Field(ge=1, description=(
        "Further matching records not read because they cannot change the result: lab results older than "
        "the deciding one, diagnoses beyond the first three that decide."))]]


@written
class TrialEvaluation(TypedDict):
    """The engine's evaluation of one trial for the patient, criterion by criterion
    (card.extension["trial-eligibility"])."""

    trial: Annotated[str, Field(min_length=1, examples=["NCT06462092"])]
    definitionVersion: Text
    patient: NotRequired[Annotated[str, Field(min_length=1, description="Absent when the Patient is unknown.")]]
    asOf: dt.date
    status: Status
    criteria: Annotated[list[CriterionResult], Field(min_length=1)]


CardExtension = written(TypedDict("CardExtension", {"trial-eligibility": TrialEvaluation}))


@with_config(ConfigDict(extra="forbid", json_schema_extra={"dependentRequired": {
    "suggestions": ["selectionBehavior"]}}))
class Card(TypedDict):
    """A CDS Hooks 2.0 card: one per trial the patient may qualify for or that needs data
    to decide. No element is null or empty; selectionBehavior comes with suggestions."""

    uuid: Annotated[Uuid, Field(description="Identifies the card in feedback and in the audit log.")]
    summary: Annotated[str, Field(min_length=1, max_length=139, description="One line, under 140 characters.")]
    detail: NotRequired[Annotated[str, Field(min_length=1, description="GitHub Flavored Markdown (no raw HTML).")]]
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: NotRequired[Annotated[list[Suggestion], Field(min_length=1)]]
    selectionBehavior: NotRequired[Literal["at-most-one", "any"]]
    overrideReasons: Annotated[list[CardCoding], Field(min_length=1)]
    links: Annotated[list[Link], Field(min_length=1)]
    extension: CardExtension


@written
class CdsServiceResponse(TypedDict):
    """The answer to a hook call: `{"cards": []}` when there is no guidance."""

    cards: list[Card]


# -- discovery, feedback, operations ---------------------------------------------------------------

@written
class CdsService(TypedDict):
    """A CDS service as discovery describes it."""

    hook: Annotated[str, Field(min_length=1, examples=["patient-view"])]
    id: Annotated[str, Field(min_length=1, examples=["trial-eligibility"])]
    title: Text
    description: Text
    prefetch: Annotated[dict[str, Text], Field(description="Prefetch key → FHIR query template.")]
    usageRequirements: Text


@written
class DiscoveryResponse(TypedDict):
    services: list[CdsService]


@written
class FeedbackResult(TypedDict):
    stored: Annotated[Count, Field(description="Entries stored now.")]
    duplicates: Annotated[Count, Field(description="Entries received before, not stored again.")]


@written
class Health(TypedDict):
    status: Literal["ok"]


@written
class Readiness(TypedDict):
    status: Literal["ready"]
    service: Annotated[str, Field(examples=["trial-eligibility"])]
    trials: Annotated[dict[str, str], Field(description="Enabled trial (NCT id) → definition version.")]
    fhirServers: Annotated[Count, Field(description="How many FHIR servers are on the allowlist.")]


# -- errors ----------------------------------------------------------------------------------------

IssueType = Literal[  # http://hl7.org/fhir/R4/valueset-issue-type.html
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired", "forbidden",
    "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found", "deleted", "too-long",
    "code-invalid", "extension", "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational"]


@written
class Issue(TypedDict):
    severity: Literal["fatal", "error", "warning", "information"]
    code: IssueType
    diagnostics: Annotated[str, Field(min_length=1, description=(
        "What is wrong, naming the field; a submitted value is never repeated (a request may carry a token)."))]
    expression: NotRequired[Annotated[list[Text], Field(min_length=1, description=(
        "The offending element as FHIRPath, e.g. `context.patientId` or `prefetch.labResults`."))]]


@written
class OperationOutcome(TypedDict):
    """A FHIR R4 OperationOutcome: the body of every error, sent as application/fhir+json."""

    resourceType: Literal["OperationOutcome"]
    issue: Annotated[list[Issue], Field(min_length=1)]

