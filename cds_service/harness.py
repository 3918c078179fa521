"""The test harness: load the gold patients into a FHIR server, call the
patient-view hook for each WITHOUT prefetch (so the service fetches everything
from that server), and compare each outcome with the gold expectation.

    cds-service harness --fhir-server URL [--service URL|none] [--mode private|shared] [--gold PATH]

private (a server of our own, e.g. HAPI on 127.0.0.1): resources keep their
stable ids (PUT). shared (the public HAPI sandbox): every resource is created
anew (POST) and the Patient carries a unique identifier, so runs never collide
with other users' data; everything created is deleted afterwards. No
Authorization header is ever sent to the FHIR server; 5xx/429 are retried.

The service evaluates as of the gold set's date, the gold set's trial among the others: the
in-process service (`--service none`) is configured so (the enrolling trials and the gold set's);
an external one must run with CDS_EVALUATION_DATE set to it, CDS_TRIALS naming the trial if it
is not enrolling (and CDS_SHOW_INELIGIBLE=1 to compare every criterion, not only the status).

A gold set is a directory holding expectations.yaml and patients/ (tests/gold), or an
expectations file X.yaml whose patients are in the folder X/ beside it
(tests/gold/nct01325207.yaml). A case marked pendingEngine is reported, not failed, while the
engine gets it wrong, and fails the run once it is as expected (un-mark it), as the tests' strict
xfail does; one marked prefetchOnly (a shape no server holds, such as a reference to a resource
absent from the record) is not run.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
import yaml

HARNESS_SYSTEM = "https://cds-service.org/fhir/harness-run"  # Patient.identifier system on shared servers
_RETRY_STATUSES = {429, 500, 502, 503, 504}


class HarnessError(Exception):
    """A problem that stops the run (one line)."""


@dataclass
class GoldCase:
    file: Path
    patient: str  # Patient.id in the gold file
    status: str
    criteria: dict[str, str]
    reasons: dict[str, str]
    description: str = ""
    pending: str | None = None  # pendingEngine: why the engine is known to get this case wrong
    prefetch_only: str | None = None  # prefetchOnly: why no FHIR server can hold it (not run here)


@dataclass
class Outcome:
    case: GoldCase
    got: str
    ms: float
    mismatches: list[str] = field(default_factory=list)
    pending: bool = False  # the mismatches are the case's known engine gap (pendingEngine)

    @property
    def ok(self) -> bool:
        return not self.mismatches or self.pending


@dataclass
class GoldSet:
    as_of: dt.date
    trial: str
    cases: list[GoldCase]


def load_gold_set(gold: Path) -> GoldSet:
    """A gold set: a directory with expectations.yaml and patients/, or an expectations file
    X.yaml with its patients in X/."""
    path, patients = (gold / "expectations.yaml", gold / "patients") if gold.is_dir() else (gold, gold.with_suffix(""))
    if not path.is_file():
        raise HarnessError(f"no gold set at {gold} (expectations.yaml missing)" if gold.is_dir()
                           else f"no gold expectations file {gold}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = [GoldCase(file=patients / c["file"], patient=c["patient"], status=c["status"],
                      criteria=c["criteria"], reasons=c.get("reasons") or {}, description=c.get("description", ""),
                      pending=(c["pendingEngine"] if isinstance(c["pendingEngine"], str) else "pending engine")
                      if c.get("pendingEngine") else None, prefetch_only=c.get("prefetchOnly"))
             for c in data["patients"]]
    return GoldSet(dt.date.fromisoformat(data["asOf"]), data.get("trial", "NCT06462092"), cases)


# -- writing to the FHIR server ---------------------------------------------------

def _walk_references(node: Any, rewrite: Callable[[str], str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = rewrite(value)
            else:
                _walk_references(value, rewrite)
    elif isinstance(node, list):
        for item in node:
            _walk_references(item, rewrite)


def transaction(bundle: dict[str, Any], *, shared: bool, run_id: str) -> tuple[dict[str, Any], str]:
    """A transaction Bundle that creates the patient's resources, and the
    fullUrl / reference of its Patient in that transaction."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    by_old: dict[str, str] = {}  # every way the gold file refers to a resource -> its new reference
    new_entries = []
    for entry in entries:
        resource = copy.deepcopy(entry["resource"])
        rtype, rid = resource["resourceType"], resource["id"]
        new_ref = f"urn:uuid:{uuid.uuid4()}" if shared else f"{rtype}/{rid}"
        for old in (entry.get("fullUrl"), f"{rtype}/{rid}"):
            if old:
                by_old[old] = new_ref
        new_entries.append((resource, new_ref))
    patient_ref = None
    out = []
    for resource, new_ref in new_entries:
        _walk_references(resource, lambda ref: by_old.get(ref, by_old.get("/".join(ref.split("/")[-2:]), ref)))
        rtype = resource["resourceType"]
        if rtype == "Patient":
            patient_ref = new_ref
            if shared:
                resource.setdefault("identifier", []).append({"system": HARNESS_SYSTEM, "value": run_id})
        if shared:
            resource.pop("id", None)
            out.append({"fullUrl": new_ref, "resource": resource, "request": {"method": "POST", "url": rtype}})
        else:
            out.append({"fullUrl": new_ref, "resource": resource, "request": {"method": "PUT", "url": new_ref}})
    if patient_ref is None:
        raise HarnessError("gold file without a Patient")
    # Patient first: a server processing entries in order can resolve references to it.
    out.sort(key=lambda e: e["resource"]["resourceType"] != "Patient")
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}, patient_ref


class FhirWriter:
    """Loads and deletes test data on a FHIR server. Never sends Authorization."""

    def __init__(self, base: str, *, retries: int = 3, timeout: float = 60.0, session: requests.Session | None = None):
        self.base = base.rstrip("/")
        self.retries = retries
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"})

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise HarnessError(f"cannot reach {self.base}") from None
            else:
                if response.status_code not in _RETRY_STATUSES or attempt == self.retries:
                    return response
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until GET /metadata answered 200."""
        started = time.monotonic()
        while True:
            try:
                if self.session.get(f"{self.base}/metadata", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            if time.monotonic() - started > timeout:
                raise HarnessError(f"{self.base}/metadata did not answer within {timeout:.0f} s")
            time.sleep(0.5)

    def load(self, bundle: dict[str, Any], *, shared: bool, run_id: str) -> tuple[str, list[str]]:
        """Post the patient's transaction; returns the server's Patient id and the
        locations of everything created (for cleanup)."""
        tx, patient_ref = transaction(bundle, shared=shared, run_id=run_id)
        response = self._request("POST", self.base, data=json.dumps(tx))
        if response.status_code >= 300:
            raise HarnessError(f"transaction refused ({response.status_code}): {_diagnostics(response)}")
        locations = [(e.get("response") or {}).get("location", "") for e in response.json().get("entry", [])]
        locations = ["/".join(loc.split("/_history")[0].split("/")[-2:]) for loc in locations if loc]
        patient_index = next(i for i, e in enumerate(tx["entry"]) if e["resource"]["resourceType"] == "Patient")
        patient_id = locations[patient_index].split("/")[-1] if shared else patient_ref.split("/")[-1]
        return patient_id, locations

    def delete(self, locations: Iterable[str]) -> list[str]:
        """Delete what a load created; returns what could not be deleted.

        One transaction first: HAPI checks referential integrity at its end, so
        resources that refer to each other go together. If the server refuses it
        (another user's data now refers to ours, a server without transactional
        delete), each resource is deleted alone, in passes, until no pass makes
        progress: 409/412 (still referenced) is retried in the next pass."""
        remaining = list(dict.fromkeys(locations))
        if not remaining:
            return []
        tx = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "DELETE", "url": loc}} for loc in remaining]}
        if self._request("POST", self.base, data=json.dumps(tx)).status_code < 300:
            return []
        while remaining:
            still = [loc for loc in remaining
                     if self._request("DELETE", f"{self.base}/{loc}").status_code not in (200, 202, 204, 404, 410)]
            if len(still) == len(remaining):
                return still
            remaining = still
        return []


def _diagnostics(response: requests.Response) -> str:
    try:
        issues = response.json().get("issue", [])
        return "; ".join(i.get("diagnostics", i.get("code", "")) for i in issues)[:300]
    except ValueError:
        return response.text[:300]


# -- calling the service ------------------------------------------------------

@contextlib.contextmanager
def quieted(logger_name: str, level: int):
    """Raise a service logger's level for a while (the harness's report is its output)."""
    from .hooks.server_logging import configure_logging

    configure_logging()  # first, so that create_app's own call leaves the level set here alone
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


class HookCaller:
    """Calls the patient-view hook of a running service, or of one built in process."""

    def __init__(self, service: str | None, fhir_server: str, as_of: dt.date, trial: str):
        self.fhir_server = fhir_server
        self._client = None
        self._url = None
        if service in (None, "none"):
            from .hooks.app import create_app
            from .hooks.config import Settings
            from .trials import enrolling_trials

            self._tmp = tempfile.TemporaryDirectory()
            # In process, through Flask's test client, there is no network listener:
            # the "no client authentication" start-up warning does not apply.
            with quieted("cds_service", logging.ERROR):
                # the gold set's trial beside the enrolling ones: a patient is evaluated against both, as in use
                trials = tuple(dict.fromkeys([*enrolling_trials(), trial]))
                app = create_app(Settings(allowed_fhir_servers=(fhir_server,), evaluation_date=as_of, trials=trials,
                                          show_ineligible=True, database=Path(self._tmp.name) / "harness.sqlite3",
                                          fhir_deadline=20.0, fhir_cache_ttl=0.0))
            self._client = app.test_client()
        else:
            self._url = service.rstrip("/") + "/cds-services/trial-eligibility"
            self._session = requests.Session()

    def call(self, patient_id: str) -> tuple[int, dict[str, Any], float]:
        body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": self.fhir_server,
                "context": {"userId": "Practitioner/harness", "patientId": patient_id}}
        started = time.monotonic()
        if self._client is not None:
            response = self._client.post("/cds-services/trial-eligibility", data=json.dumps(body),
                                         content_type="application/json", buffered=True)
            status, payload = response.status_code, response.get_json(silent=True) or {}
        else:
            response = self._session.post(self._url, json=body, timeout=60)
            status, payload = response.status_code, response.json() if response.content else {}
        return status, payload, (time.monotonic() - started) * 1000


def compare(case: GoldCase, status: int, payload: dict[str, Any], ms: float, trial: str) -> Outcome:
    if status != 200:
        detail = "; ".join(i.get("diagnostics", "") for i in payload.get("issue", []))[:200]
        return Outcome(case, f"HTTP {status}", ms, [f"HTTP {status}: {detail}"])
    evaluations = [c["extension"]["trial-eligibility"] for c in payload.get("cards", [])
                   if c.get("extension", {}).get("trial-eligibility", {}).get("trial") == trial]
    if not evaluations:
        got = "ineligible"  # no card: all a service without CDS_SHOW_INELIGIBLE tells
        return Outcome(case, f"{got} (no card)", ms, [] if case.status == got else [f"status {got}"])
    evaluation = evaluations[0]
    mismatches = []
    if evaluation["status"] != case.status:
        mismatches.append(f"status {evaluation['status']}")
    got_criteria = {c["id"]: c for c in evaluation["criteria"]}
    for cid, expected in case.criteria.items():
        got = got_criteria.get(cid, {})
        if got.get("result") != expected:
            mismatches.append(f"{cid}={got.get('result')}")
        elif case.reasons.get(cid) and got.get("reasonCode") != case.reasons[cid]:
            mismatches.append(f"{cid} reason {got.get('reasonCode')}")
    return Outcome(case, evaluation["status"], ms, mismatches)


def _as_pending(outcome: Outcome) -> Outcome:
    """A pendingEngine case: its mismatches are the known gap; none means the gap is closed."""
    if outcome.mismatches:
        outcome.pending = True
    else:
        outcome.mismatches = ["as expected, but marked pendingEngine: un-mark it"]
    return outcome


# -- the run ----------------------------------------------------------------------

def run(fhir_server: str, *, service: str | None = None, gold_dir: Path, mode: str = "private",
        load_only: bool = False, cleanup: bool = True, only: Iterable[str] | None = None,
        out=sys.stdout) -> int:
    """Exit status 0 when every case is as expected (a pendingEngine case as it was known to be)."""
    gold = load_gold_set(gold_dir)
    as_of, cases, trial = gold.as_of, gold.cases, gold.trial
    if only:
        wanted = set(only)
        cases = [c for c in cases if c.patient in wanted or c.file.stem in wanted]
    for case in (c for c in cases if c.prefetch_only):
        print(f"{case.patient}: not run (prefetch only: {case.prefetch_only})", file=out)
    cases = [c for c in cases if not c.prefetch_only]
    writer = FhirWriter(fhir_server)
    ready = writer.wait_ready()
    shared = mode == "shared"
    run_id = str(uuid.uuid4())
    print(f"FHIR server {fhir_server} ready ({ready:.1f} s); loading {len(cases)} gold patients "
          f"({mode} mode)", file=out)
    started = time.monotonic()
    loaded: dict[str, tuple[str, list[str]]] = {}
    for case in cases:
        bundle = json.loads(case.file.read_text())
        loaded[case.patient] = writer.load(bundle, shared=shared, run_id=run_id)
    load_s = time.monotonic() - started
    print(f"loaded in {load_s:.1f} s" + (f"; run id {run_id} (Patient.identifier {HARNESS_SYSTEM}|{run_id})"
                                         if shared else ""), file=out)
    if load_only:
        return 0
    caller = HookCaller(service, fhir_server, as_of, trial)
    outcomes = []
    try:
        # The table is the report: the in-process service's audit lines would interleave with it.
        with quieted("cds_service.audit", logging.WARNING):
            print(f"{'patient':<8} {'expected':<11} {'got':<22} {'ms':>7}  mismatches", file=out)
            for case in cases:
                server_id, locations = loaded[case.patient]
                status, payload, ms = caller.call(server_id)
                if status == 412 and shared:  # the public sandbox may have purged it: load once more
                    server_id, reloaded = writer.load(json.loads(case.file.read_text()), shared=True,
                                                      run_id=run_id)
                    loaded[case.patient] = (server_id, locations + reloaded)  # whatever survived goes too
                    status, payload, ms = caller.call(server_id)
                outcome = compare(case, status, payload, ms, trial)
                if case.pending:
                    outcome = _as_pending(outcome)
                outcomes.append(outcome)
                print(f"{case.patient:<8} {case.status:<11} {outcome.got:<22} {ms:>7.0f}  "
                      f"{', '.join(outcome.mismatches) if outcome.mismatches else ''}"
                      f"{f' [pending: {case.pending}]' if outcome.pending else ''}", file=out)
    finally:
        if cleanup:
            left = [loc for _, locations in loaded.values() for loc in writer.delete(locations)]
            created = sum(len(locations) for _, locations in loaded.values())
            print(f"cleanup: deleted {created - len(left)} of {created} resources created"
                  + (f"; not deleted: {', '.join(left[:10])}{' …' if len(left) > 10 else ''}" if left else ""),
                  file=out)
    times = sorted(o.ms for o in outcomes)
    failed = [o for o in outcomes if not o.ok]
    pending = sum(o.pending for o in outcomes)
    if times:
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        print(f"{len(outcomes) - len(failed) - pending}/{len(outcomes)} as expected"
              f"{f', {pending} pending (known engine gaps)' if pending else ''}; hook latency without prefetch: "
              f"median {statistics.median(times):.0f} ms, p95 {p95:.0f} ms; load {load_s:.1f} s", file=out)
    return 1 if failed else 0
