"""A readable checklist of an evaluation, for terminals and research coordinators."""

from __future__ import annotations

from .engine import (Evidence, Result, Role, Trial, TrialEvaluation, shown_number, shown_recorded, shown_text,
                     system_name)

MARKS = {Result.PASS: "✔", Result.FAIL: "✘", Result.UNKNOWN: "?", Result.REVIEW: "👁",
         Result.NOT_APPLICABLE: "–"}


def evidence_line(e: Evidence) -> str:
    """One piece of evidence on one line. Numbers as a person reads them (engine/model.py):
    recorded values at the precision recorded, converted values and ULNs to at most three
    significant digits; the comparator stays with the value ("<0.2 mg/dL", "= <3.42 umol/L").
    The JSON output keeps them all as recorded and as computed."""
    parts = [e.display or e.code or e.reference]
    comparator = e.comparator or ""
    if e.value is not None:
        parts.append(" ".join(p for p in (comparator + shown_recorded(e.value), e.unit) if p))
    if e.converted is not None:
        parts.append(f"= {comparator}{shown_number(e.converted.value)} {e.converted.unit}")
    if e.uln is not None:
        parts.append(f"ULN {shown_number(e.uln.value)} {e.uln.unit}" + (" (assumed)" if e.uln.assumed else ""))
    if e.date:
        parts.append(e.date)
    parts.append(e.reference)
    if e.note:
        parts.append(e.note)
    return " · ".join(parts)


def text_report(evaluation: TrialEvaluation, trial: Trial) -> str:
    d = trial.definition
    lines = [f"{d.nct_id} — {d.short_title} (definition {d.definition_version})",
             f"Patient {evaluation.patient or '(no id)'} · as of {evaluation.as_of.isoformat()} · "
             f"status: {evaluation.status.value.upper()}", ""]
    width = max(len(c.id) for c in evaluation.criteria)
    for c in evaluation.criteria:
        tag = f" [{c.why.value}]" if c.why else ""
        lines.append(f"  {MARKS[c.result]} {c.id:<{width}}  {c.result.value:<14} {shown_text(c.reason)}{tag}")
        if c.order is not None:
            lines.append(f"      → order: {c.order.display} ({system_name(c.order.system)} {c.order.code})")
        for e in c.evidence:
            if e.role is not Role.IGNORED or c.result is Result.UNKNOWN:
                lines.append(f"      {'•' if e.role is Role.DECISIVE else '·'} {evidence_line(e)}")
        if c.not_read:
            lines.append(f"      · {c.not_read} more matching record{'s' if c.not_read > 1 else ''} not read "
                         "(they cannot change the result)")
    return "\n".join(lines) + "\n"
