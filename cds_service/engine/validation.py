"""Validating FHIR resources with fhir.resources (R4B), only the elements a criterion reads,
remembered by content; what a FHIR id is; a validation error in one line."""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from typing import Any, Iterable, Mapping

import orjson
from pydantic import BaseModel, ValidationError


# The elements criteria read, per type: what every kind reads, and what rule kinds declare
# besides (RuleModel.elements_read, added by read_also when the kind is defined). Only these
# are validated: a malformed narrative or performer must not discard a valid lab value, and
# validating the rest would cost time for nothing (fhir.resources takes ~100-300 µs a
# resource). Contained resources are not among them: the record indexes each on its own
# (PatientRecord), so one that is not valid FHIR does not discard its container, nor a
# container's its results.
_READ_ELEMENTS = {
    "Patient": {"resourceType", "id", "gender", "birthDate", "deceasedBoolean", "deceasedDateTime", "extension"},
    "Observation": {"resourceType", "id", "status", "code", "subject", "effectiveDateTime", "effectiveInstant",
                    "effectivePeriod", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
                    "dataAbsentReason", "referenceRange", "component", "specimen"},
    "Condition": {"resourceType", "id", "code", "subject", "clinicalStatus", "verificationStatus", "bodySite",
                  "onsetDateTime", "onsetPeriod", "recordedDate"},
    "AllergyIntolerance": {"resourceType", "id", "code", "patient", "clinicalStatus", "verificationStatus",
                           "recordedDate", "onsetDateTime"},
    "DiagnosticReport": {"resourceType", "id", "status", "code", "subject", "effectiveDateTime",
                         "effectivePeriod", "conclusionCode", "conclusion", "specimen"},
    "Specimen": {"resourceType", "id", "type", "subject"},
}
# A type no list above names (one a rule kind adds): its id and the usual classifying
# elements; the kind declares what else it reads (read_also).
_COMMON_ELEMENTS = frozenset({"resourceType", "id", "status", "code", "subject", "patient"})


_BIRTHSEX_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"


def read_also(resource_type: str, elements: Iterable[str]) -> None:
    """Validate these elements of `resource_type` too (a rule kind reads them). Kinds are
    defined when the engine is imported, before anything is validated; should one come
    later, models validated without its elements are forgotten."""
    known = _READ_ELEMENTS.get(resource_type, _COMMON_ELEMENTS)
    new = set(elements) - known
    if new:
        _READ_ELEMENTS[resource_type] = set(known) | new
        validate_serialized.cache_clear()


def read_elements(raw: dict[str, Any]) -> dict[str, Any]:
    """The part of a resource the engine reads (what gets validated)."""
    keep = _READ_ELEMENTS.get(raw["resourceType"], _COMMON_ELEMENTS)
    trimmed = {k: v for k, v in raw.items() if k in keep}
    if raw["resourceType"] == "Patient" and isinstance(trimmed.get("extension"), list):
        trimmed["extension"] = [e for e in trimmed["extension"]
                                if isinstance(e, dict) and e.get("url") == _BIRTHSEX_URL]
        if not trimmed["extension"]:
            del trimmed["extension"]
    return trimmed


@functools.lru_cache(maxsize=256)  # more than the FHIR R4B resource types (~150)
def model_class(resource_type: str) -> type:
    """The fhir.resources R4B model of a resource type (imported on first use)."""
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


class InvalidResource(ValueError):
    """A resource that is not valid FHIR R4; the message names the first problem."""


def validate(resource_type: str, data: dict[str, Any]) -> Any:
    try:
        model = model_class(resource_type).model_validate(data)
    except ValidationError as exc:
        return InvalidResource(describe_validation_error(exc))
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        return InvalidResource(f"not valid FHIR: {type(exc).__name__}")
    where = _decimal_out_of_range(model)
    if where is not None:
        return InvalidResource(f"{where}: number out of range")
    return model


# fhir.resources takes any decimal, "1e999999999" included. No clinical quantity comes
# near 10^±30 (FHIR: large or highly precise values are "extremely rare in medicine"), and
# arithmetic or formatting on such a number could fail or take gigabytes: not usable data.
MAX_DECIMAL_EXPONENT = 30


# Validated models kept, by content. Only resources a criterion reads are validated (about 20
# per chart: lab histories are read only down to the deciding result), so this holds the last
# ~200 charts a worker saw. Each entry (key and model) takes ~17 kB: at most ~70 MB a worker.
VALIDATION_MEMO_SIZE = 4096


def _decimal_out_of_range(model: Any) -> str | None:
    """The path of the first decimal of a validated model beyond 10^±MAX_DECIMAL_EXPONENT.
    Runs for every resource validated: the model is walked without paths (half the
    time), and only one found out of range is walked again to name where."""
    if not _has_decimal_out_of_range(model):
        return None
    stack: list[tuple[str, Any]] = [("", model)]
    while stack:  # iterative: extensions nest as deep as the JSON parser allows
        path, value = stack.pop()
        if isinstance(value, Decimal):
            if _out_of_range(value):
                return path or "value"
        elif isinstance(value, BaseModel):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in value.__dict__.items() if v is not None)
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return None  # pragma: no cover - the first walk found one


def _has_decimal_out_of_range(model: Any) -> bool:
    stack: list[Any] = [model]
    pop, push = stack.pop, stack.extend
    while stack:
        value = pop()
        if value is None or type(value) is str:  # noqa: E721 - most fields: unset, or text
            continue
        if isinstance(value, BaseModel):
            push(value.__dict__.values())
        elif isinstance(value, (list, tuple)):
            push(value)
        elif isinstance(value, Decimal) and _out_of_range(value):
            return True
    return False


def _out_of_range(value: Decimal) -> bool:
    return abs(value.adjusted()) > MAX_DECIMAL_EXPONENT  # 0E+999999999 too


_validations = 0  # memo misses, counted apart from cache_info(), which cache_clear() resets


@functools.lru_cache(maxsize=VALIDATION_MEMO_SIZE)
def validate_serialized(resource_type: str, serialized: bytes) -> Any:
    """Validation memoised on the resource's content: the same lab result sent
    again (every chart open re-sends the patient's data) is not validated again.
    The key is the resource as received, so a hit costs one serialization and
    no trimming. Models are never mutated, so sharing them between calls is safe."""
    global _validations
    _validations += 1
    return validate(resource_type, read_elements(orjson.loads(serialized)))


def validations_done() -> int:
    """How many resources this process has validated through the memo: what the memo gained."""
    return _validations


#: A FHIR resource id (FHIR R4 `id` datatype): 1-64 of A-Z, a-z, 0-9, "-" and ".".
FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"


_FHIR_ID = re.compile(FHIR_ID)


def is_fhir_id(value: object) -> bool:
    """Whether `value` is a FHIR resource id, whole (no trailing newline, as "$" would allow)."""
    return isinstance(value, str) and _FHIR_ID.fullmatch(value) is not None


def error_message(error: Mapping[str, Any]) -> str:
    """One pydantic error's message, without pydantic's "Value error, " prefix."""
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def error_path(loc: Iterable[str | int]) -> str:
    """A pydantic error's location as a path into the document: ("clients", 0, "jwks") -> clients[0].jwks."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "not valid FHIR"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__") or "resource"
    msg = error_message(first)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"
