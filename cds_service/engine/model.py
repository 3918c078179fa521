"""What an evaluation produces: per-criterion results with their evidence.

These types are the engine's output contract. `to_json()` gives the shape
`cds-service evaluate` prints and that other programs read; keys with no
value are omitted, never emitted as null or empty.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any


# Hot paths read an enum member's value as `member._value_` (Enum's documented
# value attribute): `.value` is a Python-level property, ~10x slower, and
# to_json and card rendering read it for every criterion and evidence of every call.


class Result(str, Enum):
    PASS = "pass"  # does not stand in the way
    FAIL = "fail"  # rules the patient out
    UNKNOWN = "unknown"  # data missing, stale or unusable
    REVIEW = "review"  # needs a person's judgement
    NOT_APPLICABLE = "not-applicable"


class Status(str, Enum):
    ELIGIBLE = "eligible"
    NEEDS_DATA = "needs-data"
    INELIGIBLE = "ineligible"


class Why(str, Enum):
    """Typed reasons for an `unknown` result."""

    NO_DATA = "no-data"
    STALE = "stale"
    NO_DATE = "no-date"
    IMPRECISE_DATE = "imprecise-date"
    NO_VALUE = "no-value"
    UNIT_NOT_CONVERTIBLE = "unit-not-convertible"
    NO_REFERENCE_RANGE = "no-reference-range"
    DIAGNOSIS_UNCONFIRMED = "diagnosis-unconfirmed"
    NONSPECIFIC_CODE = "nonspecific-code"
    CONFLICTING_RESULTS = "conflicting-results"
    EQUIVOCAL = "equivocal"
    PARTIAL_DATE = "partial-date"
    SPECIMEN_NOT_CONFIRMED = "specimen-not-confirmed"
    INVALID_RESOURCE = "invalid-resource"
    UNINTERPRETABLE = "uninterpretable-value"
    INCOMPLETE_DATA = "incomplete-data"  # the answer rests on an absence, and the data was cut short
    # A record the engine cannot match by code whose text names the criterion's concept: it may be
    # the concept, so it never decides silently (an inclusion is unknown, an exclusion for review).
    UNRECOGNISED_CODE = "unrecognised-code"  # coded, but in no code set the criterion reads
    TEXT_ONLY = "text-only"  # no usable coding at all, only text


class Role(str, Enum):
    DECISIVE = "decisive"  # this piece of evidence decided the result
    SUPPORTING = "supporting"  # considered, agrees or adds context
    IGNORED = "ignored"  # seen but not usable; `note` says why


@dataclass(slots=True)
class Order:
    """An orderable test that would settle an unknown criterion."""

    key: str
    system: str
    code: str
    display: str
    category: str | None = None  # what kind of order: None is a laboratory test; "imaging" (an echocardiogram)

    def to_json(self) -> dict[str, Any]:
        return {name: value for name, value in (("key", self.key), ("system", self.system), ("code", self.code),
                                                ("display", self.display), ("category", self.category)) if value}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Enum):
        return value._value_
    return value


def _text(value: Any) -> Any:
    return value if type(value) is str else _plain(value)  # noqa: E721 - the usual case first


def _decimal_text(value: Decimal) -> str:
    """A decimal as plain text, never in exponent form (1E+1 -> "10")."""
    return format(value, "f")


# -- numbers as a person reads them ------------------------------------------------------------------
#
# The evaluation JSON keeps numbers as recorded and as computed (full precision: it is data).
# What a person reads (cards, the text report, reasons) shows them at the precision recorded:
#   - a computed value (a converted value or ULN) to at most DISPLAY_SIGNIFICANT significant digits,
#     never rounding away a digit before the decimal point, never past DISPLAY_PLACES decimals, and
#     never with digits added (1.2 mg/dL as µmol/L: 20.5, not 20.51282051282051282051282051; 3.2
#     stays 3.2);
#   - a recorded value as recorded, unless it has more than DISPLAY_PLACES decimals: that is float
#     noise (Synthea and some interfaces send 314.4783871540618), shown as a computed value (314).
# Only numbers with more decimals than that are rounded, so a value at a threshold reads as
# recorded; one so rounded may read as the threshold (1.50049 as 1.50) while the JSON keeps it.

DISPLAY_PLACES = 3
DISPLAY_SIGNIFICANT = 3
_WIDE = decimal.Context(prec=200)  # room for quantize() on any value a result can carry


def shown_number(value: Decimal | str, significant: int | None = DISPLAY_SIGNIFICANT,
                 places: int = DISPLAY_PLACES) -> str:
    """A number for people: at most `significant` significant digits (None: no limit) but
    never fewer than its integer digits, at most `places` decimals (unless that would
    leave no significant digit: 0.000123 stays), rounded half up, in plain notation
    (never 1E+1). A value already that short is shown as given ("3.10" stays "3.10").
    Text that is not a finite number comes back unchanged."""
    if not isinstance(value, Decimal):
        try:
            value = Decimal(value.strip())
        except (decimal.InvalidOperation, AttributeError, ValueError):
            return str(value)
    if not value.is_finite():
        return str(value)
    # Shown on every card for every lab value: most are already short enough, seen in their text.
    text = _decimal_text(value)
    dot = text.find(".")
    if dot < 0:
        return text  # a whole number: no digit before the point is ever rounded away
    whole = dot - (text[0] == "-")
    if whole == 1 and text[dot - 1] == "0":
        whole = 0  # 0.x: no whole digits
    if len(text) - dot - 1 <= min(places, places if significant is None else significant - whole):
        return text
    keep = places
    if significant is not None and value:
        keep = max(0, significant - value.adjusted() - 1)
        if value.adjusted() >= -places:  # the cap on decimals never turns a value into 0.000
            keep = min(keep, places)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent <= keep:
        return _decimal_text(value)
    try:
        return _decimal_text(value.quantize(Decimal(1).scaleb(-keep), rounding=decimal.ROUND_HALF_UP, context=_WIDE))
    except decimal.InvalidOperation:  # beyond any clinical value: as it is
        return _decimal_text(value)


def shown_recorded(value: str | None) -> str | None:
    """A value as recorded, for people: unchanged unless it is a number with more than
    DISPLAY_PLACES decimals (float noise), which is shown as a computed value."""
    if not value or "." not in value or len(value) - value.index(".") <= DISPLAY_PLACES + 1:
        return value  # the usual cases, without parsing
    return shown_number(value)


# A number in prose with more decimals than a person reads: a computed value or float noise.
_LONG_DECIMAL = re.compile(r"(?<![\w.:])\d+\.\d{%d,}(?!\d|\.\d)" % (DISPLAY_PLACES + 1))


def shown_text(text: str) -> str:
    """Prose (a reason) for people: every number in it with more than DISPLAY_PLACES
    decimals shown as a computed value ("ULN 20.51282051282051282051282051 umol/L" ->
    "ULN 20.5 umol/L"); everything else, comparators included ("<0.2 mg/dL"), unchanged."""
    if "." not in text:
        return text
    return _LONG_DECIMAL.sub(lambda m: shown_number(m.group()), text)


@dataclass(frozen=True, slots=True)
class Measured:
    value: Decimal
    unit: str

    def to_json(self) -> dict[str, Any]:
        out = {"value": _decimal_text(self.value)}
        if self.unit:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True, slots=True)  # frozen: shared between calls, as Measured
class UpperLimit:
    """The upper limit of normal used for a ×ULN rule."""

    value: Decimal
    unit: str
    source: str  # "referenceRange.high" or "fallback"
    assumed: bool
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": _decimal_text(self.value)}
        if self.unit:
            out["unit"] = self.unit
        if self.source:
            out["source"] = self.source
        out["assumed"] = self.assumed
        if self.note:
            out["note"] = self.note
        return out


@dataclass(slots=True)
class Evidence:
    reference: str  # "Observation/abc" (or the entry's fullUrl when there is no id)
    role: Role = Role.SUPPORTING
    code: str | None = None  # "system|code" that matched
    display: str | None = None  # human label for the matched concept
    value: str | None = None  # as recorded: "1500", "Negative", "2+"
    unit: str | None = None  # as recorded
    comparator: str | None = None
    converted: Measured | None = None
    uln: UpperLimit | None = None
    ratio_to_uln: Decimal | None = None
    date: str | None = None  # effective/onset date as recorded
    status: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": self.reference} if self.reference else {}
        out["role"] = self.role._value_
        # Spelt out field by field (not a getattr loop): this runs for every evidence of every card.
        if self.code:
            out["code"] = _text(self.code)
        if self.display:
            out["display"] = _text(self.display)
        if self.value is not None and self.value != "":
            out["value"] = _text(self.value)
        if self.unit:
            out["unit"] = _text(self.unit)
        if self.comparator:
            out["comparator"] = _text(self.comparator)
        if self.date:
            out["date"] = _text(self.date)
        if self.status:
            out["status"] = _text(self.status)
        if self.converted is not None:
            out["converted"] = self.converted.to_json()
        if self.uln is not None:
            out["uln"] = self.uln.to_json()
        if self.ratio_to_uln is not None:
            out["ratioToUln"] = _decimal_text(self.ratio_to_uln)
        if self.note:
            out["note"] = self.note
        return out


@dataclass(slots=True)
class CriterionResult:
    """One criterion's result for one patient: what decided it (reason, evidence) and, for an
    unknown, why (the typed reason) and what would settle it (an order)."""

    id: str
    kind: str  # "inclusion" | "exclusion"
    result: Result
    reason: str
    evidence: list[Evidence] = field(default_factory=list)
    why: Why | None = None  # set for unknown results, and for review results a record's text prompted
    order: Order | None = None  # set for unknown results that an order can settle
    title: str | None = None
    not_read: int = 0  # further matching records left unread: they cannot change the result

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "result": self.result._value_}
        if self.reason:
            out["reason"] = self.reason
        if self.title:
            out["title"] = self.title
        if self.why is not None:
            out["reasonCode"] = self.why._value_
        if self.order is not None:
            out["order"] = self.order.to_json()
        if self.evidence:
            out["evidence"] = [e.to_json() for e in self.evidence]
        if self.not_read:
            out["notRead"] = self.not_read
        return out


@dataclass(slots=True)
class TrialEvaluation:
    trial: str
    definition_version: str
    patient: str | None
    as_of: dt.date
    criteria: list[CriterionResult]
    # False: evaluated only until a criterion failed (evaluate(..., until_ineligible=True)): the
    # status is final (ineligible), the criteria after that one were not read.
    complete: bool = True

    @property
    def status(self) -> Status:
        results = {c.result for c in self.criteria}
        if Result.FAIL in results:
            return Status.INELIGIBLE
        if Result.UNKNOWN in results:
            return Status.NEEDS_DATA
        return Status.ELIGIBLE

    def criterion(self, criterion_id: str) -> CriterionResult:
        for c in self.criteria:
            if c.id == criterion_id:
                return c
        raise KeyError(criterion_id)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trial": self.trial, "definitionVersion": self.definition_version}
        if self.patient:
            out["patient"] = self.patient
        out["asOf"] = self.as_of.isoformat()
        out["status"] = self.status._value_
        if self.criteria:
            out["criteria"] = [c.to_json() for c in self.criteria]
        if not self.complete:
            out["complete"] = False
        return out
