"""Issue 14, items 1-3: no FHIR server text in the audit, the logs or the answer; every wait
bounded in total (a FHIR request and a JWK Set fetch end by their deadline, however the
server trickles); every byte bounded (CDS_FHIR_MAX_RESPONSE_BYTES, a cache bounded in bytes).

The servers are real sockets on 127.0.0.1, started and stopped (joined) by the tests. No
assertion rests on a tight wall-clock margin: a trickle would take 30 s or more, and the
bounds asserted are that long divided by three or more, with deadlines of 1-2 s."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import re
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import jwt
import pytest
import yaml
from cachetools import Cache
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from cds_service.fhir.cache import CACHE_ENTRY_OVERHEAD, ResponseCache
from cds_service.fhir.client import FhirClient
from cds_service.fhir.errors import FhirBadResponse, FhirOutOfTime
from cds_service.fhir.queries import Read, Search
from cds_service.fhir.transport import WATCHDOG
from cds_service.hooks.auth import keys as jwks_module
from cds_service.hooks.auth import AuthError, Authenticator
from cds_service.hooks.replay import SqliteJtiStore
from hookdata import demo, without

SERVICE = "/cds-services/trial-eligibility"
TRICKLE_SECONDS = 30.0  # what a trickling answer would take to arrive in full
BOUND = TRICKLE_SECONDS / 3  # every wait here must end well inside this


# --------------------------------------------------------------------------- servers on 127.0.0.1

class TrickleServer:
    """A raw HTTP server: reads each request's head, sends `head` at once, then `trickle`
    one byte every `interval` seconds. Counts connections, and those the client closed
    before the trickle ended. Optionally TLS (`tls` = an ssl server context)."""

    def __init__(self, head: bytes, trickle: bytes, *, interval: float = 0.5, tls: ssl.SSLContext | None = None):
        self.head, self.trickle, self.interval, self.tls = head, trickle, interval, tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # accept() wakes to notice stop()
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        self.cut_off = 0  # connections the client dropped before the trickle was over
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self.connections += 1
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(TRICKLE_SECONDS * 2)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            conn.sendall(self.head)
            for i in range(len(self.trickle)):
                if self._stop.wait(self.interval):
                    return
                conn.sendall(self.trickle[i:i + 1])
        except OSError:  # the client went away: what the tests want to see
            with self._lock:
                self.cut_off += 1
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(5)


def _json_head(length: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {length}\r\n"
            f"\r\n").encode()


class FhirStub:
    """A FHIR server on 127.0.0.1 (ThreadingHTTPServer): `answer(path_and_query)` gives
    (status, body bytes, chunked?). Records the request paths. A chunked body goes out in
    64 KiB pieces; `sent` counts the bytes of body the server managed to write."""

    def __init__(self, answer):
        stub = self
        self.paths: list[str] = []
        self.sent = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                stub.paths.append(self.path)
                status, body, chunked = answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                try:
                    if not chunked:
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        stub.sent += len(body)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(body), 65536):
                        piece = body[start:start + 65536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        stub.sent += len(piece)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client stopped reading
                    self.close_connection = True

            def log_message(self, *args):  # the test output stays quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/fhir"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def servers():
    """Start servers with servers.append(...); every one is stopped at the end."""
    started: list = []
    yield started
    for server in started:
        server.stop()


def _fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fhir-fetch")]


def _eventually(condition, within: float = BOUND) -> bool:
    """True once `condition()` holds, polled until `within` seconds have passed."""
    ends = time.monotonic() + within
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --------------------------------------------------------------------------- 1. no server text

NAME, BIRTH_DATE, PATIENT_ID = "Zebulon Quintavalle", "1961-07-04", "zq-5501"
LEAKY = f"Patient {PATIENT_ID} ({NAME}, born {BIRTH_DATE}): search /fhir/Condition?patient={PATIENT_ID} failed"


def _leaky_outcome() -> bytes:
    return json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": LEAKY, "details": {"text": LEAKY}}]}).encode()


def _leaky_answer(path: str):
    """Every kind of failure a FHIR server can give, each carrying the patient's details."""
    kind = urlsplit(path).path.split("/fhir/", 1)[1].split("/")[0]
    statuses = {"Patient": 404, "Condition": 400, "AllergyIntolerance": 500, "Specimen": 422,
                "DiagnosticReport": 403}
    if kind == "Observation":  # a 200 that is an OperationOutcome
        return 200, _leaky_outcome(), False
    return statuses.get(kind, 400), _leaky_outcome(), False


def _database_text(path) -> str:
    """Every value of every table of a SQLite file, as text."""
    with closing(sqlite3.connect(path)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"'))


def test_no_fhir_server_text_reaches_the_audit_the_logs_or_the_answer(make_app, servers, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    stub = FhirStub(_leaky_answer)
    servers.append(stub)
    app = make_app(allowed_fhir_servers=(stub.url,), fhir_cache_ttl=0)
    body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": stub.url,
            "context": {"userId": "Practitioner/x", "patientId": PATIENT_ID}}
    response = app.test_client().post(SERVICE, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 412
    assert len(stub.paths) >= 6  # every query was asked, and every answer carried the patient's details
    answer = response.get_data(as_text=True)
    store = app.extensions["trial_eligibility"].store
    sources = store.hook_calls()[-1]["data_sources"]
    database = _database_text(tmp_path / "cds.sqlite3")
    files = b"".join(p.read_bytes() for p in tmp_path.glob("cds.sqlite3*") if p.is_file())
    for secret in (NAME, "Zebulon", "Quintavalle", BIRTH_DATE, PATIENT_ID, "search /fhir"):
        assert secret not in answer, f"the answer holds {secret!r}"
        assert secret not in database and secret.encode() not in files, f"the database holds {secret!r}"
        assert secret not in caplog.text, f"a log line holds {secret!r}"
    # What failed is still said, in the service's words: a status and an error class per key.
    assert "fhir-400" in sources["conditions"]["detail"]
    assert "operation-outcome" in sources["labResults"]["detail"]
    assert "fhir-500" in sources["allergies"]["detail"]
    assert "access-denied" in sources["cytologyReports"]["detail"]
    assert "fhir-422" in sources["specimens"]["detail"]
    assert "not found" in sources["patient"]["detail"]
    assert "'conditions'" in answer and "fhir-400" in answer


# --------------------------------------------------------------------------- 2. every wait bounded

OBS = Search("Observation", (("code", "http://loinc.org|751-8"),))


def _trickled_body() -> bytes:
    body = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()
    return body.ljust(int(TRICKLE_SECONDS / 0.5), b" ")


@pytest.mark.parametrize("shape", ["body", "headers", "chunked"])
def test_a_trickling_fhir_server_is_cut_off_at_the_deadline(servers, shape):
    """Headers then a byte every 0.5 s; or the headers themselves a byte at a time; or a
    chunked body whose chunks come a byte at a time. Each read returns in time, so only a
    bound on the whole response ends it."""
    body = _trickled_body()
    if shape == "body":
        server = TrickleServer(_json_head(len(body)), body)
    elif shape == "headers":
        head = _json_head(len(body))
        server = TrickleServer(b"HTTP/1.1 200 OK\r\n", head[len(b"HTTP/1.1 200 OK\r\n"):] + body)
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n"
        server = TrickleServer(head, b"".join(b"1\r\n%s\r\n" % body[i:i + 1] for i in range(len(body) // 8)))
    servers.append(server)
    client = FhirClient([server.url])
    try:
        started = time.monotonic()
        result = client.fetch(server.url, None, {"obs": OBS}, "p1", time.monotonic() + 1.0)["obs"]
        assert time.monotonic() - started < BOUND
    finally:
        client.close()
    assert isinstance(result.error, FhirOutOfTime) and result.error.error_class == "timeout"
    # The fetch thread is not left reading: it ends at the deadline, and the socket is dropped.
    assert _eventually(lambda: not _fetch_threads()), "a fetch thread is still reading the trickle"
    assert _eventually(lambda: server.cut_off == server.connections == 1)


def _healthy_answer(request: dict):
    prefetch = request["prefetch"]
    by_type = {"Condition": prefetch["conditions"], "AllergyIntolerance": prefetch["allergies"],
               "Specimen": prefetch["specimens"]}

    def answer(path: str):
        kind = urlsplit(path).path.split("/fhir/", 1)[1].split("/")[0]
        return 200, json.dumps(by_type[kind]).encode(), False
    return answer


def _hook(app, request: dict) -> tuple[int, dict]:
    response = app.test_client().post(SERVICE, data=json.dumps(request), content_type="application/json")
    return response.status_code, response.get_json()


def test_a_trickling_fhir_server_delays_no_other_hook_call(make_app, servers):
    """Two calls whose seven queries all go to a trickling server (14 fetches at once, more
    than a shared pool of 8 would have held) answer 412 by their deadline; calls to a healthy
    server made meanwhile, and right after, answer 200 with their card."""
    body = _trickled_body()
    trickle = TrickleServer(_json_head(len(body)), body)
    servers.append(trickle)
    eligible = without(demo("eligible"), "conditions", "allergies", "specimens")
    healthy = FhirStub(_healthy_answer(demo("eligible")))
    servers.append(healthy)
    trickle_url = trickle.url + "/fhir"
    app = make_app(allowed_fhir_servers=(trickle_url, healthy.url), fhir_deadline=2.0, fhir_cache_ttl=0)
    stuck = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": trickle_url,
             "context": {"userId": "Practitioner/x", "patientId": "g001"}}
    answers: list[tuple[int, float]] = []

    def stuck_call():
        started = time.monotonic()
        status, _ = _hook(app, stuck)
        answers.append((status, time.monotonic() - started))

    callers = [threading.Thread(target=stuck_call) for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        assert _eventually(lambda: trickle.connections >= 9), "the stuck calls never reached the trickle"
        during = [_hook(app, {**eligible, "fhirServer": healthy.url}) for _ in range(3)]
    finally:
        for caller in callers:
            caller.join(TRICKLE_SECONDS * 2)
    after = [_hook(app, {**eligible, "fhirServer": healthy.url}) for _ in range(3)]
    for status, answer in during + after:
        assert status == 200 and len(answer["cards"]) == 1, answer
    assert [status for status, _ in answers] == [412, 412]
    assert all(elapsed < BOUND for _, elapsed in answers), answers
    assert any(path.startswith("/fhir/Condition") for path in healthy.paths)
    assert _eventually(lambda: not _fetch_threads()), "fetch threads outlived their hook calls"
    assert _eventually(lambda: trickle.cut_off == trickle.connections)


def test_a_wait_that_ends_in_time_leaves_the_connection_alone(servers):
    """The watchdog only ever shuts down a request still under way at its deadline: a
    request that was answered in time keeps its pooled connection."""
    stub = FhirStub(lambda path: (200, json.dumps({"resourceType": "Patient", "id": "p1"}).encode(), False))
    servers.append(stub)
    client = FhirClient([stub.url], cache_ttl=0)
    try:
        shut_down = WATCHDOG.shut_down
        for _ in range(3):  # a generous deadline: a loopback answer on a loaded machine still comes in time
            result = client.fetch(stub.url, None, {"p": Read("Patient")}, "p1", time.monotonic() + 2.0)["p"]
            assert result.error is None
        time.sleep(2.1)  # past every deadline: nothing may be shut down now
        again = client.fetch(stub.url, None, {"p": Read("Patient")}, "p1", time.monotonic() + 5)["p"]
        assert again.error is None and WATCHDOG.shut_down == shut_down
    finally:
        client.close()


def test_a_trickling_terminology_server_is_cut_off_and_a_huge_answer_refused(servers):
    from cds_service.fhir.terminology import TerminologyClient
    from cds_service.fhir.terminology_questions import SUBSUMES, Question

    body = _trickled_body()
    trickle = TrickleServer(_json_head(len(body)), body)
    huge = FhirStub(lambda path: (200, b'{"resourceType":"Parameters","parameter":[' + b" " * 2_000_000 + b"]}",
                                  True))
    servers.extend([trickle, huge])
    question = Question((SUBSUMES, "http://snomed.info/sct", "254837009"), "http://snomed.info/sct", "1234567")
    for server, expected in ((trickle.url, "timeout"), (huge.url, "too-large")):
        tx = TerminologyClient(server, timeout=1.0)
        try:
            started = time.monotonic()
            outcome, answer, asked = tx._ask(question, time.monotonic() + 1.0)
            assert (outcome, answer, asked) == (expected, None, 1)
            assert time.monotonic() - started < BOUND
        finally:
            tx.close()
    assert _eventually(lambda: trickle.cut_off == trickle.connections == 1)


# --- the JWK Set fetch (JWKS_TIMEOUT bounds the whole download of an allowlisted jku)

def _tls_for_loopback(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def test_a_trickling_jku_is_cut_off_at_jwks_timeout(tmp_path, servers, monkeypatch):
    monkeypatch.setattr(jwks_module, "JWKS_TIMEOUT", 1.0)
    context, cert_file = _tls_for_loopback(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))  # the test's own CA, for this test only
    signing = ec.generate_private_key(ec.SECP384R1())
    jwks = json.dumps({"keys": [{**ECAlgorithm.to_jwk(signing.public_key(), as_dict=True), "kid": "k1",
                                 "use": "sig", "alg": "ES384"}]}).encode()
    server = TrickleServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                           + str(len(jwks)).encode() + b"\r\n\r\n", jwks, tls=context)  # ~0.5 s a byte
    servers.append(server)
    jku = f"{server.url}/jwks.json"
    iss = "https://ehr.example.com"
    trust = tmp_path / "trusted.yaml"
    trust.write_text(yaml.safe_dump({"algorithms": ["ES384"], "clients": [{"iss": iss, "jku": [jku]}]}))
    audience = "https://cds.example.org/cds-services/trial-eligibility"
    auth = Authenticator.from_file(trust, public_base_url="https://cds.example.org",
                                   jti_store=SqliteJtiStore(tmp_path / "jti.sqlite3"))

    def attempt() -> tuple[str, float]:
        now = int(time.time())
        text = jwt.encode({"iss": iss, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())},
                          signing, algorithm="ES384", headers={"typ": "JWT", "kid": "k1", "jku": jku})
        started = time.monotonic()
        try:
            auth.authenticate(f"Bearer {text}", "/cds-services/trial-eligibility")
            return "accepted", time.monotonic() - started
        except AuthError as error:
            return error.reason, time.monotonic() - started

    outcomes: list[tuple[str, float]] = []
    waiting = threading.Thread(target=lambda: outcomes.append(attempt()))  # waits on the jku's lock meanwhile
    started = time.monotonic()
    waiting.start()
    outcomes.append(attempt())
    waiting.join(TRICKLE_SECONDS * 2)
    assert [reason for reason, _ in outcomes] == ["jwks-unavailable", "jwks-unavailable"]
    assert all(elapsed < BOUND for _, elapsed in outcomes) and time.monotonic() - started < BOUND, outcomes
    assert server.connections == 1  # one fetch for both (the second waited on it, then the rate limit)
    assert _eventually(lambda: server.cut_off == 1)


# --------------------------------------------------------------------------- 3. every byte bounded

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_answer_over_the_limit_is_refused_without_being_held(servers, chunked):
    big = b'{"resourceType":"Bundle","type":"searchset","entry":[' + b" " * (50 * 1024 * 1024) + b"]}"
    stub = FhirStub(lambda path: (200, big, chunked))
    servers.append(stub)
    client = FhirClient([stub.url], max_response_bytes=1024 * 1024)
    try:
        result = client.fetch(stub.url, None, {"obs": OBS}, "p1", time.monotonic() + 30)["obs"]
    finally:
        client.close()
    assert isinstance(result.error, FhirBadResponse) and result.error.error_class == "too-large"
    assert result.resources == [] and len(client._cache) == 0
    # The client stopped reading: most of the 50 MB never left the server (loopback buffers hold a few MB).
    assert _eventually(lambda: stub.sent < len(big) and not _fetch_threads())
    assert stub.sent < len(big) / 2


def test_a_limit_plus_one_byte_is_too_large_and_the_limit_itself_is_not(servers):
    limit = 64 * 1024
    exact = b'{"resourceType":"Patient","id":"p1"}'
    exact = exact[:-1] + b" " * (limit - len(exact)) + b"}"
    bodies = {"/fhir/Patient/p1": exact, "/fhir/Patient/p2": exact[:-1] + b" }"}
    stub = FhirStub(lambda path: (200, bodies[path], True))
    servers.append(stub)
    client = FhirClient([stub.url], max_response_bytes=limit, cache_ttl=0)
    try:
        fits = client.fetch(stub.url, None, {"p": Read("Patient")}, "p1", time.monotonic() + 5)["p"]
        over = client.fetch(stub.url, None, {"p": Read("Patient")}, "p2", time.monotonic() + 5)["p"]
    finally:
        client.close()
    assert fits.error is None and over.error.error_class == "too-large"


def test_a_too_large_answer_gives_412_naming_the_key_and_the_class(make_app, servers):
    request = without(demo("eligible"), "conditions")
    conditions = demo("eligible")["prefetch"]["conditions"]
    padded = json.dumps({**conditions, "padding": "x" * 200_000}).encode()
    stub = FhirStub(lambda path: (200, padded, False))
    servers.append(stub)
    app = make_app(allowed_fhir_servers=(stub.url,), fhir_max_response_bytes=64 * 1024)
    status, answer = _hook(app, {**request, "fhirServer": stub.url})
    assert status == 412
    issue = next(i for i in answer["issue"] if "conditions" in i["diagnostics"])
    assert "too-large" in issue["diagnostics"] and issue["expression"] == ["prefetch.conditions"]


class FakeTimer:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_cache_never_holds_more_bytes_than_its_bound():
    bound = 100_000
    cache = ResponseCache(bound, ttl=60, timer=FakeTimer())
    sizes = [1, 5_000, 30_000, 70_000, 2_000, 99_000 - CACHE_ENTRY_OVERHEAD, 50_000, 10] * 5
    for n, size in enumerate(sizes):
        cache.put(("base", "", f"url-{n}"), b"x" * size)
        assert cache.bytes <= bound
        assert cache.get(("base", "", f"url-{n}")) is not None  # the newest always fits
    cache.put(("base", "", "huge"), b"x" * bound)  # larger than the bound with its overhead: not kept
    assert cache.get(("base", "", "huge")) is None and cache.bytes <= bound


def _held(cache: ResponseCache) -> int:
    """Entries the cache holds, expired or not (TTLCache's own len() and currsize expire first)."""
    return Cache.__len__(cache._cache)


def test_expired_entries_are_freed_without_waiting_for_a_read():
    timer = FakeTimer()
    cache = ResponseCache(1_000_000, ttl=60, timer=timer)
    cache.put(("b", "", "old"), b"x" * 1000)
    timer.now += 61
    assert _held(cache) == 1  # cachetools frees an expired entry lazily: still held...
    cache.expire()
    assert _held(cache) == 0 and cache.bytes == 0  # ...expire() frees it
    cache.put(("b", "", "a"), b"x")
    timer.now += 61
    cache.put(("b", "", "b"), b"x")  # every write drops what has expired
    assert _held(cache) == 1 and cache.get(("b", "", "b")) == b"x"


def test_the_sweep_frees_expired_entries_of_an_idle_cache():
    timer = FakeTimer()
    cache = ResponseCache(1_000_000, ttl=60, timer=timer, sweep_every=0.01)
    try:
        cache.put(("b", "", "u"), b"x" * 1000)
        timer.now += 61  # nobody reads or writes from here on
        assert _eventually(lambda: _held(cache) == 0)
    finally:
        cache.close()


def test_the_client_cache_is_bounded_in_bytes(servers):
    page = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [], "pad": "x" * 20_000}).encode()
    stub = FhirStub(lambda path: (200, page, False))
    servers.append(stub)
    client = FhirClient([stub.url], cache_bytes=50_000)
    try:
        for n in range(6):
            query = Search("Observation", (("code", f"http://loinc.org|{n}"),))
            assert client.fetch(stub.url, None, {"q": query}, "p1", time.monotonic() + 5)["q"].error is None
            assert client._cache.bytes <= 50_000
        assert len(client._cache) == 2  # each page costs ~21 kB with its overhead
    finally:
        client.close()


def test_settings_read_the_new_bounds():
    from cds_service.hooks.config import ConfigError, Settings

    settings = Settings.from_env({"CDS_FHIR_MAX_RESPONSE_BYTES": "1048576", "CDS_FHIR_CACHE_BYTES": "0"})
    assert (settings.fhir_max_response_bytes, settings.fhir_cache_bytes) == (1048576, 0)
    defaults = Settings.from_env({})
    assert (defaults.fhir_max_response_bytes, defaults.fhir_cache_bytes) == (20 * 1024 * 1024, 64 * 1024 * 1024)
    with pytest.raises(ConfigError, match="CDS_FHIR_MAX_RESPONSE_BYTES"):
        Settings.from_env({"CDS_FHIR_MAX_RESPONSE_BYTES": "lots"})


def test_no_url_or_patient_id_in_a_log_at_debug(servers, caplog):
    """urllib3 logs each request line (a search URL holds the patient id) at DEBUG: kept out."""
    caplog.set_level(logging.DEBUG)
    stub = FhirStub(lambda path: (200, json.dumps({"resourceType": "Patient", "id": "pid-4471"}).encode(), False))
    servers.append(stub)
    client = FhirClient([stub.url])
    try:
        assert client.fetch(stub.url, None, {"p": Read("Patient")}, "pid-4471", time.monotonic() + 5)["p"].error is None
    finally:
        client.close()
    assert "pid-4471" not in caplog.text and not re.search(r"GET /fhir", caplog.text)
