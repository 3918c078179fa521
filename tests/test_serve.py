"""The service as users run it: `cds-service serve` (gunicorn, real HTTP on
127.0.0.1), the demo requests, and `demo-request`."""

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from cds_service.demo import DEMO_PATIENTS, RECORDED_AS_OF, hook_request
from makefile import recipe
from netutil import dechunk, free_port, stop

ROOT = Path(__file__).parents[1]
DEMO_DIR = ROOT / "cds_service" / "demo" / "hook-requests"
EXE = Path(sys.executable).parent / "cds-service"


def make_run_trials() -> str:
    """The trials `make run` serves (its CDS_TRIALS): the demo enables the completed second trial."""
    return re.search(r"\bCDS_TRIALS=(\S+)", " ".join(recipe("run"))).group(1)


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = dict(os.environ, CDS_DATA_DIR=str(tmp_path_factory.mktemp("data")), CDS_EVALUATION_DATE="2026-06-15",
               CDS_TRIALS=make_run_trials())  # as `make run` serves the demo
    proc = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{base}/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.communicate()[1][-2000:]}")
    yield base, proc
    stop(proc, timeout=15)


# What each shipped demo request gives when served as `make run` serves it (both trials): one
# card per trial the patient is eligible for or needs data for, eligible first; ineligible: none.
DEMO_CARDS = {
    "eligible": [("NCT06462092", "eligible")],  # HER2 IHC 1+: NCT01325207 (HER2-positive) fails
    "her2-equivocal": [("NCT06462092", "needs-data"), ("NCT01325207", "needs-data")],  # IHC 2+, no ISH
    "stale-anc": [("NCT06462092", "needs-data")],  # IHC 1+ again
    # IHC 3+ fails NCT06462092; for NCT01325207 every recorded criterion passes, but there is no KPS
    # (or ECOG) in the last 30 days and no LVEF: unknown, so needs data (an echocardiogram is offered).
    "her2-positive": [("NCT01325207", "needs-data")],
    "her2-positive-eligible": [("NCT01325207", "eligible")],  # HER2-positive: fails NCT06462092
}


def test_make_run_serves_the_demo_with_both_trials_and_production_defaults_stay_enrolling():
    from cds_service.trials import enrolling_trials, load_trials

    assert make_run_trials().split(",") == ["NCT06462092", "NCT01325207"]
    assert load_trials()["NCT01325207"].definition.status == "Completed" and "NCT01325207" not in enrolling_trials()
    assert "--trial all" in " ".join(recipe("demo"))


def test_serve_answers_discovery_and_hooks_over_http(server):
    base, _ = server
    status, body = http("GET", f"{base}/cds-services")
    assert status == 200 and body["services"][0]["id"] == "trial-eligibility"
    assert set(DEMO_CARDS) == set(DEMO_PATIENTS)
    for name, expected in DEMO_CARDS.items():
        request = json.loads((DEMO_DIR / f"{name}.json").read_text())
        status, body = http("POST", f"{base}/cds-services/trial-eligibility", request)
        assert status == 200
        cards = [(c["extension"]["trial-eligibility"]["trial"], c["extension"]["trial-eligibility"]["status"])
                 for c in body["cards"]]
        assert cards == expected, name
    request = json.loads((DEMO_DIR / "her2-positive-eligible.json").read_text())
    card = http("POST", f"{base}/cds-services/trial-eligibility", request)[1]["cards"][0]
    results = {r["id"]: r["result"] for r in card["extension"]["trial-eligibility"]["criteria"]}
    assert set(results.values()) == {"pass", "review"}  # every computable criterion passes
    assert {k for k, v in results.items() if v == "review"} == {
        "life-expectancy", "ommaya-reservoir", "significant-illness", "contraception"}
    status, body = http("GET", f"{base}/readyz")
    assert status == 200 and body["status"] == "ready"


def _raw_post(base: str, head: str, pieces: list[bytes], pause: float = 0.0) -> tuple[int, dict]:
    """POST over a plain socket, sending the body in pieces (as a slow client or proxy does)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    header, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in header.lower():  # de-chunk the answer
        body = dechunk(body)
    return int(header.split()[1]), json.loads(body)


def test_serve_reads_bodies_sent_in_pieces_and_chunked(server):
    base, _ = server
    body = (DEMO_DIR / "eligible.json").read_bytes()
    path = "/cds-services/trial-eligibility"
    # Content-Length, the body arriving in small pieces with pauses: read on to the declared length.
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    pieces = [body[i:i + 1500] for i in range(0, len(body), 1500)]
    status, answer = _raw_post(base, head, pieces, pause=0.002)
    assert status == 200 and answer["cards"][0]["extension"]["trial-eligibility"]["status"] == "eligible"
    # Transfer-Encoding: chunked, no Content-Length.
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    chunks = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]
    status, answer = _raw_post(base, head, chunks)
    assert status == 200 and answer["cards"][0]["extension"]["trial-eligibility"]["status"] == "eligible"


def test_serve_logs_json_lines_without_phi(server):
    base, proc = server
    request = json.loads((DEMO_DIR / "eligible.json").read_text())
    request["hookInstance"] = "11111111-2222-4333-8444-555555555555"
    assert http("POST", f"{base}/cds-services/trial-eligibility", request)[0] == 200
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    hook = next(e for e in events if e.get("hookInstance") == request["hookInstance"])
    assert hook["service"] == "trial-eligibility" and hook["status"] == 200 and hook["latencyMs"] > 0
    assert "g001" not in err and "1978-03-22" not in err and "Traceback" not in err


def test_shipped_demo_requests_match_the_generator():
    instances = set()
    for name in DEMO_PATIENTS:
        shipped = json.loads((DEMO_DIR / f"{name}.json").read_text())
        built = hook_request(name, RECORDED_AS_OF, hook_instance=shipped["hookInstance"])
        assert shipped == json.loads(json.dumps(built)), name
        instances.add(str(uuid.UUID(shipped["hookInstance"])))
    assert len(instances) == len(DEMO_PATIENTS)  # each request its own hookInstance


def test_demo_prefetch_holds_what_each_query_returns():
    # As an EHR fills the templates: each key what its query selects (type and code), each
    # resource once, date-sorted searches newest first; what no query asks for is not sent.
    from cds_service.engine.rules.readers import newest_first
    from cds_service.fhir.needs import data_needs
    from cds_service.trials import load_trials

    needs = data_needs(load_trials().values())
    for name in DEMO_PATIENTS:
        prefetch = hook_request(name)["prefetch"]
        assert set(prefetch) == {n.key for n in needs}
        sent = []
        for need in needs:
            value = prefetch[need.key]
            resources = [value] if need.key == "patient" else [e["resource"] for e in value["entry"]]
            assert all(need.selects(r) for r in resources), (name, need.key)
            assert not need.newest_first or newest_first(resources), (name, need.key)
            sent += [f"{r['resourceType']}/{r['id']}" for r in resources]
        assert len(sent) == len(set(sent)), name
    labs = [e["resource"]["id"] for e in hook_request("eligible")["prefetch"]["labResults"]["entry"]]
    assert "g001-anc-1" in labs and "g001-wbc-1" in labs and "g001-her2-1" not in labs  # WBC: NCT01325207's
    assert "g001-er-1" not in labs and "g001-er-1" not in str(hook_request("eligible")["prefetch"])  # no query's
    # The bundled trials' queries, whether or not a site enables them: the second trial's radiotherapy and
    # medications are in the prefetch of the patient who has them.
    second = hook_request("her2-positive-eligible")["prefetch"]
    assert [e["resource"]["id"] for e in second["procedures"]["entry"]] == ["g201-rt-1"]
    assert [e["resource"]["id"] for e in second["medicationRequests"]["entry"]] == ["g201-medrx-1"]
    assert second["medicationStatements"]["entry"] == [] and second["medicationAdministrations"]["entry"] == []


def test_demo_request_shifts_dates_to_the_requested_day():
    shifted = hook_request("eligible", dt.date(2027, 1, 10))
    anc = next(e["resource"] for e in shifted["prefetch"]["labResults"]["entry"]
               if e["resource"]["id"] == "g001-anc-1")
    original = next(e["resource"] for e in hook_request("eligible")["prefetch"]["labResults"]["entry"]
                    if e["resource"]["id"] == "g001-anc-1")
    days = (dt.date(2027, 1, 10) - RECORDED_AS_OF).days
    assert dt.date.fromisoformat(anc["effectiveDateTime"][:10]) == \
        dt.date.fromisoformat(original["effectiveDateTime"][:10]) + dt.timedelta(days=days)
    assert anc["effectiveDateTime"][10:] == original["effectiveDateTime"][10:]


def test_demo_request_command_output_is_eligible_today(make_app):
    out = subprocess.run([str(EXE), "demo-request", "eligible"], capture_output=True, text=True, check=True)
    request = json.loads(out.stdout)
    app = make_app(evaluation_date=None)  # today
    response = app.test_client().post("/cds-services/trial-eligibility", data=json.dumps(request),
                                      content_type="application/json")
    assert response.get_json()["cards"][0]["extension"]["trial-eligibility"]["status"] == "eligible"


def test_serve_refuses_bad_configuration():
    env = dict(os.environ, CDS_TRIALS="NCT00000000")
    proc = subprocess.run([str(EXE), "serve", "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown trial" in proc.stderr and "Traceback" not in proc.stderr
    env = dict(os.environ, CDS_FHIR_DEADLINE="soon")
    proc = subprocess.run([str(EXE), "serve", "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "CDS_FHIR_DEADLINE" in proc.stderr


def test_serve_refuses_a_public_address_without_authentication():
    proc = subprocess.run([str(EXE), "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "CDS_TRUSTED_CLIENTS" in proc.stderr and "--insecure-no-auth" in proc.stderr


def test_trusted_clients_need_a_public_base_url():
    env = dict(os.environ, CDS_TRUSTED_CLIENTS="/nonexistent.yaml")
    proc = subprocess.run([str(EXE), "serve", "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "CDS_PUBLIC_BASE_URL" in proc.stderr


def _distinct_charts(n: int, start: int = 0):
    """The demo eligible request n times, every resource but the Patient with a new id:
    each one validated anew."""
    base = hook_request("eligible")
    for i in range(start, start + n):
        request = json.loads(json.dumps(base))
        for key, bundle in request["prefetch"].items():
            if key != "patient":
                for entry in bundle["entry"]:
                    entry["resource"]["id"] += f"-{i}"
        yield request


def test_each_worker_freezes_start_up_and_the_models_it_validates(tmp_path):
    # A worker's app (cds-service serve, or plain gunicorn 'cds_service.hooks.server:worker_app()'):
    # create_app, then gc.freeze(), so that full collections skip the start-up objects, and the
    # validated models frozen as the memo gains them (see bench/hook_bench.py); undone afterwards.
    import gc

    from cds_service.engine import PatientRecord
    from cds_service.engine.validation import validations_done
    from cds_service.hooks.config import Settings
    from cds_service.hooks.server import _Gunicorn

    def tracked(obj) -> bool:  # frozen objects are left out of gc.get_objects()
        return any(o is obj for o in gc.get_objects())

    gc.unfreeze()
    try:
        app = _Gunicorn(Settings(database=tmp_path / "w.sqlite3"), {"bind": "127.0.0.1:0"}).load()
        assert "trial_eligibility" in app.extensions
        assert gc.get_freeze_count() > 10_000
        client = app.test_client()
        first = validations_done()
        charts = list(_distinct_charts(40))
        for request in charts:
            response = client.post("/cds-services/trial-eligibility", data=json.dumps(request),  # keys in order:
                                   content_type="application/json", buffered=True)  # the memo's key
            assert response.status_code == 200  # buffered: closed, so what runs after the response has run
            if validations_done() - first >= 256:
                break
        assert validations_done() - first >= 256  # enough for one freeze
        # (The frozen count itself can fall: objects frozen at start-up are still freed when they die.)
        # A model validated before the freeze is frozen; one validated after it is not (yet).
        # (The ANC: a lab the served trial reads; the prefetch also holds labs only other bundled trials read.)
        old = next(r for r in PatientRecord(_resources(charts[0])).all_of("Observation")
                   if r["id"].startswith("g001-anc-1"))
        record = PatientRecord(_resources(charts[0]))
        assert not tracked(record.model(old))
        fresh = next(_distinct_charts(1, start=len(charts)))
        fresh_record = PatientRecord(_resources(fresh))
        assert tracked(fresh_record.model(next(fresh_record.all_of("Condition"))))
    finally:
        gc.unfreeze()


def _resources(request: dict) -> list[dict]:
    return [entry["resource"] for key, bundle in request["prefetch"].items() if key != "patient"
            for entry in bundle["entry"]]


@pytest.mark.parametrize("config", [[], ["-c", "python:cds_service.hooks.gunicorn_config"]])
def test_plain_gunicorn_serves_the_worker_app(tmp_path, config):
    port = free_port()
    env = dict(os.environ, CDS_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen([str(EXE.with_name("gunicorn")), *config, "--bind", f"127.0.0.1:{port}",
                             "--workers", "1", "cds_service.hooks.server:worker_app()"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "gunicorn.log").open("w"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = http("GET", f"http://127.0.0.1:{port}/cds-services")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "gunicorn.log").read_text()[-2000:]
                time.sleep(0.3)
        assert status == 200 and body["services"][0]["id"] == "trial-eligibility"
    finally:
        stop(proc)


@pytest.mark.parametrize("preload", [True, False])
def test_plain_gunicorn_refuses_a_public_address_without_authentication(tmp_path, preload):
    # As `cds-service serve` does: with --preload the app is loaded (and refuses) before anything is
    # bound; without it the worker refuses and gunicorn stops instead of starting new workers.
    env = {k: v for k, v in os.environ.items() if k not in ("CDS_TRUSTED_CLIENTS", "CDS_INSECURE_NO_AUTH")}
    env["CDS_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run([str(EXE.with_name("gunicorn")), *(["--preload"] if preload else []),
                           "--bind", f"0.0.0.0:{free_port()}", "cds_service.hooks.server:worker_app()"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]  # gunicorn's "worker failed to boot"
    refusal = next(json.loads(line) for line in proc.stderr.splitlines()
                   if line.startswith("{") and '"refused"' in line)
    assert refusal["event"] == "startup" and refusal["error"] == "no-client-authentication"
    assert "CDS_TRUSTED_CLIENTS" in refusal["message"] and "Traceback" not in proc.stderr
