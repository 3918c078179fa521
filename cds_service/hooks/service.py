"""The patient-view service: gather the patient's data, evaluate every enabled
trial, answer with cards, and record what happened (without PHI)."""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from typing import Any

from flask import Response

from ..cards import CardContext, CardRenderer
from ..engine import Cut, PatientRecord, Trial, evaluate, newest_first
from ..fhir.client import FhirClient
from ..fhir.gather import MISSING, FhirAccess, gather
from ..fhir.terminology import TerminologyClient
from .config import Settings
from .discovery import HOOK, SERVICE_ID, DataNeed, data_needs, service_description
from .responses import error_response, json_response, operation_outcome, problems_response
from .store import Store
from .validation import HookRequest, Invalid, parse_hook_request

audit_log = logging.getLogger("cds_service.audit")


def log_event(**fields: Any) -> None:
    """One JSON line per event: hookInstance, service, outcome, status, latency — never PHI or tokens."""
    audit_log.info(json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":")))


class TrialEligibilityService:
    id = SERVICE_ID

    def __init__(self, settings: Settings, trials: list[Trial], client: FhirClient, renderer: CardRenderer,
                 store: Store, terminology: TerminologyClient | None = None):
        self.settings = settings
        self.trials = trials
        self.client = client
        self.terminology = terminology  # optional: codes the shipped sets lack (CDS_TERMINOLOGY_SERVER)
        self.renderer = renderer
        self.store = store
        self.needs: list[DataNeed] = data_needs(trials, settings.fhir_page_size)
        self.queries = {n.key: n.query for n in self.needs}
        self.required = {n.key for n in self.needs if n.required}
        self.description = service_description(trials, self.needs)

    def warm_up(self, resources: list[dict[str, Any]], patient_id: str) -> None:
        """Evaluate and render once at start-up, so the first chart opened does not
        pay for loading the UCUM registry, model classes and templates."""
        record = PatientRecord(resources)
        context = CardContext(patient_id=patient_id)
        for trial in self.trials:
            self.renderer.render(trial, evaluate(trial, record, self.settings.today()), context)

    def call(self, body: Any, started: float, parse_ms: float, hook_instance: str | None) -> Response:
        """`body` is the parsed request, `started` when the route was entered (so the
        time until now is what reading and parsing the body took), `parse_ms` what
        the JSON parse alone took, `hook_instance` its hookInstance if that is the UUID
        it should be (logged even for invalid requests, but no client text in logs)."""
        read_ms = _ms(started) - parse_ms
        try:
            request = parse_hook_request(body)
        except Invalid as exc:
            return self._finish(hook_instance, started, problems_response(400, "invalid", exc.problems), "invalid")
        if request.hook != HOOK:
            return self._finish(request.hookInstance, started,
                                error_response(400, "not-supported", f"service '{self.id}' answers the {HOOK} "
                                               f"hook, not '{request.hook}'", "hook"), "invalid")
        return self._evaluate(request, started, {"read": read_ms, "parse": parse_ms})

    def _evaluate(self, request: HookRequest, started: float, timings: dict[str, float]) -> Response:
        mark = time.monotonic()
        patient_id = request.context.patientId
        access = None
        if request.fhirServer:
            auth = request.fhirAuthorization
            access = FhirAccess(self.client, request.fhirServer, auth.access_token if auth else None,
                                auth.scope if auth else None)
        deadline = mark + self.settings.fhir_deadline
        as_of = self.settings.today()
        # A lab history is read only as far back as a lab criterion looks.
        enough = {n.key: partial(n.read_enough, as_of=as_of) for n in self.needs if n.lookback_days is not None}
        gathered = gather(self.queries, self.required, request.prefetch, patient_id, access, deadline, enough)
        timings["gather"] = _ms(mark)
        sources = {key: data.audit() for key, data in gathered.keys.items()}
        missing = gathered.missing(self.required)
        if missing:
            body = operation_outcome(
                ("not-found", f"required data '{m.key}' could not be obtained: {m.detail or 'missing'}",
                 f"prefetch.{m.key}") for m in missing)
            return self._finish(request.hookInstance, started, json_response(body, 412, "application/fhir+json"),
                                "precondition-failed", sources=sources, timings=timings)
        mark = time.monotonic()
        cuts = []
        for n in self.needs:
            data = gathered.keys[n.key]
            if data.source == MISSING:
                # An optional query that could not be made (not prefetched; no FHIR server, scope or answer;
                # a required one answered 412 above): finding none of its resources shows nothing.
                cuts.append(Cut(n.resource_type, n.codes, not_obtained=True))
            elif data.truncated:
                # A search cut short (page limit, deadline, look-back): what it did not return may exist. If
                # the search asked for newest first and the server did not sort, the newest may be missing too.
                cuts.append(Cut(n.resource_type, n.codes, n.newest_first and newest_first(data.resources)))
        record = PatientRecord(gathered.resources(), gathered.full_urls(), cuts=cuts)
        trials = self.trials
        if self.terminology is not None:  # members the server finds extend the sets; the shipped ones stay
            asked = time.monotonic()
            lookup = self.terminology.lookup(trials, record, deadline)
            sources["terminology"] = lookup.audit
            trials = [lookup.for_trial(trial) for trial in trials]
            timings["terminology"] = _ms(asked)
        # Without cards for ineligible trials, a trial is read only until a criterion rules the patient out.
        until_ineligible = not self.settings.show_ineligible
        evaluations = [(trial, evaluate(trial, record, as_of, until_ineligible=until_ineligible)) for trial in trials]
        timings["evaluate"] = _ms(mark) - timings.get("terminology", 0.0)
        mark = time.monotonic()
        context = CardContext(patient_id=patient_id, user_id=request.context.userId,
                              encounter_id=request.context.encounterId)
        cards, audited = [], []
        for trial, evaluation, card in self.renderer.render_all(evaluations, context):
            entry = {"trial": trial.id, "definitionVersion": trial.definition.definition_version,
                     "status": evaluation.status.value}
            if card is not None:
                cards.append(card)
                entry["card"] = card["uuid"]
                entry["suggestions"] = [s["uuid"] for s in card.get("suggestions", [])]
            audited.append(entry)
        timings["render"] = _ms(mark)
        return self._finish(request.hookInstance, started, json_response({"cards": cards}),
                            "cards" if cards else "no-cards", sources=sources, trials=audited, timings=timings)

    def _finish(self, hook_instance: str | None, started: float, response: Response, outcome: str, *,
                sources: dict[str, Any] | None = None, trials: list[dict[str, Any]] | None = None,
                timings: dict[str, float] | None = None) -> Response:
        latency = _ms(started)
        if timings is not None:
            timings["total"] = latency
        cards = [{"uuid": t["card"], "trial": t["trial"], "definitionVersion": t["definitionVersion"],
                  "status": t["status"], "suggestions": t.get("suggestions")} for t in trials or () if "card" in t]
        # Written once the response has gone out: the EHR does not wait for the audit.
        response.call_on_close(lambda: self.store.record_hook_call(
            hook_instance=hook_instance or "(invalid)", service=self.id, status_code=response.status_code,
            outcome=outcome, latency_ms=latency, data_sources=sources, trials=trials, timings=timings,
            cards=cards))
        log_event(event="hook", hookInstance=hook_instance, service=self.id, outcome=outcome,
                  status=response.status_code, latencyMs=round(latency, 1),
                  trials={t["trial"]: t["status"] for t in trials} if trials else None)
        return response


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000

