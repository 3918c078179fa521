"""CDS Hooks 2.0 cards from trial evaluations.

The engine says what is true (`TrialEvaluation`); this module says it to a
clinician: one `info` card per trial that the patient may qualify for (or that
needs data to decide), with a short Markdown checklist, suggestions that create
draft FHIR ServiceRequests (the missing tests; a referral to the study team),
and the evaluation JSON itself under `extension` for integrations.

Everything a person reads comes from the templates folder (by default the
packaged `cds_service.card_templates`, i.e. the top-level `cards/` folder):
`summary.txt.j2`, `detail.md.j2` and `text.yaml`. They are read and checked once,
when the renderer is built: a missing file or key, a template syntax error or a
misspelt variable is a ValueError naming the file, at start-up rather than when
a chart opens.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import jinja2
import jinja2.meta

from ..engine import (FHIR_ID, CodeSet, CriterionResult, Evidence, Measured, Order, Result, Role, Status, Trial,
                      TrialEvaluation, UpperLimit, Why, is_fhir_id, shown_text)
from .templates import (DETAIL_TEMPLATE, SUMMARY_TEMPLATE, TEMPLATE_VARS, TEXT_FILE, TRIAL_VARS, jinja_error,
                        load_texts, read_files, refuse_unknown)
from .text import RAW_HTML, find_empty_values, fit_summary, md_escape
from .view import (RANK_DEFAULT, RANK_INELIGIBLE, CriterionInfo, CriterionView, TrialInfo, criterion_title,
                   distinct, evidence_view)

INDICATOR = "info"
TOPIC_SYSTEM = "https://clinicaltrials.gov"
SNOMED = "http://snomed.info/sct"
# ServiceRequest.category of a suggested order, by Order.category (None: a laboratory test); the
# codes of FHIR R4's ServiceRequest category example value set (SNOMED CT).
ORDER_CATEGORIES = {None: {"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"},
                    "imaging": {"system": SNOMED, "code": "363679005", "display": "Imaging"}}
REFERRAL_CODE = {"system": SNOMED, "code": "3457005", "display": "Patient referral"}
MAX_DECISIVE_EVIDENCE = 2
#: The order of cards in one answer, by the trial's status (ineligible: shown only with show_ineligible).
CARD_ORDER = {Status.ELIGIBLE: 0, Status.NEEDS_DATA: 1, Status.INELIGIBLE: 2}


_REQUESTER = re.compile(rf"(Practitioner|PractitionerRole)/{FHIR_ID}")


@dataclass(frozen=True)
class CardContext:
    """What the hook request says about who and where (CDS Hooks `context`)."""

    patient_id: str  # context.patientId
    user_id: str | None = None  # context.userId, e.g. "Practitioner/123" -> ServiceRequest.requester
    encounter_id: str | None = None  # context.encounterId -> ServiceRequest.encounter

    def __post_init__(self) -> None:
        if not is_fhir_id(self.patient_id):
            raise ValueError(f"patient_id {self.patient_id!r} is not a FHIR id")
        if self.encounter_id:
            enc = self.encounter_id.removeprefix("Encounter/")
            if not is_fhir_id(enc):
                raise ValueError(f"encounter_id {self.encounter_id!r} is not a FHIR id")

    @property
    def requester(self) -> dict[str, str] | None:
        """Only a Practitioner or PractitionerRole can request a ServiceRequest
        here; a Patient or RelatedPerson user (patient portals) cannot."""
        if self.user_id and _REQUESTER.fullmatch(self.user_id):
            return {"reference": self.user_id}
        return None

    @property
    def encounter(self) -> dict[str, str] | None:
        if self.encounter_id:
            return {"reference": f"Encounter/{self.encounter_id.removeprefix('Encounter/')}"}
        return None


class CardRenderer:
    """Renders CDS Hooks 2.0 cards for trial evaluations. Build it once (it reads
    and checks the templates) and reuse it; it holds no per-request state."""

    def __init__(self, template_dir: str | Path | None = None, *, show_ineligible: bool = False,
                 new_uuid: Callable[[], str] = lambda: str(uuid.uuid4())):
        self.show_ineligible = show_ineligible
        self._new_uuid = new_uuid
        # Built once per trial definition: its info, and its texts that use the trial's variables only.
        self._trial_info: dict[tuple[str, str], tuple[TrialInfo, dict[str, str]]] = {}
        files = read_files(template_dir)
        self._env = jinja2.Environment(
            loader=jinja2.DictLoader({SUMMARY_TEMPLATE: files[SUMMARY_TEMPLATE],
                                      DETAIL_TEMPLATE: files[DETAIL_TEMPLATE]}),
            undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
            keep_trailing_newline=False)
        self._env.filters["md"] = md_escape
        self._templates = {name: self._compile_file(name, files[name]) for name in (SUMMARY_TEMPLATE,
                                                                                 DETAIL_TEMPLATE)}
        self._load_text(files[TEXT_FILE])
        self._self_check()

    # construction ------------------------------------------------------------

    def _compile_file(self, name: str, source: str) -> jinja2.Template:
        try:
            undeclared = jinja2.meta.find_undeclared_variables(self._env.parse(source, name=name))
            template = self._env.get_template(name)
        except jinja2.TemplateError as exc:
            raise ValueError(f"{name}: {jinja_error(exc)}") from None
        refuse_unknown(name, undeclared, TEMPLATE_VARS)
        return template

    def _load_text(self, source: str) -> None:
        texts = load_texts(source)  # checked: every text there, each template's variables available to it
        self._texts = {key: self._env.from_string(value) for key, value in texts.templates().items()}
        self._trial_keys = frozenset(key for key, value in texts.templates().items()
                                     if jinja2.meta.find_undeclared_variables(self._env.parse(value)) <= TRIAL_VARS)
        self._symbols = texts.symbol_texts()
        self._override_reasons = texts.override_codings()
        self._short_names = dict(texts.short_names)
        self._failed_names = dict(texts.failed_names)

    def _self_check(self) -> None:
        """Render sample cards of every status, so a template that breaks on some
        data (a misspelt attribute, a filter on None) fails now, not at chart open."""
        info, evaluations = _samples()
        ctx = CardContext("sample", "Practitioner/sample", "sample")
        for evaluation in evaluations:
            self._render(info, self._trial_texts(info), evaluation, ctx, show_ineligible=True,
                         new_uuid=lambda: str(uuid.uuid4()))

    # rendering ----------------------------------------------------------------

    def render(self, trial: Trial, evaluation: TrialEvaluation, ctx: CardContext, *,
               offered: set[tuple[str, str]] | None = None) -> dict | None:
        """The card for one trial, or None when there is nothing to show
        (ineligible, unless show_ineligible). `offered`: orders (system, code) earlier cards
        of the same answer suggest; this card does not suggest them again, and adds its own."""
        if evaluation.trial != trial.id:
            raise ValueError(f"evaluation is for trial {evaluation.trial}, not {trial.id}")
        if evaluation.patient is not None and evaluation.patient != ctx.patient_id:
            raise ValueError(f"evaluation is for patient {evaluation.patient}, not {ctx.patient_id}")
        key = (trial.id, trial.definition.definition_version)
        built = self._trial_info.get(key)
        if built is None:
            info = TrialInfo.of(trial)
            built = self._trial_info[key] = (info, self._trial_texts(info))
        return self._render(*built, evaluation, ctx, show_ineligible=self.show_ineligible, new_uuid=self._new_uuid,
                            offered=offered)

    def render_all(self, results: Iterable[tuple[Trial, TrialEvaluation]], ctx: CardContext
                   ) -> list[tuple[Trial, TrialEvaluation, dict | None]]:
        """Each trial's evaluation with its card (None: no card), in the order the cards
        are shown: the trials the patient may qualify for first, then those that need data,
        each group in the order given. A test two trials need is suggested once, on the
        first card that needs it (the EHR shows the cards together: two suggestions would be
        two orders); the later card still lists what is missing."""
        offered: set[tuple[str, str]] = set()
        ranked = sorted(results, key=lambda result: CARD_ORDER[result[1].status])
        return [(trial, evaluation, self.render(trial, evaluation, ctx, offered=offered))
                for trial, evaluation in ranked]

    def _render(self, info: TrialInfo, texts: dict[str, str], evaluation: TrialEvaluation, ctx: CardContext, *,
                show_ineligible: bool, new_uuid: Callable[[], str],
                offered: set[tuple[str, str]] | None = None) -> dict | None:
        status = evaluation.status
        if status is Status.INELIGIBLE and not show_ineligible:
            return None
        if not evaluation.complete:
            raise ValueError(f"the evaluation of {info.nct_id} stopped at its first failing criterion: it has no card")
        view = self._view(info, evaluation, ctx)
        summary = fit_summary(self._file(SUMMARY_TEMPLATE, view))
        if not summary:
            raise ValueError(f"{SUMMARY_TEMPLATE}: rendered an empty summary for status {status.value}")
        detail = self._file(DETAIL_TEMPLATE, view).strip()
        if RAW_HTML.search(detail):
            raise ValueError(f"{DETAIL_TEMPLATE}: the detail contains raw HTML")
        card: dict[str, Any] = {"uuid": new_uuid(), "summary": summary, "indicator": INDICATOR}
        if detail:
            card["detail"] = detail
        card["source"] = {"label": texts["source.label"], "url": info.study_url,
                          "topic": {"system": TOPIC_SYSTEM, "code": info.nct_id, "display": info.short_title}}
        suggestions = self._suggestions(info, texts, evaluation, ctx, new_uuid, set() if offered is None else offered)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        card["overrideReasons"] = [dict(r) for r in self._override_reasons]
        card["links"] = [{"label": texts["link.label"], "url": info.study_url, "type": "absolute"}]
        # What templates, texts and the request's context filled in is checked here; the
        # evaluation's JSON leaves out every field with nothing to say by construction (engine/model.py).
        empty = find_empty_values(card)
        if empty:
            raise ValueError(f"card for {info.nct_id} would carry empty values at {', '.join(empty)}")
        card["extension"] = {"trial-eligibility": evaluation.to_json()}
        return card

    def _file(self, name: str, view: dict[str, Any]) -> str:
        try:
            return self._templates[name].render(view)
        except jinja2.TemplateError as exc:
            raise ValueError(f"{name}: {jinja_error(exc)}") from None

    def _trial_texts(self, info: TrialInfo) -> dict[str, str]:
        variables = info.text_vars()
        return {key: self._text(key, variables) for key in self._trial_keys}

    def _text(self, key: str, variables: dict[str, str]) -> str:
        try:
            text = " ".join(self._texts[key].render(variables).split())
        except jinja2.TemplateError as exc:
            raise ValueError(f"{TEXT_FILE}: '{key}': {jinja_error(exc)}") from None
        if not text:
            raise ValueError(f"{TEXT_FILE}: '{key}' rendered empty")
        return text

    # the template variables ------------------------------------------------------

    def _short_name(self, info: TrialInfo, c: CriterionResult) -> str:
        if c.id in self._short_names:
            return self._short_names[c.id]
        ci = info.criteria.get(c.id)
        if ci is not None and ci.analytes:
            return "/".join(name for name, _ in ci.analytes)
        return criterion_title(info, c)

    def _view(self, info: TrialInfo, evaluation: TrialEvaluation, ctx: CardContext) -> dict[str, Any]:
        status = evaluation.status
        items = [self._item(info, c) for c in evaluation.criteria]
        rank = RANK_INELIGIBLE if status is Status.INELIGIBLE else RANK_DEFAULT
        ordered = sorted(items, key=lambda item: rank[item.result])  # stable: definition order within
        unknown = [i for i in items if i.result == "unknown"]
        failed = [i for i in items if i.result == "fail"]
        return {
            "trial": info,  # nct_id, short_title, title, study_url, definition_version
            "status": status._value_,
            "as_of": evaluation.as_of.isoformat(),
            "patient_id": ctx.patient_id,
            "items": ordered,
            "missing": unknown,
            "notes": [i for i in items if i.card_note],
            "needs": distinct(i.short_name for i in unknown),
            "fails": distinct(self._failed_names.get(i.id, i.short_name) for i in failed),
            "symbols": dict(self._symbols),
        }

    def _item(self, info: TrialInfo, c: CriterionResult) -> CriterionView:
        ci = info.criteria.get(c.id)
        decisive = [e for e in c.evidence if e.role is Role.DECISIVE][:MAX_DECISIVE_EVIDENCE]
        several = len(decisive) > 1
        evidence = [evidence_view(e, ci, several, c.result) for e in decisive]
        result = c.result._value_
        return CriterionView(
            id=c.id, kind=c.kind, result=result, symbol=self._symbols[result], title=criterion_title(info, c),
            short_name=self._short_name(info, c),
            reason=shown_text(c.reason),  # no 28-digit numbers (engine/model.py)
            reason_code=c.why._value_ if c.why is not None else None, order=c.order, evidence=evidence,
            # Joined here, not by a loop in the template: Jinja's loop variable costs as
            # much as the rest of the checklist line.
            evidence_line="; ".join(ev.line for ev in evidence) or None,
            card_note=ci.card_note if ci is not None else None)

    # suggestions ------------------------------------------------------------------

    def _suggestions(self, info: TrialInfo, texts: dict[str, str], evaluation: TrialEvaluation, ctx: CardContext,
                     new_uuid: Callable[[], str], offered: set[tuple[str, str]]) -> list[dict[str, Any]]:
        status = evaluation.status
        if status is Status.INELIGIBLE:
            return []  # nothing to order or refer: a criterion already rules the patient out
        tv = info.text_vars()
        out = []
        orders: dict[tuple[str, str], tuple[Order, list[CriterionResult]]] = {}
        for c in evaluation.criteria:
            if c.result is Result.UNKNOWN and c.order is not None and (c.order.system, c.order.code) not in offered:
                orders.setdefault((c.order.system, c.order.code), (c.order, []))[1].append(c)
        offered.update(orders)
        for order, criteria in orders.values():
            ov = dict(tv, order=order.display,
                      criteria=", ".join(distinct(self._short_name(info, c) for c in criteria)),
                      criteria_titles="; ".join(criterion_title(info, c) for c in criteria))
            resource = self._service_request(
                ctx, code={"coding": [{"system": order.system, "code": order.code, "display": order.display}],
                           "text": order.display},
                reason=self._text("service_request.order_reason", ov), category=ORDER_CATEGORIES[order.category])
            out.append({"label": self._text("suggestions.order.label", ov), "uuid": new_uuid(),
                        "isRecommended": True,
                        "actions": [{"type": "create", "description": self._text("suggestions.order.description", ov),
                                     "resource": resource}]})
        referral = self._service_request(
            ctx, code={"coding": [dict(REFERRAL_CODE)], "text": texts["service_request.referral_text"]},
            reason=texts["service_request.referral_reason"], note=texts["service_request.referral_note"])
        out.append({"label": texts["suggestions.referral.label"], "uuid": new_uuid(),
                    "isRecommended": status is Status.ELIGIBLE,
                    "actions": [{"type": "create", "description": texts["suggestions.referral.description"],
                                 "resource": referral}]})
        return out

    @staticmethod
    def _service_request(ctx: CardContext, *, code: dict, reason: str, category: dict | None = None,
                         note: str | None = None) -> dict[str, Any]:
        sr: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"}
        if category is not None:
            sr["category"] = [{"coding": [dict(category)]}]
        sr["code"] = code
        sr["subject"] = {"reference": f"Patient/{ctx.patient_id}"}
        if ctx.requester is not None:
            sr["requester"] = ctx.requester
        if ctx.encounter is not None:
            sr["encounter"] = ctx.encounter
        sr["reasonCode"] = [{"text": reason}]
        if note:
            sr["note"] = [{"text": note}]
        return sr


def _samples() -> tuple[TrialInfo, list[TrialEvaluation]]:
    """A made-up trial and one evaluation per status, using every result, every
    evidence field and an order, so that the self-check walks every template branch."""
    lab_codes = CodeSet(name="sample", title="sample", entries=[])
    info = TrialInfo(
        nct_id="NCT00000000", short_title="Sample trial", title="Sample trial for the template check",
        study_url="https://clinicaltrials.gov/study/NCT00000000", definition_version="0",
        criteria={"lab": CriterionInfo("Sample lab", "Sample note", (("A", lab_codes), ("B", lab_codes))),
                  "dx": CriterionInfo("Sample diagnosis", None, ())})
    order = Order(key="o", system="http://loinc.org", code="0-0", display="Sample order")

    def lab_evidence() -> list[Evidence]:
        return [Evidence(reference="Observation/a", role=Role.DECISIVE, code="http://loinc.org|0-0",
                         display="Sample", value="1", unit="10*3/uL", comparator="<", date="2026-01-01T00:00:00Z",
                         converted=Measured(Decimal("1"), "10*9/L"),
                         uln=UpperLimit(Decimal("2"), "U/L", "fallback", True, "note"),
                         ratio_to_uln=Decimal("0.5"), status="final", note="note"),
                Evidence(reference="Condition/b", role=Role.DECISIVE, display="Sample diagnosis", date="2026")]

    def criteria(*extra: CriterionResult) -> list[CriterionResult]:
        return [CriterionResult("dx", "inclusion", Result.PASS, "present", lab_evidence(), title="Sample diagnosis"),
                CriterionResult("r", "exclusion", Result.REVIEW, "to review"),
                CriterionResult("na", "exclusion", Result.NOT_APPLICABLE, "not applicable"),
                *extra]

    unknown = [CriterionResult("lab", "exclusion", Result.UNKNOWN, "stale", lab_evidence(), why=Why.STALE,
                               order=order, title="Sample lab"),
               CriterionResult("u2", "exclusion", Result.UNKNOWN, "no data", why=Why.NO_DATA)]
    fail = CriterionResult("f", "exclusion", Result.FAIL, "fails", lab_evidence())
    as_of = dt.date(2026, 1, 1)
    return info, [TrialEvaluation(info.nct_id, "0", "sample", as_of, criteria()),
                  TrialEvaluation(info.nct_id, "0", "sample", as_of, criteria(*unknown)),
                  TrialEvaluation(info.nct_id, "0", "sample", as_of, criteria(*unknown, fail))]
