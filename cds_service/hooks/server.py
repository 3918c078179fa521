"""Serving the app with gunicorn: `cds-service serve` runs this; production
deployments can use it or plain gunicorn with this module's settings:

    gunicorn -c python:cds_service.hooks.gunicorn_config --bind 127.0.0.1:8080 \
        'cds_service.hooks.server:worker_app()'

What they add to gunicorn (GUNICORN_SETTINGS): ThreadWorker, whose own errors
(a malformed request line, headers too large, request smuggling, a bad chunk)
are OperationOutcome JSON instead of gunicorn's HTML; GunicornLogger, whose
error and access lines are JSON; header limits. worker_app() refuses, as
`cds-service serve` does, a bind beyond loopback without client authentication.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import sys
import threading
from typing import Any

import orjson
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.http import errors as http_errors
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker as _GthreadWorker

from ..engine import validations_done
from .config import Settings
from .responses import ISSUE_TYPES, SECURITY_HEADERS, operation_outcome
from .server_logging import event, exception_summary

log = logging.getLogger("cds_service.server")

#: gunicorn settings for this service, whichever way it is started (`cds-service serve`,
#: or plain gunicorn with `-c python:cds_service.hooks.gunicorn_config`).
GUNICORN_SETTINGS: dict[str, Any] = {
    "worker_class": "cds_service.hooks.server.ThreadWorker",
    "logger_class": "cds_service.hooks.server_logging.GunicornLogger",
    "errorlog": "-",
    "accesslog": "-",  # JSON lines on stderr, without query strings (GunicornLogger)
    "loglevel": "warning",
    # gunicorn's defaults, said here: a request line of at most 4 kB, 100 headers of at most 8 kB each
    # (a JWT is ~1 kB); past them, 414 / 431 as an OperationOutcome.
    "limit_request_line": 4094,
    "limit_request_fields": 100,
    "limit_request_field_size": 8190,
}


# -- gunicorn's own errors as OperationOutcome ----------------------------------------------------

_INTERNAL = "internal error; see the service log"
_BAD_CHUNK = "malformed chunked body"

#: gunicorn's errors: (status, reason phrase) -> {exception class name: diagnostics}, tested in
#: this order: a subclass before its base (InvalidResponseHeader before InvalidHeader), and
#: ParseException, the base of all, last. Diagnostics are fixed texts: gunicorn's own messages
#: repeat what the client sent (a request line may hold a query string with PHI).
_GUNICORN_ERRORS: dict[tuple[int, str], dict[str, str]] = {
    (500, "Internal Server Error"): {"InvalidResponseHeader": _INTERNAL, "InvalidResponseHeaderName": _INTERNAL,
                                     "ConfigurationProblem": "server configuration problem"},
    (414, "URI Too Long"): {"LimitRequestLine": "the request line is too long"},
    (431, "Request Header Fields Too Large"): {
        "LimitRequestHeaders": "too many request headers, or a request header too large"},
    (501, "Not Implemented"): {"UnsupportedTransferCoding": "unsupported Transfer-Encoding"},
    (417, "Expectation Failed"): {"ExpectationFailed": "unsupported Expect header"},
    (403, "Forbidden"): {"ForbiddenProxyRequest": "request forbidden"},
    (400, "Bad Request"): {
        "InvalidRequestLine": "malformed HTTP request line", "InvalidRequestMethod": "invalid HTTP method",
        "InvalidHTTPVersion": "unsupported HTTP version", "ObsoleteFolding": "obsolete header line folding",
        "InvalidHeaderName": "malformed HTTP header name",
        "InvalidHeader": "malformed or conflicting HTTP headers (e.g. Content-Length with Transfer-Encoding)",
        "InvalidChunkSize": _BAD_CHUNK, "ChunkMissingTerminator": _BAD_CHUNK, "InvalidChunkExtension": _BAD_CHUNK,
        "InvalidProxyLine": "malformed PROXY protocol line", "InvalidProxyHeader": "malformed PROXY protocol header",
        "InvalidSchemeHeaders": "contradictory scheme headers", "InvalidH2CPreface": "invalid HTTP/2 preface",
        "ParseException": "malformed HTTP request"},
}


def _error_table() -> list[tuple[type, int, str, str]]:
    """(gunicorn exception class, status, reason phrase, diagnostics) in the order they are tested.
    Classes this gunicorn version lacks are left out (gunicorn >= 22 is all the project asks)."""
    return [(getattr(http_errors, name), status, reason, text)
            for (status, reason), texts in _GUNICORN_ERRORS.items() for name, text in texts.items()
            if isinstance(getattr(http_errors, name, None), type)]


_ERRORS = _error_table()


def error_for(exc: BaseException) -> tuple[int, str, str]:
    """(status, reason phrase, diagnostics) for an error gunicorn met serving a request."""
    from ssl import SSLError

    for cls, status, reason, text in _ERRORS:
        if isinstance(exc, cls):
            return status, reason, text
    if isinstance(exc, SSLError):
        return 403, "Forbidden", "TLS error"
    return 500, "Internal Server Error", "internal error; see the service log"


def error_bytes(status: int, reason: str, diagnostics: str) -> bytes:
    """A whole HTTP/1.1 response: the OperationOutcome, our security headers, Connection: close."""
    body = orjson.dumps(operation_outcome([(ISSUE_TYPES.get(status, "processing" if status < 500 else "exception"),
                                            diagnostics, None)]))
    head = [f"HTTP/1.1 {status} {reason}", "Connection: close", "Content-Type: application/fhir+json",
            f"Content-Length: {len(body)}"] + [f"{name}: {value}" for name, value in SECURITY_HEADERS.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class ThreadWorker(_GthreadWorker):
    """gunicorn's gthread worker whose own error answers (before or after the app) are
    OperationOutcome JSON with Cache-Control: no-store and nosniff, and whose error log
    names the exception class only (gunicorn's message and its `Error handling request`
    line would repeat the request line, query string included)."""

    def handle_error(self, req, client, addr, exc) -> None:
        status, reason, diagnostics = error_for(exc)
        fields = dict(event="http-error", outcome="refused" if status < 500 else "exception", status=status,
                      error=type(exc).__name__)
        if status >= 500:
            self.log.error(event(**fields, exception=exception_summary(exc)))
        else:
            self.log.warning(event(**fields))
        try:
            gunicorn_util.write_nonblock(client, error_bytes(status, reason, diagnostics))
        except Exception:  # the client is gone
            self.log.debug(event(event="http-error", outcome="not-sent"))


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        # Each worker builds its own app (thread pools and connections do not survive fork).
        # The bind was checked by the caller (cds-service serve, with its --insecure-no-auth).
        return worker_app(self.settings, bind_checked=True)


class MemoFreezer:
    """Keeps the validation memo's models (engine/record.py) out of the cyclic GC's
    full collections. Each full collection walks every object the GC tracks: with
    300 charts' models held, ~80 ms, and a 1,000-observation prefetch (whose parse
    promotes its objects) set one off every third call (bench/hook_bench.py). Once
    `every` more resources have been validated, after the response has gone out:
    a full collection (of what is not frozen yet: cheap after the first), then
    gc.freeze() of what is left, the new models among it. Frozen objects are still
    freed when the memo drops them; what a freeze could keep for good is a cycle
    of a request still in flight on another thread (~8 kB each)."""

    def __init__(self, every: int = 256):
        self.every = every
        self._frozen_at = validations_done()
        self._lock = threading.Lock()

    def after_response(self) -> None:
        if validations_done() - self._frozen_at < self.every or not self._lock.acquire(blocking=False):
            return
        try:
            self._frozen_at = validations_done()
            gc.collect()
            gc.freeze()
        finally:
            self._lock.release()


def settle_gc(app) -> None:
    """What a worker does to the cyclic GC once start-up is done: freeze what start-up
    built (trial definitions, models, templates: it lives as long as the worker), and
    freeze the validated models as the memo gains them (MemoFreezer). Kept for what
    bench/hook_bench.py measures after 300 charts, at 1,000 observations: p95 17-23 ms so,
    91-103 ms with start-up frozen only, 150-182 ms with nothing frozen (a full collection
    of 70-145 ms every third or fourth call); the p50 rows do not move."""
    freezer = MemoFreezer()

    @app.after_request
    def _freeze_after_response(response):
        response.call_on_close(freezer.after_response)
        return response

    gc.freeze()


def worker_app(settings: Settings | None = None, *, bind_checked: bool = False):
    """The app for one server worker: `create_app`, then settle_gc(). For plain
    gunicorn: `gunicorn 'cds_service.hooks.server:worker_app()'`. Under gunicorn it
    first refuses, as `cds-service serve` does, an address beyond loopback without
    CDS_TRUSTED_CLIENTS (unless CDS_INSECURE_NO_AUTH=1): the worker exits with
    gunicorn's boot-error status, so the whole server stops."""
    from .app import create_app
    from .server_logging import configure_logging

    settings = settings or Settings.from_env()
    if not bind_checked:
        exposed = unauthenticated_exposure(settings, _gunicorn_config())
        if exposed:
            configure_logging()
            log.critical(event(event="startup", outcome="refused", error="no-client-authentication",
                               bind=exposed, message=f"refusing to serve on {exposed} without client "
                               "authentication: set CDS_TRUSTED_CLIENTS (and CDS_PUBLIC_BASE_URL), bind to "
                               "127.0.0.1, or set CDS_INSECURE_NO_AUTH=1 (never in production)"))
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)  # gunicorn stops instead of starting new workers
    app = create_app(settings)
    settle_gc(app)
    return app


def unauthenticated_exposure(settings: Settings, cfg: Config | None) -> str | None:
    """The first address gunicorn binds beyond loopback when client JWTs are not
    checked (and CDS_INSECURE_NO_AUTH is not set); None if there is none or we are not
    under gunicorn. A file-descriptor bind (socket activation) counts as exposed."""
    if cfg is None or settings.trusted_clients is not None or settings.insecure_no_auth:
        return None
    for address in cfg.address:
        if isinstance(address, tuple):
            if not is_loopback(address[0]):
                return f"{address[0]}:{address[1]}"
        elif not isinstance(address, str):  # str: a unix socket, local by nature
            return f"fd://{address}"
    return None


def is_loopback(host: str) -> bool:
    """Whether a bind address is this host only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _gunicorn_config() -> Config | None:
    """The configuration of the gunicorn that is loading us (a worker, or the master with
    --preload), found on the call stack; None when not under gunicorn."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, (Worker, Arbiter, BaseApplication)) and isinstance(getattr(owner, "cfg", None), Config):
            return owner.cfg
        frame = frame.f_back
    return None


def serve(settings: Settings, *, host: str, port: int, workers: int = 1, threads: int = 4) -> int:
    options = {
        **GUNICORN_SETTINGS,
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": max(1, workers),
        "threads": max(1, threads),
        "timeout": 30,
        "graceful_timeout": 10,
        "proc_name": "cds-service",
    }
    _Gunicorn(settings, options).run()
    return 0
