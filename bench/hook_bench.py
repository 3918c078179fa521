"""Hook-call speed: full prefetch vs JSON parsing, and the fetch path against a
slow local FHIR server.

1. prefetch: patient-view calls carrying full prefetch for the demo eligible
   patient padded to N observations (EHR-shaped, ~1.5 kB each): "history" rows
   pad the labResults key with older results of the criteria's own lab tests
   (what that query, restricted to those codes, returns), "other tests" rows
   with results of unrelated tests (an EHR that ignores the code filter). Service-side
   time is measured inside the app (from the route being entered to the
   response built: reading and parsing the body, gathering, evaluation, cards;
   the audit is written after the response) over calls made back to back;
   compared with orjson-parsing the same request body: as timed inside each
   hook call (the parse as the service meets it), right after a call outside
   the app, and in a tight loop (everything cache-hot: a best case). Target p50 <= 3x.
   "p50" repeats the same chart (resources already validated, as when a chart is
   reopened); "cold" clears that memo before each call (first sight of a chart).
   Then the same calls (unrelated tests) once the validation memo holds the models
   of 300 other charts, as a worker's does after a busy day: p95 and p99, and the
   full GC collections that walk every object the GC tracks, with those models
   frozen as a worker does (cds_service/hooks/server.py settle_gc) and not.
2. fetch: the same patient without prefetch; the service fetches everything
   from a stub FHIR server on 127.0.0.1 that sleeps 50 ms per request. Target:
   p50 <= 1.5x the slowest single FHIR request (queries run in parallel).
3. a 2,000-result lab history without prefetch, the stub paging by 100: read
   back to the lab criteria's look-back, and (for comparison) every page.

  python bench/hook_bench.py [--calls 60]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.demo import hook_request  # noqa: E402
from cds_service.engine.validation import validate_serialized  # noqa: E402
from cds_service.engine.rules.readers import sorted_newest_first
from cds_service.fhir.needs import DataNeed  # noqa: E402
from cds_service.hooks.app import create_app  # noqa: E402
from cds_service.hooks.config import Settings  # noqa: E402
from cds_service.hooks.server import settle_gc  # noqa: E402

AS_OF = dt.date(2026, 6, 15)
SERVICE = "/cds-services/trial-eligibility"


# The patient's lab history: what the service's labResults query (Observations restricted to
# the lab criteria's codes) returns. (LOINC, unit, low, high, reference range high)
HISTORY = [("751-8", "10*3/uL", 1.8, 6.5, 7.5), ("777-3", "10*3/uL", 150, 380, 400),
           ("718-7", "g/dL", 11.0, 14.5, 15.5), ("1975-2", "mg/dL", 0.3, 1.1, 1.2),
           ("1742-6", "U/L", 12, 45, 55), ("1920-8", "U/L", 12, 40, 48)]
# Results of other tests: what an EHR sends when it ignores the query's code filter.
UNRELATED = ["2345-7", "2160-0", "2823-3", "2951-2", "1751-7", "6690-2", "789-8", "4544-3"]


def ehr_observation(i: int, patient: str, history: bool) -> dict:
    """A lab result shaped like what EHRs send (identifiers, several codings,
    performer, interpretation, reference range with text, note). `history`: one of
    the criteria's tests, drawn before the chart's current results (a panel every
    few days, going back in time); else an unrelated test."""
    if history:
        code, unit, low, high, uln = HISTORY[i % len(HISTORY)]
        day = AS_OF - dt.timedelta(days=10 + 3 * (i // len(HISTORY)))
        value = round(low + (high - low) * ((i * 37) % 100) / 100, 1)
    else:
        code, unit, value, uln = UNRELATED[i % len(UNRELATED)], "mmol/L", 3 + i % 17, 20
        day = AS_OF - dt.timedelta(days=i % 900)
    quantity = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return {
        "resourceType": "Observation", "id": f"lab-{i}",
        "meta": {"versionId": "1", "lastUpdated": f"{day}T10:15:00Z", "source": "#epic-lab-interface"},
        "identifier": [{"use": "official", "system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.798268",
                        "value": f"{900000 + i}"},
                       {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.3.798268.800", "value": f"{i}-1"}],
        "basedOn": [{"reference": f"ServiceRequest/order-{i // 10}", "display": "Laboratory panel"}],
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory", "display": "Laboratory"}], "text": "Laboratory"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": f"LOINC {code}"},
                            {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.72", "code": str(1500 + i % 40),
                             "display": f"LAB TEST {i % 40}"}], "text": f"Lab test {i % 40}"},
        "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/enc-{i // 5}", "display": "Office Visit"},
        "effectiveDateTime": f"{day}T08:{i % 60:02d}:00-05:00", "issued": f"{day}T11:{i % 60:02d}:00Z",
        "performer": [{"reference": "Organization/lab-1", "display": "Main Hospital Laboratory"}],
        "valueQuantity": quantity,
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                        "code": "N", "display": "Normal"}], "text": "Normal"}],
        "referenceRange": [{"high": dict(quantity, value=uln), "text": f"<= {uln} {unit}"}],
        "note": [{"text": "Specimen received in good condition."}],
    }


def padded_request(n_observations: int, *, prefetch: bool = True, fhir_server: str | None = None,
                   history: bool = True) -> dict:
    request = hook_request("eligible", AS_OF, fhir_server=fhir_server)
    entries = request["prefetch"]["labResults"]["entry"]  # the padding follows them: older, as sorted
    present = len(entries) + len(request["prefetch"]["observations"]["entry"])
    entries += [{"resource": ehr_observation(i, "g001", history), "search": {"mode": "match"}}
                for i in range(max(0, n_observations - present))]
    if not prefetch:
        del request["prefetch"]
    return request


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def last_call(app) -> dict:
    """The audit row of the latest hook call: `latency_ms` is the service-side time,
    `timings["parse"]` what reading and parsing the body took inside that call."""
    return app.extensions["trial_eligibility"].store.hook_calls()[-1]


def service_side_ms(app) -> float:
    return last_call(app)["latency_ms"]


def timed_parse(body: bytes) -> float:
    """ms to orjson-parse `body`; the document is freed outside the timing."""
    start = time.perf_counter()
    parsed = orjson.loads(body)
    elapsed = (time.perf_counter() - start) * 1000
    del parsed
    return elapsed


def bench_prefetch(calls: int, tmp: Path) -> None:
    app = create_app(Settings(database=tmp / "bench.sqlite3", evaluation_date=AS_OF))
    settle_gc(app)  # as each server worker does after start-up (cds_service/hooks/server.py)
    client = app.test_client()
    store = app.extensions["trial_eligibility"].store
    print("with full prefetch (service-side, measured in the app)")
    print("  parse = orjson.loads of the body: in-req timed inside each hook call; after timed right after")
    print("  a call, outside the app; warm in a tight loop (a cache-hot best case); paired = median over")
    print("  calls of (that call's time / its own parse)")
    print(f"{'observations':>20} {'body kB':>8} {'in-req':>7} {'after':>7} {'warm':>7} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p50/in-req':>10} {'paired':>6} {'p50/after':>9} {'p50/warm':>8} {'cold p50':>8}")
    for n, history in ((100, True), (1000, True), (100, False), (1000, False)):
        body = orjson.dumps(padded_request(n, history=history))
        for _ in range(20):  # warm up: memos, caches, allocator
            client.post(SERVICE, data=body, content_type="application/json", buffered=True)
        warm = [timed_parse(body) for _ in range(calls)]
        # Back to back, as a server takes requests: nothing of the benchmark's own runs between
        # calls (the audit rows are read afterwards).
        first = len(store.hook_calls())
        for _ in range(calls):
            response = client.post(SERVICE, data=body, content_type="application/json", buffered=True)
            assert response.status_code == 200 and response.get_json()["cards"], response.get_json()
        rows = store.hook_calls()[first:]
        served = [row["latency_ms"] for row in rows]
        in_request = [row["timings"]["parse"] for row in rows]
        after = []  # the same parse, right after each call (separate calls: this work would slow the next)
        for _ in range(calls):
            client.post(SERVICE, data=body, content_type="application/json", buffered=True)
            after.append(timed_parse(body))
        first = len(store.hook_calls())
        for _ in range(calls):  # first sight of this chart: nothing validated yet
            validate_serialized.cache_clear()
            client.post(SERVICE, data=body, content_type="application/json", buffered=True)
        cold = [row["latency_ms"] for row in store.hook_calls()[first:]]
        p50, p50_in, p50_after, p50_warm = (statistics.median(v) for v in (served, in_request, after, warm))
        paired = statistics.median(total / parse for total, parse in zip(served, in_request))
        label = f"{n:,} {'history' if history else 'other tests'}"
        print(f"{label:>20} {len(body) / 1024:>8.0f} {p50_in:>7.2f} {p50_after:>7.2f} {p50_warm:>7.2f} {p50:>7.2f} "
              f"{percentile(served, 95):>7.2f} {p50 / p50_in:>10.2f} {paired:>6.2f} {p50 / p50_after:>9.2f} "
              f"{p50 / p50_warm:>8.2f} {statistics.median(cold):>8.2f}")


def distinct_requests(n: int, n_observations: int = 30) -> Iterator[dict]:
    """Hook requests for `n` charts that differ in content, so that each is validated
    anew: the padded eligible patient (history padding), every resource but the
    Patient given a new id."""
    base = padded_request(n_observations, history=True)
    for i in range(n):
        request = copy.deepcopy(base)
        for key, bundle in request["prefetch"].items():
            if key != "patient":
                for entry in bundle["entry"]:
                    entry["resource"]["id"] = f"{entry['resource']['id']}-{i}"
        yield request


def chart_resources(request: dict) -> list[dict]:
    """The resources a hook request's prefetch carries."""
    return [request["prefetch"]["patient"]] + [entry["resource"] for key, bundle in request["prefetch"].items()
                                                if key != "patient" for entry in bundle["entry"]]


FULL_COLLECTION_SETTINGS = {"not frozen (start-up only)": lambda app: gc.freeze(), "frozen (the worker's)": settle_gc}


def bench_full_collections(calls: int, charts: int = 300) -> None:
    """Hook calls once the validation memo holds the models of many charts, as a worker's
    does after a busy day: the cyclic GC's full collections walk every object it tracks.
    A worker (server.settle_gc) freezes the models as the memo gains them; against an
    app that only froze its start-up objects. Each setting in a fresh process."""
    print()
    print(f"with full prefetch, after {charts} other charts' first calls (their models held by the memo)")
    print(f"{'models':>28} {'observations':>12} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'full GCs/call':>13} {'ms each':>7}")
    for label in FULL_COLLECTION_SETTINGS:
        done = subprocess.run([sys.executable, __file__, "--calls", str(calls), "--full-collections", label,
                               "--charts", str(charts)], capture_output=True, text=True, check=True)
        print(done.stdout, end="")


def full_collections_run(label: str, calls: int, charts: int, tmp: Path) -> None:
    """One setting of bench_full_collections, in this process: prints its rows."""
    started: list[float] = []
    full: list[float] = []

    def timed(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            else:
                full.append((time.perf_counter() - started.pop()) * 1000)

    app = create_app(Settings(database=tmp / "bench-gc.sqlite3", evaluation_date=AS_OF))
    FULL_COLLECTION_SETTINGS[label](app)
    client = app.test_client()
    store = app.extensions["trial_eligibility"].store
    for request in distinct_requests(charts):
        client.post(SERVICE, data=orjson.dumps(request), content_type="application/json", buffered=True)
    gc.callbacks.append(timed)
    for n in (100, 1000):
        body = orjson.dumps(padded_request(n, history=False))
        for _ in range(10):
            client.post(SERVICE, data=body, content_type="application/json", buffered=True)
        full.clear()
        first = len(store.hook_calls())
        for _ in range(calls):
            client.post(SERVICE, data=body, content_type="application/json", buffered=True)
        served = [row["latency_ms"] for row in store.hook_calls()[first:]]
        each = f"{statistics.mean(full):.0f}" if full else "-"
        print(f"{label:>28} {n:>12,} {statistics.median(served):>7.2f} {percentile(served, 95):>7.2f} "
              f"{percentile(served, 99):>7.2f} {len(full) / calls:>13.3f} {each:>7}")


class _StubFhir(BaseHTTPRequestHandler):
    """A FHIR server holding one patient; every request takes `delay` seconds.
    `paged`: searches honour _sort=-date and _count, with next links."""

    resources: dict[str, list[dict]] = {}
    delay = 0.05
    durations: list[float] = []
    paged = False

    def do_GET(self):  # noqa: N802 - http.server API
        start = time.perf_counter()
        time.sleep(self.delay)
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        rtype = parts[-2] if len(parts) >= 2 and parts[-2] == "Patient" else parts[-1]
        if rtype == "Patient":
            body = self.resources["Patient"][0]
        else:
            query = parse_qs(url.query)
            assert query.get("patient") == ["g001"], query
            matches = self.resources.get(rtype, [])
            tokens = query.get("code") or query.get("type")
            if tokens:  # what the search asks for, as a FHIR server selects it
                wanted = set(tokens[0].split(","))
                matches = [r for r in matches if any(f"{c.get('system')}|{c.get('code')}" in wanted
                                                     for c in (r.get("code") or r.get("type") or {}).get("coding", []))]
            total, link = len(matches), []
            if self.paged:
                if query.get("_sort") == ["-date"]:
                    matches = sorted_newest_first(matches)
                count, offset = int(query.get("_count", ["100"])[0]), int(query.get("_offset", ["0"])[0])
                matches = matches[offset:offset + count]
                if offset + count < total:
                    query["_offset"] = [str(offset + count)]
                    link = [{"relation": "next", "url": f"http://{self.headers['Host']}{url.path}?"
                                                        f"{urlencode(query, doseq=True, safe='|,:/')}"}]
            body = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": link,
                    "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches]}
        data = orjson.dumps(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.durations.append((time.perf_counter() - start) * 1000)

    def log_message(self, *args):
        pass


def _start_stub(n_observations: int, *, paged: bool) -> tuple[ThreadingHTTPServer, str]:
    """The stub FHIR server on 127.0.0.1 holding the padded patient; (server, base URL)."""
    request = padded_request(n_observations)
    resources: dict[str, list[dict]] = {"Patient": [request["prefetch"]["patient"]]}
    for key, bundle in request["prefetch"].items():
        if key != "patient":
            for entry in bundle["entry"]:
                resources.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    _StubFhir.resources, _StubFhir.paged = resources, paged
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubFhir)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/fhir"


def _fetching_calls(app, body: bytes, calls: int) -> tuple[list[float], list[list[float]]]:
    """Hook calls without prefetch: the service-side ms of each, and the stub's
    request durations during each."""
    client = app.test_client()
    served, durations = [], []
    for _ in range(calls):
        _StubFhir.durations = []
        response = client.post(SERVICE, data=body, content_type="application/json", buffered=True)
        assert response.status_code == 200 and response.get_json()["cards"], response.get_json()
        served.append(service_side_ms(app))
        durations.append(_StubFhir.durations)
    return served, durations


def _fetching_app(tmp: Path, name: str, base: str):
    return create_app(Settings(database=tmp / f"{name}.sqlite3", evaluation_date=AS_OF,
                               allowed_fhir_servers=(base,), fhir_cache_ttl=0.0))


def bench_fetch(calls: int, tmp: Path) -> None:
    server, base = _start_stub(100, paged=False)
    app = _fetching_app(tmp, "bench-fetch", base)
    body = orjson.dumps(padded_request(100, prefetch=False, fhir_server=base))
    _fetching_calls(app, body, 1)  # warm up connections
    served, durations = _fetching_calls(app, body, calls)
    server.shutdown()
    slowest = [max(d) for d in durations]
    requests_per_call = len(durations[-1])
    print()
    print(f"without prefetch: {requests_per_call} FHIR requests per call to a stub adding 50 ms each "
          f"(cache off)")
    print(f"  slowest single FHIR request p50 {statistics.median(slowest):.1f} ms; "
          f"hook p50 {statistics.median(served):.1f} ms, p95 {percentile(served, 95):.1f} ms; "
          f"p50 ratio {statistics.median(served) / statistics.median(slowest):.2f} "
          f"(sequential would be ~{requests_per_call * 50} ms)")


def bench_history_fetch(calls: int, tmp: Path, n_observations: int = 2000) -> None:
    """Without prefetch, a long lab history on a server that pages by 100 (50 ms a page):
    read back to the lab criteria's look-back, against reading every page up to the page
    limit (as before the look-back, by switching DataNeed.read_enough off)."""
    server, base = _start_stub(n_observations, paged=True)
    body = orjson.dumps(padded_request(n_observations, prefetch=False, fhir_server=base))
    print()
    print(f"without prefetch, a {n_observations:,}-result lab history served in pages of 100 "
          f"({_StubFhir.delay * 1000:.0f} ms a request; cache off)")
    read_enough = DataNeed.read_enough
    for label, enough in (("to the look-back", read_enough), ("every page", lambda *args, **kw: False)):
        DataNeed.read_enough = enough
        try:
            app = _fetching_app(tmp, f"bench-history-{len(label)}", base)
            served, durations = _fetching_calls(app, body, calls)
        finally:
            DataNeed.read_enough = read_enough
        labs = last_call(app)["data_sources"]["labResults"]
        print(f"  {label:>18}: {statistics.median(len(d) for d in durations):.0f} requests ({labs['requests']} "
              f"for the lab history, cut: {labs.get('cut', '-')}), hook p50 {statistics.median(served):.0f} ms, "
              f"p95 {percentile(served, 95):.0f} ms")
    server.shutdown()
    _StubFhir.paged = False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--full-collections", choices=FULL_COLLECTION_SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--charts", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.full_collections:  # one setting of bench_full_collections, in a child process
            logging.disable(logging.CRITICAL)  # the audit lines of the parent's run are enough
            full_collections_run(args.full_collections, args.calls, args.charts, Path(tmp))
            return
        bench_prefetch(args.calls, Path(tmp))
        bench_full_collections(max(2 * args.calls, 4))
        bench_fetch(args.calls, Path(tmp))
        bench_history_fetch(max(3, args.calls // 6), Path(tmp))


if __name__ == "__main__":
    main()
