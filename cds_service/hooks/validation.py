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
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..engine import FHIR_ID as ENGINE_FHIR_ID, error_message
from .discovery import HOOK
from .wire import UUID, Uuid

FHIR_ID = rf"^{ENGINE_FHIR_ID}$"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_ID = re.compile(rf"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/{ENGINE_FHIR_ID}$")


class Invalid(ValueError):
    """A request that breaks the spec: a list of (FHIRPath of the field or None, problem)."""

    def __init__(self, problems: list[tuple[str | None, str]]):
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))
        self.problems = problems


class _Wire(BaseModel):
    # What the descriptions and json_schema_extra add is for /openapi.json (hooks/openapi.py), which
    # also leaves out the null that an optional field's None default would let through: the spec
    # forbids it (CDS Hooks 2.0 §Use of JSON), though these models accept it.
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=False)


class FhirAuthorization(_Wire):
    """An OAuth 2.0 bearer token for the FHIR server (CDS Hooks 2.0 §FHIR Resource Access). Requires
    `fhirServer`; `patient`, when given, must equal `context.patientId`. The token is used for the
    FHIR calls of this request only and is never logged or stored."""

    access_token: str = Field(min_length=1, repr=False)  # never shown in reprs
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0, description="Lifetime of the token in seconds.")
    scope: str = Field(min_length=1, description="Space-separated SMART scopes (v1 `user/Observation.read` or v2 "
                       "`patient/Observation.rs`). Data the scopes do not allow reading is not fetched.")
    subject: str = Field(min_length=1, description="The OAuth 2.0 client id of the CDS service.")
    patient: str | None = Field(default=None, pattern=FHIR_ID)


class PatientViewContext(_Wire):
    """The patient-view hook context (cds-hooks-library patient-view 1.0)."""

    userId: str = Field(json_schema_extra={"pattern": USER_ID.pattern}, examples=["Practitioner/example"],
                        description="The user, as `[ResourceType]/[id]`.")
    patientId: str = Field(pattern=FHIR_ID)
    encounterId: str | None = Field(default=None, pattern=FHIR_ID)

    @field_validator("userId")
    @classmethod
    def _user(cls, value: str) -> str:
        if not USER_ID.fullmatch(value):  # match() lets "$" pass a trailing newline into the card's requester
            raise ValueError("must be Practitioner/, PractitionerRole/, Patient/ or RelatedPerson/ followed by an id")
        return value


class HookRequest(_Wire):
    """A CDS Hooks 2.0 service request for the patient-view hook. Unknown fields are tolerated."""

    hook: str = Field(min_length=1, json_schema_extra={"enum": [HOOK]}, description=(
        f"The hook that triggered the call. This service answers `{HOOK}` only; any other hook is 400."))
    hookInstance: str = Field(json_schema_extra={"format": "uuid"}, description="A UUID for this particular hook call.")
    fhirServer: str | None = Field(default=None, pattern=r"^https?://\S+$", json_schema_extra={"format": "uri"},
                                   description="The base URL of the CDS Client's FHIR server. REQUIRED when "
                                   "fhirAuthorization is present. Data is fetched from it only when it is on the "
                                   "service's allowlist (CDS_ALLOWED_FHIR_SERVERS).")
    fhirAuthorization: FhirAuthorization | None = None
    context: PatientViewContext
    prefetch: dict[str, Any] | None = None  # its keys are the service's: hooks/openapi.py describes them
    extension: dict[str, Any] | None = Field(default=None, description=(
        "CDS Hooks extensions (a pre-coordinated JSON object); tolerated and ignored."))

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
    """A reason, a non-empty userComment, or both (CDS Hooks 2.0 invariant cds-fb-3)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["reason"]}, {"required": ["userComment"], "properties": {"userComment": {"minLength": 1}}}]})
    reason: Coding | None = None
    userComment: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> "OverrideReason":
        if self.reason is None and not self.userComment:  # cds-fb-3
            raise ValueError("must hold a reason, a userComment, or both")
        return self


class AcceptedSuggestion(_Wire):
    id: Annotated[Uuid, Field(description="The suggestion's `uuid`.")]


class FeedbackItem(_Wire):
    """What the user did with one card. `acceptedSuggestions` is required when `outcome` is `accepted`."""

    card: Annotated[Uuid, Field(description="The card's `uuid`.")]
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(json_schema_extra={"format": "date-time"},
                                  description="When the user acted (RFC 3339 §5.6, with a time zone).")

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
    feedback: list[FeedbackItem] = Field(max_length=100, description=(  # required; [] is allowed
        "An empty list is accepted and stores nothing (CDS Hooks 2.0 feedback model: 0..*)."))


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
