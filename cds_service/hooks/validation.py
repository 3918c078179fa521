"""The CDS Hooks 2.0 wire format of what clients send us, validated.

Unknown fields and `extension` objects are tolerated (the spec reserves
`extension` and clients add their own). Error messages name the field and
never repeat the value: a request may carry an access token. A problem's
location is a FHIRPath expression (`feedback[0].outcome`), as
OperationOutcome.issue.expression wants it.

Feedback follows the CDS Hooks 2.0 logical model (CDSHooksFeedback in the FHIR
tools IG): `feedback` must be present and may be an empty array (json-empty-
behavior "present": nothing to store, 200); `card` and `acceptedSuggestions[].id`
are UUIDs (type uuid); an `overrideReason` holds a `reason`, a `userComment`
or both (invariant cds-fb-3), so `{}` is refused.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..engine import FHIR_ID as ENGINE_FHIR_ID, error_message

FHIR_ID = rf"^{ENGINE_FHIR_ID}$"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_ID = re.compile(rf"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/{ENGINE_FHIR_ID}$")


class Invalid(ValueError):
    """A request that breaks the spec: a list of (FHIRPath of the field or None, problem)."""

    def __init__(self, problems: list[tuple[str | None, str]]):
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))
        self.problems = problems


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=False)


class FhirAuthorization(_Wire):
    access_token: str = Field(min_length=1, repr=False)  # never shown in reprs
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    patient: str | None = Field(default=None, pattern=FHIR_ID)


class PatientViewContext(_Wire):
    userId: str
    patientId: str = Field(pattern=FHIR_ID)
    encounterId: str | None = Field(default=None, pattern=FHIR_ID)

    @field_validator("userId")
    @classmethod
    def _user(cls, value: str) -> str:
        if not USER_ID.fullmatch(value):  # match() lets "$" pass a trailing newline into the card's requester
            raise ValueError("must be Practitioner/, PractitionerRole/, Patient/ or RelatedPerson/ followed by an id")
        return value


class HookRequest(_Wire):
    hook: str = Field(min_length=1)
    hookInstance: str
    fhirServer: str | None = Field(default=None, pattern=r"^https?://\S+$")
    fhirAuthorization: FhirAuthorization | None = None
    context: PatientViewContext
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except (ValueError, AttributeError, TypeError):
            raise ValueError("must be a UUID") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "HookRequest":
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization requires fhirServer")
        if self.fhirAuthorization is not None and self.fhirAuthorization.patient not in (None,
                                                                                       self.context.patientId):
            raise ValueError("fhirAuthorization.patient does not match context.patientId")
        return self


class Coding(_Wire):
    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None  # the sandbox omits it


class OverrideReason(_Wire):
    reason: Coding | None = None
    userComment: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> "OverrideReason":
        if self.reason is None and not self.userComment:  # cds-fb-3
            raise ValueError("must hold a reason, a userComment, or both")
        return self


class AcceptedSuggestion(_Wire):
    id: str = Field(pattern=UUID)  # the suggestion's uuid


class FeedbackItem(_Wire):
    card: str = Field(pattern=UUID)  # the card's uuid
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str

    @field_validator("outcomeTimestamp")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be an RFC 3339 date-time") from None
        if parsed.tzinfo is None:
            raise ValueError("must carry a time zone (RFC 3339)")
        return value

    @model_validator(mode="after")
    def _accepted(self) -> "FeedbackItem":
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when outcome is accepted")
        return self


class FeedbackRequest(_Wire):
    feedback: list[FeedbackItem] = Field(max_length=100)  # required; [] is allowed (nothing to store)


_Model = TypeVar("_Model", bound=BaseModel)


def fhirpath(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """A pydantic error location as a FHIRPath expression: ('feedback', 0, 'outcome') ->
    feedback[0].outcome; a name that is not a plain identifier is quoted in backticks
    (prefetch.`lab-results`). None for the body itself."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            if not _IDENTIFIER.fullmatch(name):
                name = "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
            out += f".{name}" if out else name
    return out or None


def _problems(exc: ValidationError) -> list[tuple[str | None, str]]:
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        path = fhirpath(err.get("loc", ()))
        msg = error_message(err)
        if path is None:
            msg = f"the body: {msg}"
        elif err.get("type") == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == UUID:
            msg = "must be a UUID"  # not the regular expression
        out.append((path, msg))
    return out


def _parse(model: type[_Model], body: Any) -> _Model:
    if not isinstance(body, dict):
        raise Invalid([(None, "the body must be a JSON object")])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise Invalid(_problems(exc)) from None


def parse_hook_request(body: Any) -> HookRequest:
    return _parse(HookRequest, body)


def parse_feedback(body: Any) -> FeedbackRequest:
    return _parse(FeedbackRequest, body)
