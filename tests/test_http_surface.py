"""The service's HTTP surface as a client meets it: `cds-service serve` (gunicorn, on
127.0.0.1, started here and stopped by pid) spoken to over raw sockets, and the app
itself. Every answer, errors and gunicorn's own included, carries Cache-Control:
no-store and X-Content-Type-Options: nosniff; every error is an OperationOutcome;
bodies over CDS_MAX_REQUEST_BYTES are 413 however they are framed; the logs are JSON
lines without query strings, tokens or PHI."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hookdata import demo
from netutil import dechunk, free_port, stop

EXE = Path(sys.executable).parent / "cds-service"
SERVICE = "/cds-services/trial-eligibility"
LIMIT = 65536  # CDS_MAX_REQUEST_BYTES of the server below; the demo request is ~31 kB
PHI = "Ada%20Testpatient"  # what a careless client could put in a query string or a request line


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("surface")
    port = free_port()
    env = dict(os.environ, CDS_DATA_DIR=str(directory), CDS_EVALUATION_DATE="2026-06-15",
               CDS_MAX_REQUEST_BYTES=str(LIMIT))
    env.pop("CDS_TRUSTED_CLIENTS", None)
    log = directory / "stderr.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--workers", "1", "--threads", "2"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    yield {"port": port, "base": base, "proc": proc, "log": log}
    stop(proc)


def exchange(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes (gunicorn's own errors close
    the connection; the requests below ask for Connection: close)."""
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed first
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body


def post_head(framing: str, content_type: str = "application/json") -> bytes:
    return (f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{framing}"
            "Connection: close\r\n\r\n").encode()


def chunked(body: bytes, size: int = 8192) -> bytes:
    return b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n"
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def assert_outcome(status, headers, body, expected_status, code):
    assert status == expected_status, body[:300]
    assert headers["content-type"].split(";")[0] == "application/fhir+json", headers
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == code, outcome
    assert_security_headers(headers)
    return outcome


def assert_security_headers(headers):
    assert headers.get("cache-control") == "no-store" and headers.get("x-content-type-options") == "nosniff", \
        headers


# -- 413, however the body is framed -------------------------------------------------------------

def padded(size: int) -> bytes:
    """The demo request, padded with whitespace to exactly `size` bytes: valid JSON."""
    body = json.dumps(demo("eligible")).encode()
    return body + b" " * (size - len(body))


def test_a_chunked_body_at_the_limit_is_read_whole(server):
    status, headers, body = exchange(server, post_head("Transfer-Encoding: chunked\r\n") + chunked(padded(LIMIT)))
    assert status == 200 and json.loads(body)["cards"], body[:300]
    assert_security_headers(headers)


@pytest.mark.parametrize("name, body", [
    # was 200: werkzeug stopped reading at the limit and the excess was whitespace
    ("whitespace past the limit", padded(LIMIT + 1)),
    # was 400 "not valid JSON": the body cut at the limit
    ("a string past the limit", b'{"hook": "' + b"a" * LIMIT + b'"}'),
    ("far past the limit", padded(4 * LIMIT)),
])
def test_a_chunked_body_over_the_limit_is_413(server, name, body):
    status, headers, answer = exchange(server, post_head("Transfer-Encoding: chunked\r\n") + chunked(body))
    outcome = assert_outcome(status, headers, answer, 413, "too-costly")
    assert "CDS_MAX_REQUEST_BYTES" in outcome["issue"][0]["diagnostics"], name


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_sent(server):
    # Only the head goes out: the answer must not wait for LIMIT + 1 bytes that never come.
    status, headers, body = exchange(server, post_head(f"Content-Length: {LIMIT + 1}\r\n"))
    assert_outcome(status, headers, body, 413, "too-costly")
    status, headers, body = exchange(server, post_head(f"Content-Length: {LIMIT + 1}\r\n") + padded(LIMIT + 1))
    assert_outcome(status, headers, body, 413, "too-costly")


def test_feedback_bodies_have_the_same_limit(server):
    head = (f"POST {SERVICE}/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    status, headers, body = exchange(server, head + chunked(b'{"feedback": []}' + b" " * LIMIT))
    assert_outcome(status, headers, body, 413, "too-costly")


# -- gunicorn's own errors --------------------------------------------------------------------------

@pytest.mark.parametrize("name, request_bytes, status, code", [
    ("invalid request line", f"GET /cds-services?patient={PHI} HTTP/1.1 x\r\nHost: x\r\n\r\n".encode(), 400,
     "structure"),
    ("request line too long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too-costly"),
    ("header too large", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
     "too-costly"),
    ("too many headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
     + b"\r\n", 431, "too-costly"),
    ("smuggling: Content-Length and Transfer-Encoding",
     post_head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400, "structure"),
    ("smuggling: two Content-Lengths", post_head("Content-Length: 2\r\nContent-Length: 3\r\n") + b"{}", 400,
     "structure"),
    ("a transfer coding that does not end in chunked", post_head("Transfer-Encoding: gzip\r\n") + b"x", 400,
     "structure"),
    ("an unsupported transfer coding", post_head("Transfer-Encoding: br\r\n") + b"0\r\n\r\n", 501,
     "not-supported"),
    ("bad chunk size", post_head("Transfer-Encoding: chunked\r\n") + b"zz\r\n{}\r\n0\r\n\r\n", 400, "structure"),
    ("a chunk without its terminator", post_head("Transfer-Encoding: chunked\r\n") + b"2\r\n{}XX0\r\n\r\n", 400,
     "structure"),
])
def test_every_error_is_an_operation_outcome_with_the_security_headers(server, name, request_bytes, status, code):
    answer = exchange(server, request_bytes)
    outcome = assert_outcome(*answer, status, code)
    assert "Testpatient" not in json.dumps(outcome), name  # nothing of the request is echoed


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/healthz", 200), ("GET", "/readyz", 200), ("GET", "/cds-services", 200), ("GET", "/openapi.json", 200),
    ("GET", f"/nowhere?patient={PHI}", 404), ("DELETE", "/cds-services", 405), ("OPTIONS", "/cds-services", 200),
    ("HEAD", "/healthz", 200),
])
def test_every_answer_carries_the_security_headers(server, method, path, status):
    request = urllib.request.Request(server["base"] + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            got, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        got, headers, body = err.code, err.headers, err.read()
    assert got == status
    assert_security_headers({k.lower(): v for k, v in headers.items()})
    if status >= 400:
        assert headers["Content-Type"].startswith("application/fhir+json")
        assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_the_415_and_the_400_of_the_hook_are_operation_outcomes(server):
    answer = exchange(server, post_head("Content-Length: 2\r\n", "text/plain") + b"{}")
    assert_outcome(*answer, 415, "not-supported")
    answer = exchange(server, post_head("Content-Length: 1\r\n") + b"{")
    assert_outcome(*answer, 400, "structure")


# -- the logs, last: the server is stopped and its stderr read ----------------------------------------

def test_zz_the_logs_are_json_lines_without_query_strings_or_phi(server):
    request = demo("eligible")
    request["hookInstance"] = "5c7b1a3e-0d5e-4b8f-9a41-2f1f7e0c6d11"
    body = json.dumps(request).encode()
    status, _, _ = exchange(server, post_head(f"Content-Length: {len(body)}\r\n") + body)
    assert status == 200
    exchange(server, f"GET /cds-services?patient={PHI} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    server["proc"].send_signal(signal.SIGTERM)
    server["proc"].wait(timeout=30)
    text = server["log"].read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    # The command's own notice before gunicorn starts is a plain line on stderr, not a log line.
    notices = [line for line in lines if line.startswith("cds-service: ")]
    events = [json.loads(line) for line in lines if not line.startswith("cds-service: ")]
    assert len(notices) <= 1 and events
    assert all({"time", "level", "logger"} <= set(e) for e in events)
    hook = next(e for e in events if e.get("hookInstance") == request["hookInstance"])
    assert hook["event"] == "hook" and hook["service"] == "trial-eligibility" and hook["outcome"] == "cards"
    assert hook["status"] == 200 and hook["latencyMs"] > 0
    access = [e for e in events if e.get("event") == "access"]
    assert {"/cds-services", SERVICE, "/healthz", "(other)"} <= {e["path"] for e in access}
    assert all("?" not in e["path"] for e in access)
    assert {e["status"] for e in access} >= {200, 404, 405, 413}
    refused = [e for e in events if e.get("event") == "http-error"]
    assert {"InvalidHTTPVersion", "LimitRequestLine", "LimitRequestHeaders", "InvalidHeader"} <= \
        {e["error"] for e in refused}
    for secret in ("Testpatient", "g001", "1978-03-22", "Mei", "Traceback"):
        assert secret not in text, secret


# -- the app itself ---------------------------------------------------------------------------------

def test_an_unexpected_error_is_a_500_outcome_logged_by_class_and_frames_only(make_app, monkeypatch):
    import logging

    from cds_service.hooks.server_logging import JsonLineFormatter

    app = make_app()
    service = app.extensions["trial_eligibility"]

    def broken(*args, **kwargs):
        raise RuntimeError("Ada Testpatient, born 1978-03-22")

    monkeypatch.setattr(service, "call", broken)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("cds_service").addHandler(handler)
    try:
        response = app.test_client().post(SERVICE, json=demo("eligible"))
    finally:
        logging.getLogger("cds_service").removeHandler(handler)
    assert response.status_code == 500 and response.mimetype == "application/fhir+json"
    assert response.get_json()["issue"][0]["code"] == "exception"
    assert response.headers["Cache-Control"] == "no-store"
    line = JsonLineFormatter().format(next(r for r in records if r.levelname == "ERROR"))
    logged = json.loads(line)
    assert logged["event"] == "error" and logged["error"] == "RuntimeError" and logged["path"] == SERVICE
    assert logged["exception"][0] == "builtins.RuntimeError" and any("broken" in f for f in logged["exception"])
    assert "Testpatient" not in line and "1978" not in line


def test_a_gunicorn_error_it_does_not_know_is_a_500_outcome():
    from cds_service.hooks.server import ThreadWorker

    class Log:
        def __init__(self):
            self.lines = []

        def error(self, message, **kwargs):
            self.lines.append(message)

        warning = debug = error

    worker = ThreadWorker.__new__(ThreadWorker)  # handle_error needs only a log
    worker.log = Log()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        worker.handle_error(None, ours, ("127.0.0.1", 1), RuntimeError("Ada Testpatient"))
        ours.close()
        received = theirs.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ") and b"Cache-Control: no-store" in head
    assert json.loads(body)["issue"][0]["code"] == "exception" and b"Testpatient" not in body
    assert worker.log.lines and all("Testpatient" not in line for line in worker.log.lines)


def test_the_app_answers_every_error_it_can_produce_as_an_outcome(client):
    for response in (client.get("/nowhere"), client.delete(SERVICE), client.put("/healthz"),
                     client.post(SERVICE, data="{}", content_type="text/plain"),
                     client.post(SERVICE, data="[", content_type="application/json"),
                     client.post(SERVICE + "/feedback", data="{}", content_type="application/json")):
        assert response.status_code in (400, 404, 405, 415), response.status_code
        assert response.mimetype == "application/fhir+json"
        assert response.get_json()["resourceType"] == "OperationOutcome"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_lines_logged_while_a_hook_call_is_served_name_its_hook_instance():
    import logging

    from cds_service.hooks.server_logging import JsonLineFormatter, hook_instance_logged

    def line(message):
        record = logging.LogRecord("cds_service.fhir.client", logging.WARNING, __file__, 1, message, (), None)
        return json.loads(JsonLineFormatter().format(record))

    instance = "5c7b1a3e-0d5e-4b8f-9a41-2f1f7e0c6d11"
    with hook_instance_logged(instance):
        assert line("FHIR labResults: deadline exceeded")["hookInstance"] == instance
        assert line('{"event": "hook", "hookInstance": null}')["hookInstance"] is None  # the event's own wins
    assert "hookInstance" not in line("FHIR labResults: deadline exceeded")
    with hook_instance_logged("Ada Testpatient"):  # not a UUID: not logged
        assert "hookInstance" not in line("FHIR labResults: deadline exceeded")
