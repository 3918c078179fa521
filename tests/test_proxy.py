"""nginx (deploy/nginx.conf, rendered as in production: TLS with a self-signed
certificate made here) in front of `cds-service serve --workers 1 --threads 4`,
both on 127.0.0.1 free ports, started by this module and stopped by pid.

Shown: slow clients (headers or a body sent a byte at a time) no longer stall a
1-worker service, while the same clients sent to the service directly do; an
oversized body (declared or chunked) gets 413 from nginx, never reaching the
service; nginx's own errors are OperationOutcomes; the JWT `aud` check works
behind the proxy; no token in nginx's log.

CI installs nginx (Debian package, .ci/run); locally the tests skip with a
message if it is missing (never under CI=true)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.hooks.config import Settings
from netutil import free_port, dechunk

ROOT = Path(__file__).parents[1]
EXE = Path(sys.executable).parent / "cds-service"
DEMO = (ROOT / "cds_service" / "demo" / "hook-requests" / "eligible.json").read_bytes()
SERVICE = "/cds-services/trial-eligibility"
ISS = "https://ehr.example.org/fhir"
KEY = ec.generate_private_key(ec.SECP384R1())
LIMIT = 20 * 1024 * 1024  # client_max_body_size 20m

_spec = importlib.util.spec_from_file_location("nginx_conf", ROOT / "deploy" / "nginx_conf.py")
nginx_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nginx_conf)


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed: .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx not installed (apt-get install nginx)")
    return found


def test_without_nginx_these_tests_skip_locally_and_fail_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install nginx"):
        _nginx()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs it"):
        _nginx()


def token(aud: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}, KEY,
                      algorithm="ES384", headers={"kid": "ehr-1", "typ": "JWT"})


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.service_port, self.proxy_port = free_port(), free_port()
        self.public = f"https://127.0.0.1:{self.proxy_port}"
        self.cert, self.key = nginx_conf.self_signed(tmp / "tls", "localhost")
        self.tls = ssl.create_default_context(cafile=str(self.cert))  # verified: the certificate names 127.0.0.1
        self.tokens: list[str] = []

    # --- clients ------------------------------------------------------------------
    def connect(self, direct: bool = False, timeout: float = 30) -> socket.socket:
        port = self.service_port if direct else self.proxy_port
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return sock if direct else self.tls.wrap_socket(sock, server_hostname="127.0.0.1")

    def request(self, head: str, body: bytes = b"", *, direct: bool = False, timeout: float = 30):
        """One request on a new connection: (status, headers as a dict of lists, body)."""
        with self.connect(direct, timeout) as sock:
            sock.sendall(head.encode() + body)
            return read_response(sock)

    def hook_call(self, *, direct: bool = False, aud: str | None = None, timeout: float = 30):
        bearer = token(aud or self.public + SERVICE)
        self.tokens.append(bearer)
        head = (f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {bearer}\r\nContent-Length: {len(DEMO)}\r\nConnection: close\r\n\r\n")
        return self.request(head, DEMO, direct=direct, timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, list[str]], bytes]:
    """Reads up to the end of the answer (its Content-Length, else the connection's
    end), not waiting for the server to close: after a 413 nginx lingers, reading
    what the client still sends."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    while (length is None or len(body) < int(length.group(1))) and (chunk := sock.recv(65536)):
        body += chunk
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in ",".join(headers.get("transfer-encoding", [])):
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(stack: Stack, direct: bool, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if stack.request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", direct=direct,
                             timeout=5)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{'service' if direct else 'nginx'} did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    nginx = _nginx()
    tmp = tmp_path_factory.mktemp("proxy")
    s = Stack(tmp)
    trusted = tmp / "trusted-clients.yaml"
    jwk = dict(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key())), kid="ehr-1", alg="ES384", use="sig")
    trusted.write_text(yaml.safe_dump({"clients": [{"iss": ISS, "jwks": {"keys": [jwk]}}]}))
    # The service would take 64 MiB: a 413 for 20 MiB + 1 can only be nginx's.
    env = dict(os.environ, CDS_DATA_DIR=str(tmp / "data"), CDS_EVALUATION_DATE="2026-06-15",
               CDS_TRUSTED_CLIENTS=str(trusted), CDS_PUBLIC_BASE_URL=s.public,
               CDS_MAX_REQUEST_BYTES=str(64 * 1024 * 1024))
    service_log = tmp / "service.log"
    with open(service_log, "wb") as log:
        service = subprocess.Popen([str(EXE), "serve", "--port", str(s.service_port), "--workers", "1",
                                    "--threads", "4"], env=env, stdout=log, stderr=subprocess.STDOUT)
    nginx_proc = None
    try:
        _wait_until_up(s, True, service, service_log)
        (tmp / "nginx-temp").mkdir()
        s.config = tmp / "nginx.conf"
        s.config.write_text(nginx_conf.render({
            "CDS_PROXY_SERVER_NAME": "localhost", "CDS_PROXY_HTTPS_PORT": str(s.proxy_port),
            "CDS_PROXY_TLS_CERT": str(s.cert), "CDS_PROXY_TLS_KEY": str(s.key),
            "CDS_PROXY_UPSTREAM": f"127.0.0.1:{s.service_port}", "CDS_PROXY_TEMP_DIR": str(tmp / "nginx-temp")}))
        # Two files: nginx opens /dev/stdout anew (appending), so a shared file would be overwritten.
        s.nginx_log, s.nginx_errors = tmp / "nginx-access.log", tmp / "nginx-error.log"
        # As root, nginx's workers would run as nobody, who cannot enter pytest's 0700 tmp dirs.
        user = "user root; " if os.geteuid() == 0 else ""
        with open(s.nginx_log, "ab") as out, open(s.nginx_errors, "ab") as err:
            nginx_proc = subprocess.Popen([nginx, "-p", f"{tmp}/", "-c", str(s.config),
                                           "-g", f"daemon off; pid {tmp}/nginx.pid; {user}"], stdout=out, stderr=err)
        _wait_until_up(s, False, nginx_proc, s.nginx_errors)
        yield s
    finally:
        if nginx_proc is not None:
            _stop(nginx_proc)  # TERM: nginx's fast shutdown, workers included
        _stop(service)


def access_log(stack: Stack) -> list[dict]:
    return [json.loads(line) for line in stack.nginx_log.read_text().splitlines()
            if line.startswith("{") and '"event":"proxy"' in line]


def logged(stack: Stack, before: int, status: int) -> dict:
    """The access log line of an answer with this status, after the first `before`
    lines: nginx writes it once the connection is done with (after a 413 it lingers
    first, reading what the client still sends), so it is waited for."""
    deadline = time.monotonic() + 60
    while not (lines := [e for e in access_log(stack)[before:] if e["status"] == status]):
        assert time.monotonic() < deadline, f"no {status} in nginx's access log"
        time.sleep(0.1)
    return lines[0]


# --- Slow clients --------------------------------------------------------------------

class SlowClient(threading.Thread):
    """Sends a request's headers, or its body, one byte every `pause` seconds until
    told to stop; records how far it got and whether the server closed on it."""

    def __init__(self, stack: Stack, *, direct: bool, slow_body: bool, pause: float = 0.2):
        super().__init__(daemon=True)
        self.stack, self.direct, self.pause = stack, direct, pause
        head = (f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(DEMO)}\r\n\r\n").encode()
        self.fast, self.slow = (head, DEMO) if slow_body else (b"", head)
        self.sent = 0
        self.closed_by_server = False
        self.stop = threading.Event()

    def run(self):
        try:
            with self.stack.connect(self.direct) as sock:
                sock.sendall(self.fast)
                for i in range(len(self.slow)):
                    if self.stop.wait(self.pause):
                        return
                    sock.sendall(self.slow[i:i + 1])
                    self.sent += 1
        except OSError:
            self.closed_by_server = True


def start_slow_clients(stack: Stack, direct: bool) -> list[SlowClient]:
    """Two clients trickling headers, two trickling a body; returns once each has
    sent a few bytes (so each holds its connection and, without a proxy, a thread)."""
    clients = [SlowClient(stack, direct=direct, slow_body=i % 2 == 1) for i in range(4)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 60
    while any(c.sent < 3 for c in clients):
        assert time.monotonic() < deadline and not any(c.closed_by_server for c in clients), "slow clients"
        time.sleep(0.05)
    return clients


def release(clients: list[SlowClient]) -> None:
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(timeout=30)


def test_slow_clients_do_not_stall_the_service_behind_nginx(stack):
    clients = start_slow_clients(stack, direct=False)
    try:
        answered_while_all_slow_clients_held_on = []
        for _ in range(6):
            status, _, body = stack.hook_call(timeout=30)
            answered_while_all_slow_clients_held_on.append(not any(c.closed_by_server or not c.is_alive()
                                                                   for c in clients))
            assert status == 200, body[:500]
            assert json.loads(body)["cards"][0]["extension"]["trial-eligibility"]["status"] == "eligible"
        # nginx closes a header trickle after client_header_timeout (10 s): the first
        # answers came long before that, with all four slow clients connected.
        assert answered_while_all_slow_clients_held_on[0], answered_while_all_slow_clients_held_on
    finally:
        release(clients)


def test_for_contrast_slow_clients_sent_to_the_service_directly_stall_it(stack):
    """Without nginx, four slow clients hold the worker's four threads: a healthy call
    waits until they go (the ordering is asserted, not a duration)."""
    clients = start_slow_clients(stack, direct=True)
    result = {}
    healthy = threading.Thread(target=lambda: result.update(answer=stack.hook_call(direct=True,
                                                                                   aud=stack.public + SERVICE)))
    try:
        healthy.start()
        healthy.join(timeout=1.5)
        stalled = healthy.is_alive()
    finally:
        release(clients)
    healthy.join(timeout=60)
    assert stalled, "the healthy call was answered while four slow clients held the worker's threads"
    assert result["answer"][0] == 200  # and answered once the slow clients went


# --- Limits ------------------------------------------------------------------------

def _post_head(length_or_chunked, token_=None) -> str:
    framing = ("Transfer-Encoding: chunked" if length_or_chunked == "chunked"
               else f"Content-Length: {length_or_chunked}")
    auth = f"Authorization: Bearer {token_}\r\n" if token_ else ""
    return (f"POST {SERVICE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
            f"{framing}\r\nConnection: close\r\n\r\n")


def _nginx_outcome(status, headers, body, expected_status, code):
    assert status == expected_status, body[:300]
    assert headers["content-type"] == ["application/fhir+json"]
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == code
    return outcome


def test_a_declared_oversized_body_gets_413_from_nginx_before_it_is_sent(stack):
    before = len(access_log(stack))
    # Only the headers go out: nginx answers from Content-Length alone.
    status, headers, body = stack.request(_post_head(LIMIT + 1, token(stack.public + SERVICE)))
    outcome = _nginx_outcome(status, headers, body, 413, "too-costly")
    assert "larger than 20 MiB" in outcome["issue"][0]["diagnostics"]  # nginx's text, not the service's
    assert headers["cache-control"] == ["no-store"] and headers["x-content-type-options"] == ["nosniff"]
    line = logged(stack, before, 413)
    assert line["method"] == "POST" and line["path"] == SERVICE
    assert line["upstream"] == "" and line["upstream_status"] == ""  # the service never saw it


def test_a_chunked_body_over_the_limit_gets_413_from_nginx(stack):
    before = len(access_log(stack))
    piece = b" " * (1024 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with stack.connect() as sock:
        sock.sendall(_post_head("chunked").encode())
        try:
            for _ in range(LIMIT // len(piece) + 2):  # one MiB more than the limit, and a bit
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # nginx may answer and close before the last chunk
            pass
        status, headers, body = read_response(sock)
    _nginx_outcome(status, headers, body, 413, "too-costly")
    assert logged(stack, before, 413)["upstream"] == ""


def test_a_body_just_under_the_limit_is_spooled_and_passed_on(stack):
    """19 MiB (the demo request padded with whitespace): over client_body_buffer_size,
    so nginx writes it to its temp directory, then hands it over whole."""
    body = DEMO.rstrip() + b" " * (19 * 1024 * 1024)
    status, _, answer = stack.request(_post_head(len(body), token(stack.public + SERVICE)), body, timeout=60)
    assert status == 200, answer[:300]
    assert json.loads(answer)["cards"][0]["extension"]["trial-eligibility"]["status"] == "eligible"


def test_an_oversized_header_gets_an_operation_outcome_from_nginx(stack):
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {'a' * 20000}\r\nConnection: close\r\n\r\n"
    status, headers, body = stack.request(head)
    _nginx_outcome(status, headers, body, 400, "structure")


def test_nginx_limit_is_not_above_the_services():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    size = next(line.split()[1].rstrip(";") for line in conf.splitlines()
                if line.strip().startswith("client_max_body_size"))
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 <= Settings().max_request_bytes
    assert int(size[:-1]) * 1024 * 1024 == LIMIT
    for directive in ("proxy_request_buffering on;", "client_body_buffer_size", "large_client_header_buffers",
                      "client_body_timeout", "client_header_timeout", "send_timeout", "keepalive 32;"):
        assert directive in conf, directive
    read_timeout = next(int(line.split()[1].rstrip("s;")) for line in conf.splitlines()
                        if line.strip().startswith("proxy_read_timeout"))
    assert read_timeout > Settings().fhir_deadline


# --- Headers, authentication, logs ------------------------------------------------

def test_security_headers_once_each_and_the_forwarded_path_keeps_the_aud_check(stack):
    status, headers, body = stack.hook_call()
    assert status == 200
    for name, value in (("cache-control", "no-store"), ("x-content-type-options", "nosniff"),
                        ("strict-transport-security", "max-age=31536000"), ("x-frame-options", "DENY")):
        assert headers[name] == [value], name
    assert headers["server"] == ["nginx"]  # no version, and not gunicorn's
    # A token made out to the service's own address is not valid through the proxy:
    # aud must be CDS_PUBLIC_BASE_URL + the path, which nginx passes on unchanged.
    status, headers, body = stack.hook_call(aud=f"http://127.0.0.1:{stack.service_port}{SERVICE}")
    assert status == 401 and json.loads(body)["resourceType"] == "OperationOutcome"


def test_nginx_logs_json_lines_without_tokens(stack):
    stack.hook_call()
    log = stack.nginx_log.read_text() + stack.nginx_errors.read_text()
    assert stack.tokens and not any(t in log for t in stack.tokens)
    assert not any(t.split(".")[2] in log for t in stack.tokens)  # not even a signature
    entries = access_log(stack)
    assert entries and all(set(e) >= {"method", "path", "status", "upstream"} for e in entries)
    assert any(e["path"] == SERVICE and e["status"] == 200 for e in entries)


def test_the_template_renderer_fills_every_placeholder_and_refuses_bad_values():
    assert nginx_conf.placeholders() == set(nginx_conf.PLACEHOLDERS)
    values = {name: "x" for name in nginx_conf.PLACEHOLDERS}
    rendered = nginx_conf.render(values)
    assert not re.search(r"\$\{CDS_PROXY_\w+\}", rendered) and "$remote_addr" in rendered and "$host" in rendered
    with pytest.raises(KeyError, match="CDS_PROXY_UPSTREAM"):
        nginx_conf.render({k: v for k, v in values.items() if k != "CDS_PROXY_UPSTREAM"})
    with pytest.raises(ValueError, match="CDS_PROXY_SERVER_NAME"):
        nginx_conf.render(dict(values, CDS_PROXY_SERVER_NAME="a; include /etc/passwd"))


def test_the_load_bench_runs_end_to_end_without_server_errors():
    """bench/load_bench.py for a second per run (its figures are not judged here:
    speed is measured by running it, see bench/README.md)."""
    _nginx()
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed (apt-get install wrk): only bench/load_bench.py needs it")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "load_bench.py"), "--seconds", "1", "--warmup", "0",
                           "--connections", "4", "--writers", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {line.split(":")[0].strip(): line for line in done.stdout.splitlines() if " 5xx " in line}
    assert set(rows) == {"hooks", "hooks + 4 writers", "feedback (writers)"}, done.stdout
    for line in rows.values():
        assert " 5xx 0 " in line and "4xx 0," in line and "socket errors/timeouts 0)" in line, line
