"""Diagnoses: a qualifying Condition must be present (inclusion), or a
disqualifying one must be absent (exclusion)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from ..codes import CodeSet
from ..model import Evidence, Result, Role, Why
from ..validation import InvalidResource
from .base import (ACTIVE_CLINICAL, CONFIRMED, EXCLUDED, UNCONFIRMED, Context, Outcome, RuleModel, clinical_status,
                   coding_text, concept_in, concept_label, condition_date, matching_coding, verification)
from .mentions import TextMentions, coded_in, mention_reason, named_by_text, recorded_with, unread_mentions
from .readers import has_invalid, invalid_evidence
from .cytology import Cytology, CytologyFindings, read_cytology


@dataclass(slots=True)
class FoundCondition:
    raw: dict[str, Any]
    model: Any
    verification: str
    clinical: str
    evidence: Evidence

    @property
    def active(self) -> bool:
        return self.clinical in ACTIVE_CLINICAL


# Conditions that decide a rule, listed before the rest of the matching ones is left unread.
DECIDING_CONDITIONS_LISTED = 3


def find_conditions(ctx: Context, code_names: list[str], *, unless: CodeSet | None = None
                    ) -> tuple[list[FoundCondition], list[Evidence]]:
    """Conditions coded in the named sets, with status read; refuted,
    entered-in-error, invalid and future-dated ones come back as ignored evidence.
    `unless`: Conditions also coded in this set are left to the rule that reads it."""
    found, ignored, _ = find_conditions_until(ctx, code_names, unless=unless)
    return found, ignored


def find_conditions_until(ctx: Context, code_names: list[str],
                          decides: Callable[[FoundCondition], bool] | None = None, *, unless: CodeSet | None = None
                          ) -> tuple[list[FoundCondition], list[Evidence], int]:
    """find_conditions, read in record order and stopped once
    DECIDING_CONDITIONS_LISTED conditions for which `decides` holds are found: the
    rule's outcome is then settled (the first that decides names it), and the rest
    is only counted (third value). EHRs send a diagnosis again with every
    encounter: hundreds of Conditions for one cancer, each costing a validation."""
    if not code_names:
        return [], [], 0
    codes = ctx.codes(code_names)
    found, ignored = [], []
    deciding = 0
    hits = ctx.record.find("Condition", codes)
    if unless is not None:
        hits = [hit for hit in hits if not coded_in(hit.raw.get("code"), unless)]
    for i, hit in enumerate(hits):
        if decides is not None and deciding >= DECIDING_CONDITIONS_LISTED:
            return found, ignored, len(hits) - i
        try:
            cond = ctx.record.model(hit.raw)
        except InvalidResource as exc:
            ignored.append(invalid_evidence(ctx, hit.raw, exc))
            continue
        coding = matching_coding(cond.code, codes)
        date = condition_date(cond)
        ver, clin = verification(cond), clinical_status(cond)
        ev = Evidence(reference=ctx.record.reference(hit.raw), code=coding_text(coding) if coding else None,
                      display=concept_label(cond.code, coding), date=date.text if date else None,
                      status=f"{clin}/{ver_text(cond, ver)}")
        if ver == EXCLUDED:
            ev.role, ev.note = Role.IGNORED, "refuted or entered in error; ignored"
            ignored.append(ev)
        elif date is not None and date.first_day > ctx.as_of:
            ev.role, ev.note = Role.IGNORED, "dated after the evaluation date; ignored"
            ignored.append(ev)
        else:
            found.append(FoundCondition(hit.raw, cond, ver, clin, ev))
            if decides is not None and decides(found[-1]):
                deciding += 1
    return found, ignored, 0


def ver_text(cond: Any, ver: str) -> str:
    """A Condition's verification status as recorded (its first code), for evidence and reasons."""
    if cond.verificationStatus is None:
        return "no verification status"
    for c in cond.verificationStatus.coding or ():
        if c.code:
            return c.code
    return ver


def _label(found: FoundCondition) -> str:
    return found.evidence.display or found.evidence.code or "condition"


def decided(result: Result, reason: str, decisive: list[Evidence], everything: list[Evidence],
            why: Why | None = None, *, absence_of: tuple[str, ...] = ()) -> Outcome:
    """An outcome whose decisive evidence comes first, then the rest as seen.
    `absence_of`: the resource types of which it found nothing (see Outcome)."""
    chosen = {id(e) for e in decisive}
    for e in decisive:
        e.role = Role.DECISIVE
    rest = [e for e in everything if id(e) not in chosen]
    return Outcome(result, reason, list(decisive) + rest, why=why, absence_of=absence_of)


class SiteDependentCodes(RuleModel):
    """Codes too general on their own (e.g. 'malignant neoplastic disease', or
    mCODE's 'secondary malignant neoplastic disease') that qualify when the
    Condition's bodySite says where."""

    codes: list[str] = Field(min_length=1)
    body_site_codes: list[str] = Field(min_length=1)
    # Without a bodySite: unknown ("nonspecific code": it may be the concept), or ignored when
    # the general code without a site is known not to count (the protocol reading says so).
    without_body_site: Literal["unknown", "ignore"] = "unknown"
    # Body sites named by text whose code the site sets lack (a local site code, a SNOMED structure
    # missing from the shipped set): such a Condition may qualify, so it is unknown, never ignored.
    site_mentions: TextMentions | None = None


def _site_named(ctx: Context, raw: dict[str, Any], site_rule: SiteDependentCodes) -> tuple[str, Why] | None:
    """(text, why) of a body site the site sets cannot match whose text names a qualifying site."""
    mentions = site_rule.site_mentions
    if mentions is None:
        return None
    known = ctx.codes(mentions.other_codes) if mentions.other_codes else None
    sites = raw.get("bodySite")
    for site in sites if isinstance(sites, list) else ():
        named = named_by_text(ctx, site, mentions, None, known)
        if named is not None:
            return named[0], named[2]
    return None


class _ConditionsDecide(RuleModel):
    """What both condition kinds do: find the Conditions coded in the kind's main codes,
    reading only as far as one that counts (confirmed; active, or inactive where the kind
    counts an inactive one), then decide on what was found."""

    def _main_codes(self) -> list[str]:  # pragma: no cover - each kind names its own
        raise NotImplementedError

    def _inactive_counts(self) -> bool:  # pragma: no cover - each kind says
        raise NotImplementedError

    def _counts(self, f: FoundCondition) -> bool:
        return f.verification == CONFIRMED and (f.active or self._inactive_counts())

    def evaluate(self, ctx: Context) -> Outcome:
        found, ignored, not_read = find_conditions_until(ctx, self._main_codes(), self._counts)
        outcome = self._decide(ctx, found, ignored)
        outcome.not_read = not_read
        return outcome

    def _decide(self, ctx: Context, found: list[FoundCondition], ignored: list[Evidence]) -> Outcome:
        raise NotImplementedError  # pragma: no cover


class ConditionPresentRule(_ConditionsDecide):
    type: Literal["condition-present"]
    code_elements = {"Specimen": "type"}  # a cytology specimen's kind
    label: str  # what is looked for, in words: "primary breast cancer"
    codes: list[str] = Field(min_length=1)
    # "History of" codes that count as the concept whatever their clinicalStatus (an excised
    # primary is recorded as Z85.3 once treated); the evidence says "history of".
    history_codes: list[str] = []
    nonspecific_codes: list[str] = []
    site_dependent: list[SiteDependentCodes] = []
    inactive_result: Literal["pass", "review"] = "pass"
    cytology: Cytology | None = None
    mentions: TextMentions | None = None

    @cached_property
    def _main_and_history(self) -> list[str]:
        return self.codes + self.history_codes

    @cached_property
    def _specific(self) -> list[str]:
        return self.codes + self.history_codes + self.nonspecific_codes

    @cached_property
    def _conditions_read(self) -> list[str]:
        return self._specific + [n for site in self.site_dependent for n in site.codes]

    def reads(self) -> dict[str, list[str]]:
        conditions = self._conditions_read
        out = {"Condition": conditions}
        if self.cytology:
            out |= {"Observation": self.cytology.codes, "DiagnosticReport": self.cytology.codes,
                    "Specimen": self.cytology.specimen_type_codes}
        return out

    def includes(self) -> dict[str, tuple[str, ...]]:
        # The cytology reading follows a report to its results and specimen, which may be coded
        # otherwise than the search asks, or name no patient (a Specimen without subject).
        return {"DiagnosticReport": ("DiagnosticReport:result", "DiagnosticReport:specimen")} if self.cytology else {}

    def _main_codes(self) -> list[str]:
        return self.codes

    def _inactive_counts(self) -> bool:
        return self.inactive_result == "pass"

    def _decide(self, ctx: Context, found: list[FoundCondition], ignored: list[Evidence]) -> Outcome:
        counting = [f for f in found if self._counts(f)]
        if counting:  # decided by the main codes: the other readings could only add listed evidence
            return decided(Result.PASS, f"{_label(counting[0])} recorded", [f.evidence for f in counting],
                           [f.evidence for f in found] + ignored)
        # A Condition is read by the first of these that codes it (a leptomeningeal code is also a
        # secondary malignant neoplasm): the main codes, history codes, nonspecific codes, general ones.
        history, nonspecific = [], []
        if self.history_codes:
            history, more_ignored = find_conditions(ctx, self.history_codes, unless=ctx.codes(self.codes))
            ignored += more_ignored
            for h in history:
                h.evidence.note = "history of: counts whatever its clinical status"
        if self.nonspecific_codes:
            nonspecific, more_ignored = find_conditions(ctx, self.nonspecific_codes,
                                                        unless=ctx.codes(self._main_and_history))
            ignored += more_ignored
        specific = ctx.codes(self._specific)
        unread_sites: list[tuple[FoundCondition, str, Why]] = []  # the Condition, its site's text, why
        for site_rule in self.site_dependent:
            general, more_ignored = find_conditions(ctx, site_rule.codes, unless=specific)
            ignored += more_ignored
            sites = ctx.codes(site_rule.body_site_codes)
            for g in general:
                if any(concept_in(site, sites) for site in g.model.bodySite or ()):
                    g.evidence.note = "general code; its body site qualifies it"
                    found.append(g)
                elif g.model.bodySite and (site := _site_named(ctx, g.raw, site_rule)) is not None:
                    g.evidence.note = f"general code; its body site '{site[0]}' is recorded with " \
                                      f"{recorded_with(site[1])}"
                    unread_sites.append((g, *site))
                elif g.model.bodySite:
                    g.evidence.role, g.evidence.note = Role.IGNORED, "general code with another body site"
                    ignored.append(g.evidence)
                elif site_rule.without_body_site == "ignore":
                    g.evidence.role, g.evidence.note = Role.IGNORED, "general code without a body site; " \
                        "does not count"
                    ignored.append(g.evidence)
                else:
                    g.evidence.note = "general code without a body site"
                    nonspecific.append(g)
        cytology = read_cytology(ctx, self.cytology) if self.cytology else CytologyFindings([], [], [], [])
        everything = [f.evidence for f in found + history + nonspecific] + [g.evidence for g, _, _ in unread_sites] + \
            cytology.positive + cytology.unsure + \
            cytology.unreadable + ignored + cytology.ignored
        confirmed = [f for f in found if f.verification == CONFIRMED]
        counting = [f for f in confirmed if self._counts(f)]
        inactive = [f for f in confirmed if f not in counting]
        unconfirmed = [f for f in found + history if f.verification == UNCONFIRMED]
        confirmed_history = [h for h in history if h.verification == CONFIRMED]
        if counting:
            return decided(Result.PASS, f"{_label(counting[0])} recorded", [f.evidence for f in counting],
                           everything)
        if confirmed_history:
            return decided(Result.PASS, f"history of {self.label} recorded ({_label(confirmed_history[0])})",
                           [h.evidence for h in confirmed_history], everything)
        if cytology.positive:
            return decided(Result.PASS, f"{self.cytology.label} positive for malignant cells", cytology.positive,
                           everything)
        if inactive:
            return decided(Result.REVIEW, f"{_label(inactive[0])} recorded as {inactive[0].clinical}: "
                           "confirm it is current", [f.evidence for f in inactive], everything)
        if unconfirmed:
            return decided(Result.UNKNOWN, f"{_label(unconfirmed[0])} is not confirmed "
                           f"({ver_text(unconfirmed[0].model, UNCONFIRMED)})",
                           [f.evidence for f in unconfirmed], everything, Why.DIAGNOSIS_UNCONFIRMED)
        if nonspecific:
            return decided(Result.UNKNOWN, f"only a nonspecific code ({_label(nonspecific[0])}): confirm "
                           f"{self.label}", [f.evidence for f in nonspecific], everything, Why.NONSPECIFIC_CODE)
        if unread_sites:
            g, site, why = unread_sites[0]
            return decided(Result.UNKNOWN, f"{_label(g)} with a body site '{site}' recorded with {recorded_with(why)}: "
                           "it may be "
                           f"{self.label}", [g.evidence for g, _, _ in unread_sites], everything, why)
        if cytology.unsure:
            return decided(Result.UNKNOWN, f"positive cytology, but the specimen is not recorded as "
                           f"{self.cytology.label}", cytology.unsure, everything, Why.SPECIMEN_NOT_CONFIRMED)
        if cytology.unreadable:
            return decided(Result.UNKNOWN, f"a {self.cytology.label} cytology result could not be read "
                           f"({cytology.unreadable[0].value or 'no readable value'}): it may show {self.label}",
                           cytology.unreadable, everything, Why.UNINTERPRETABLE)
        if has_invalid(everything):
            return decided(Result.UNKNOWN, f"a possibly relevant record is not valid FHIR; cannot rule out "
                           f"{self.label}", [], everything, Why.INVALID_RESOURCE)
        if self.mentions is not None:
            named = unread_mentions(ctx, "Condition", ctx.codes(self._conditions_read), self.mentions)
            if named:
                return decided(Result.UNKNOWN, mention_reason(named[0], self.label), [e for e, _ in named],
                               everything, named[0][1])
        return decided(Result.FAIL, f"no {self.label} recorded", [], everything,
                       absence_of=("Condition",) + (("Observation", "DiagnosticReport") if self.cytology else ()))


class ConditionAbsentRule(_ConditionsDecide):
    type: Literal["condition-absent"]
    label: str  # "HIV infection or primary immunodeficiency"
    fail_codes: list[str] = []
    review_codes: list[str] = []  # current ones give review (NCT01325207's brain metastases: review only)
    review_prompt: str = "a clinician's call"  # what the reviewer is asked, after "<diagnosis> recorded: "
    inactive_result: Literal["fail", "review", "pass"] = "review"
    mentions: TextMentions | None = None

    @model_validator(mode="after")
    def _something_to_find(self) -> "ConditionAbsentRule":
        if not self.fail_codes and not self.review_codes:
            raise ValueError("give failCodes, reviewCodes or both")
        return self

    @cached_property
    def _conditions_read(self) -> list[str]:
        return self.fail_codes + self.review_codes

    def reads(self) -> dict[str, list[str]]:
        return {"Condition": self._conditions_read}

    def _main_codes(self) -> list[str]:
        return self.fail_codes

    def _inactive_counts(self) -> bool:
        return self.inactive_result == "fail"

    def _decide(self, ctx: Context, failing: list[FoundCondition], ignored: list[Evidence]) -> Outcome:
        reviewing, more_ignored = find_conditions(ctx, self.review_codes)
        ignored += more_ignored
        confirmed = [f for f in failing if f.verification == CONFIRMED]
        current = [f for f in confirmed if self._counts(f)]
        inactive = [f for f in confirmed if f not in current]
        unconfirmed = [f for f in failing if f.verification == UNCONFIRMED]
        to_review = [r for r in reviewing if r.active]
        for r in reviewing:
            if not r.active:
                r.evidence.role, r.evidence.note = Role.IGNORED, f"{r.clinical}; not current"
        everything = [f.evidence for f in failing + reviewing] + ignored
        if current:
            return decided(Result.FAIL, f"{_label(current[0])} recorded", [f.evidence for f in current],
                           everything)
        if unconfirmed:
            return decided(Result.UNKNOWN, f"{_label(unconfirmed[0])} is recorded but not confirmed",
                           [f.evidence for f in unconfirmed], everything, Why.DIAGNOSIS_UNCONFIRMED)
        if has_invalid(everything):
            return decided(Result.UNKNOWN, f"a possibly relevant record is not valid FHIR; cannot rule out "
                           f"{self.label}", [], everything, Why.INVALID_RESOURCE)
        if inactive and self.inactive_result == "review":
            return decided(Result.REVIEW, f"{_label(inactive[0])} recorded as {inactive[0].clinical}: "
                           "a clinician's call", [f.evidence for f in inactive], everything)
        if to_review:
            return decided(Result.REVIEW, f"{_label(to_review[0])} recorded: {self.review_prompt}",
                           [f.evidence for f in to_review], everything)
        if self.mentions is not None:
            named = unread_mentions(ctx, "Condition", ctx.codes(self._conditions_read), self.mentions)
            if named:
                return decided(Result.REVIEW, mention_reason(named[0], self.label), [e for e, _ in named],
                               everything, named[0][1])
        return decided(Result.PASS, f"no {self.label} recorded", [], everything, absence_of=("Condition",))
