"""The view model of a card: what each criterion shows (its title, reason, evidence lines
with value, unit, date and source) and the order the checklist takes."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping


from ..engine import (CodeSet, CriterionResult, Evidence, Order, Result, Trial, coding_key, shown_number,
                      shown_recorded)
from .text import md_escape, unit_display

# Checklist order: what needs doing first. An ineligible card leads with what rules the patient out.
ORDER_DEFAULT = (Result.UNKNOWN, Result.FAIL, Result.REVIEW, Result.PASS, Result.NOT_APPLICABLE)


ORDER_INELIGIBLE = (Result.FAIL, Result.UNKNOWN, Result.REVIEW, Result.PASS, Result.NOT_APPLICABLE)


RANK_DEFAULT = {r.value: i for i, r in enumerate(ORDER_DEFAULT)}


RANK_INELIGIBLE = {r.value: i for i, r in enumerate(ORDER_INELIGIBLE)}


@dataclass(frozen=True)
class CriterionInfo:
    title: str
    card_note: str | None
    analytes: tuple[tuple[str, CodeSet], ...]  # lab analyte names and their codes, to label evidence

    def analyte_label(self, code: str | None) -> str | None:
        """The name of the analyte a "system|code" belongs to (None if none)."""
        if not self.analytes or not code or "|" not in code:
            return None
        key = coding_key(*code.split("|", 1))
        return next((name for name, codes in self.analytes if codes.contains(key)), None)


@dataclass(frozen=True)
class TrialInfo:
    nct_id: str
    short_title: str
    title: str
    study_url: str
    definition_version: str
    criteria: Mapping[str, CriterionInfo]

    @classmethod
    def of(cls, trial: Trial) -> "TrialInfo":
        d = trial.definition
        criteria = {}
        for c in d.criteria:
            analytes = tuple((name, trial.library.get(codes)) for name, codes in c.rule.evidence_labels())
            criteria[c.id] = CriterionInfo(title=c.title, card_note=c.card_note, analytes=analytes)
        return cls(nct_id=d.nct_id, short_title=d.short_title, title=d.title, study_url=d.study_url,
                   definition_version=d.definition_version, criteria=criteria)

    def text_vars(self) -> dict[str, str]:
        return {"nct_id": self.nct_id, "short_title": self.short_title, "title": self.title,
                "study_url": self.study_url}


def criterion_title(info: TrialInfo, c: CriterionResult) -> str:
    ci = info.criteria.get(c.id)
    return c.title or (ci.title if ci is not None else None) or c.id


def distinct(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


# What the templates read (cards/README.md): records with attributes, as Jinja reads `item.title`
# first (on a dict, every such read raises and catches an AttributeError before the key is tried).

@dataclass(slots=True)
class EvidenceView:
    """One decisive piece of evidence (`ev`)."""

    reference: str
    label: str | None
    display: str | None
    comparator: str | None
    value: str | None
    unit: str | None
    converted: dict[str, str] | None  # value, unit
    uln: dict[str, Any] | None  # value, unit, assumed
    ratio_to_uln: str | None
    date: str | None
    note: str | None
    line: str


@dataclass(slots=True)
class CriterionView:
    """One criterion of the checklist (`item`)."""

    id: str
    kind: str
    result: str
    symbol: str
    title: str
    short_name: str
    reason: str
    reason_code: str | None
    order: Order | None
    evidence: list[EvidenceView]
    evidence_line: str | None
    card_note: str | None


def evidence_view(e: Evidence, ci: CriterionInfo | None, several: bool, result: Result) -> EvidenceView:
    """One decisive piece of evidence: as recorded, plus the converted value only
    when it differs from what was recorded (number or unit), and `line`: the
    evidence as one Markdown-safe line (what was found, value as recorded,
    converted value, ULN · day · source). The line names the analyte when the
    criterion shows `several` pieces; else the display when that is short, or when
    there is no value and the criterion is not met."""
    label = ci.analyte_label(e.code) if ci is not None else None
    display, unit = e.display, e.unit
    value = shown_recorded(e.value)  # numbers at the precision recorded (engine/model.py)
    if label is None and value in (None, ""):
        label = display  # a diagnosis or allergy: what was found is the evidence
    unit_shown = unit_display(unit) if unit else ""
    converted = converted_shown = None
    if e.converted is not None:
        converted_shown = unit_display(e.converted.unit)
        if differs(e.value, unit_shown, e.converted.value, converted_shown):
            converted = {"value": shown_number(e.converted.value), "unit": e.converted.unit}
    uln = None
    if e.uln is not None:
        uln = {"value": shown_number(e.uln.value), "unit": e.uln.unit, "assumed": e.uln.assumed}
    date = e.date[:10] if e.date else None

    if several and label:
        name = label
    elif display and (len(display) <= 32 or (not value and result is not Result.PASS)):
        name = display
    else:
        name = ""
    comparator = e.comparator or ""  # "<0.2 mg/dL": the comparator stays with the value, converted too
    measured = f"{comparator}{value}{' ' + unit_shown if unit else ''}" if value else ""
    shown = f"(= {comparator}{converted['value']} {converted_shown})" if converted else ""
    what = " ".join(filter(None, (name, measured, shown)))  # the parts that say something
    if uln:
        limit = f"ULN {uln['value']} {unit_display(uln['unit'])}" + (" (assumed)" if uln["assumed"] else "")
        what = ", ".join(filter(None, (what, limit)))
    return EvidenceView(
        reference=e.reference, label=label, display=display, comparator=e.comparator, value=value, unit=unit,
        converted=converted, uln=uln,
        ratio_to_uln=shown_number(e.ratio_to_uln) if e.ratio_to_uln is not None else None, date=date, note=e.note,
        line=" · ".join(map(md_escape, filter(None, (what, date, e.reference)))))


def differs(value: str | None, unit_shown: str, converted: Decimal, converted_unit_shown: str) -> bool:
    # Compared as shown: "IU/L" and "[IU]/L", "10^9/L" and "10*9/L" read the same on the card.
    if unit_shown != converted_unit_shown:
        return True
    try:
        return value is None or Decimal(value) != converted
    except (InvalidOperation, ValueError):
        return True
