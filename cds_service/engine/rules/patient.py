"""Facts about the person: alive, age; and criteria that only a person can
judge (review items)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..dates import parse_fhir_date
from ..model import Evidence, Result, Role, Why
from ..validation import InvalidResource
from .base import Age, Context, Outcome, RuleModel


def _patient_evidence(ctx: Context, **fields) -> list[Evidence]:
    raw = ctx.record.patient_raw
    if raw is None:
        return []
    return [Evidence(reference=ctx.record.reference(raw), role=Role.DECISIVE, **fields)]


def _missing_patient(ctx: Context) -> Outcome | None:
    if ctx.record.patient_raw is None:
        return Outcome(Result.UNKNOWN, "no Patient resource", why=Why.NO_DATA)
    try:
        ctx.record.patient()
    except InvalidResource as exc:
        return Outcome(Result.UNKNOWN, f"Patient resource is not valid FHIR: {exc}", why=Why.INVALID_RESOURCE,
                       evidence=_patient_evidence(ctx, note=f"not valid FHIR: {exc}"))
    return None


class AliveRule(RuleModel):
    """Patient.deceased[x] true or a date rules the patient out. A chart being
    opened without deceased[x] is taken as a living patient (FHIR's default)."""

    type: Literal["alive"]

    def reads(self) -> dict[str, list[str]]:
        return {"Patient": []}

    def evaluate(self, ctx: Context) -> Outcome:
        missing = _missing_patient(ctx)
        if missing:
            return missing
        p = ctx.patient
        if p.deceasedDateTime is not None:
            when = p.deceasedDateTime
            text = when.isoformat() if hasattr(when, "isoformat") else str(when)
            return Outcome(Result.FAIL, f"deceased ({text})",
                           _patient_evidence(ctx, value="deceased", date=text))
        if p.deceasedBoolean:
            return Outcome(Result.FAIL, "recorded as deceased", _patient_evidence(ctx, value="deceased"))
        return Outcome(Result.PASS, "not recorded as deceased")


class AgeRule(RuleModel):
    """min <= age <= max in completed years on the evaluation date; for a
    deceased patient, on the date of death (never past it). A range of possible
    ages (a partial birth or death date; deceased without a date: 0 to the age
    today) decides only when the whole range does: all of it inside the bounds
    passes, all of it outside fails, else unknown.

    A deceased patient's age is never shown: neither the reason nor the
    evidence carries it (the card shows both, and the evaluation rides along in
    the card's extension)."""

    type: Literal["age"]
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AgeRule":
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self

    def reads(self) -> dict[str, list[str]]:
        return {"Patient": []}

    def _fits(self, age: int) -> bool:
        return (self.min is None or age >= self.min) and (self.max is None or age <= self.max)

    def _decides(self, age: Age) -> Result | None:
        """PASS or FAIL when every possible age gives it, else None."""
        if self._fits(age.youngest) and self._fits(age.oldest):  # the bounds are one interval
            return Result.PASS
        if (self.min is not None and age.oldest < self.min) or (self.max is not None and age.youngest > self.max):
            return Result.FAIL
        return None

    def evaluate(self, ctx: Context) -> Outcome:
        missing = _missing_patient(ctx)
        if missing:
            return missing
        bounds = f"{self.min if self.min is not None else 0}–{self.max if self.max is not None else '∞'}"
        age = ctx.age
        if age is None:
            return Outcome(Result.UNKNOWN, "no birth date recorded", why=Why.NO_DATA)
        decided = self._decides(age)
        if age.deceased:
            evidence = _patient_evidence(ctx, note="deceased: age counted to the date of death, not shown")
            if decided is Result.PASS:
                return Outcome(Result.PASS, f"deceased; age on the date of death within {bounds}", evidence)
            if decided is Result.FAIL:
                return Outcome(Result.FAIL, f"deceased; age on the date of death outside {bounds}", evidence)
            if parse_fhir_date(ctx.patient.deceasedDateTime) is None:
                return Outcome(Result.UNKNOWN, f"deceased without a date of death: age at death unknown "
                                               f"(required {bounds})", evidence, Why.NO_DATE)
            return Outcome(Result.UNKNOWN, f"deceased; partial birth or death date: age on the date of death "
                                           f"may be inside or outside {bounds}", evidence, Why.PARTIAL_DATE)
        youngest, oldest = age.youngest, age.oldest
        age_text = str(youngest) if youngest == oldest else f"{youngest}–{oldest}"
        # Birth dates are PHI: the evidence carries the age, never the date.
        evidence = _patient_evidence(ctx, value=f"age {age_text}")
        if decided is None:
            return Outcome(Result.UNKNOWN, f"partial birth date: age could be {youngest}–{oldest}, "
                                           f"required {bounds}", evidence, Why.PARTIAL_DATE)
        if decided is Result.PASS:
            return Outcome(Result.PASS, f"age {age_text} (required {bounds})", evidence)
        return Outcome(Result.FAIL, f"age {age_text} is outside {bounds}", evidence)


class ReviewRule(RuleModel):
    """Not computable: always for a person to judge."""

    type: Literal["review"]
    prompt: str

    def evaluate(self, ctx: Context) -> Outcome:
        return Outcome(Result.REVIEW, self.prompt)
