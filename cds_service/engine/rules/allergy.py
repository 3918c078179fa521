"""Allergy to the study drugs, from AllergyIntolerance."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..model import Evidence, Result, Role, Why
from ..validation import InvalidResource
from .base import (ACTIVE_CLINICAL, EXCLUDED, Context, Outcome, RuleModel, clinical_status, coding_text, concept_label,
                   matching_coding, verification)
from .mentions import TextMentions, named_by_text, recorded_with
from .readers import invalid_evidence
from .conditions import decided


class AllergyRule(RuleModel):
    """fail: an active, not refuted allergy coded in `failCodes`; review: one in
    `reviewCodes`, one that is not valid FHIR, or one whose code is in none of the
    sets but whose text names a study drug (`mentions`: ingredient or brand);
    pass: an allergy list exists (a 'no known allergy' entry or other allergies,
    coded or not) and names none of them; review when there is no allergy
    information at all."""

    type: Literal["allergy"]
    label: str  # "the study drugs (sacituzumab govitecan, pemetrexed)"
    fail_codes: list[str] = Field(min_length=1)
    review_codes: list[str] = []
    no_known_allergy_codes: list[str] = []
    uninformative_codes: list[str] = []  # entries that say nothing about drug allergy
    mentions: TextMentions | None = None  # the study drugs' names, for entries their codes cannot match

    def reads(self) -> dict[str, list[str]]:
        return {"AllergyIntolerance": []}  # every entry: the list as a whole is evidence

    def evaluate(self, ctx: Context) -> Outcome:
        fail_set = ctx.codes(self.fail_codes)
        review_set = ctx.codes(self.review_codes) if self.review_codes else None
        nka_set = ctx.codes(self.no_known_allergy_codes) if self.no_known_allergy_codes else None
        silent_set = ctx.codes(self.uninformative_codes) if self.uninformative_codes else None
        failing, reviewing, uncoded, listed, nka = [], [], [], [], []
        named_only: list[tuple[Evidence, Why]] = []
        everything: list[Evidence] = []
        for raw in ctx.record.all_of("AllergyIntolerance"):
            try:
                allergy = ctx.record.model(raw)
            except InvalidResource as exc:
                ev = invalid_evidence(ctx, raw, exc)
                everything.append(ev)
                uncoded.append(ev)  # unreadable: a person must look
                continue
            ver, clin = verification(allergy), clinical_status(allergy)
            fail_c = matching_coding(allergy.code, fail_set)
            review_c = matching_coding(allergy.code, review_set) if review_set else None
            nka_c = matching_coding(allergy.code, nka_set) if nka_set else None
            coding = fail_c or review_c or nka_c
            ev = Evidence(reference=ctx.record.reference(raw), code=coding_text(coding) if coding else None,
                          display=concept_label(allergy.code, coding), status=f"{clin}/{ver}",
                          date=_recorded(allergy))
            everything.append(ev)
            if ver == EXCLUDED or clin not in ACTIVE_CLINICAL:
                ev.role, ev.note = Role.IGNORED, f"{'refuted or entered in error' if ver == EXCLUDED else clin}; ignored"
                continue
            if fail_c:
                failing.append(ev)
            elif review_c:
                reviewing.append(ev)
            elif nka_c:
                nka.append(ev)
            elif silent_set and matching_coding(allergy.code, silent_set) is not None:
                ev.role, ev.note = Role.IGNORED, "says nothing about drug allergy"
            elif self.mentions is not None and (named := named_by_text(ctx, raw.get("code"), self.mentions, None,
                                                                       None)) is not None:
                ev.role, ev.display = Role.DECISIVE, named[0]
                ev.note = ("code not in the study-drug code sets; its text names a study drug or its class"
                           if named[2] is Why.UNRECOGNISED_CODE else
                           "recorded as text only; it names a study drug or its class")
                named_only.append((ev, named[2]))
            else:
                if allergy.code is None or not any(c.code for c in allergy.code.coding or ()):
                    ev.note = "recorded without a code; its text names no study drug"
                listed.append(ev)
        if failing:
            return decided(Result.FAIL, f"allergy to {failing[0].display or 'a study drug'} recorded", failing,
                           everything)
        if reviewing:
            return decided(Result.REVIEW, f"allergy to {reviewing[0].display or 'a related drug'} recorded: "
                           "related to a study drug, a clinician's call", reviewing, everything)
        if named_only:
            ev, why = named_only[0]
            return decided(Result.REVIEW, f"allergy to '{ev.display}' is recorded with {recorded_with(why)}: check "
                           "it is not to "
                           + self.label, [e for e, _ in named_only], everything, why)
        if uncoded:
            return decided(Result.REVIEW, "an allergy record is not valid FHIR: check it is not to "
                           + self.label, uncoded, everything, Why.INVALID_RESOURCE)
        # A pass: no allergy to the study drugs among the entries received.
        if nka:
            return decided(Result.PASS, f"{nka[0].display or 'no known allergy'} recorded", nka, everything,
                           absence_of=("AllergyIntolerance",))
        if listed:
            return decided(Result.PASS, f"allergy list recorded ({len(listed)}); none to {self.label}", listed,
                           everything, absence_of=("AllergyIntolerance",))
        return decided(Result.REVIEW, f"no allergy information: confirm no allergy to {self.label}", [],
                       everything)


def _recorded(allergy) -> str | None:
    for value in (allergy.recordedDate, allergy.onsetDateTime):
        if value is not None:
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return None
