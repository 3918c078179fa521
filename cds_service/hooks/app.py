"""The Flask application: CDS Hooks discovery, the trial-eligibility service,
its feedback endpoint, and health checks.

    create_app()                 # settings from the environment
    create_app(Settings(...))    # explicit settings (tests)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import orjson
from flask import Blueprint, Flask, current_app, request
from flask_cors import CORS
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge

from ..cards import CardRenderer
from ..demo import hook_request
from ..fhir.client import FhirClient
from ..fhir.terminology import TerminologyClient
from ..trials import enrolling_trials, load_trials
from .auth import AuthError, Authenticator
from .replay import ReplayStoreUnavailable, jti_store_for
from .config import Settings
from .discovery import SERVICE_ID
from .openapi import openapi_document
from .responses import ISSUE_TYPES, SECURITY_HEADERS, error_response, json_response, problems_response
from .server_logging import configure_logging, event, exception_summary, hook_instance_logged, loggable_path
from .service import TrialEligibilityService, log_event
from .store import Store
from .validation import Invalid, parse_feedback

_JSON_TYPES = ("application/json", "application/fhir+json")

api = Blueprint("cds_hooks", __name__)
_PROTECTED = {"cds_hooks.discovery", "cds_hooks.call_service", "cds_hooks.feedback"}


def _service() -> TrialEligibilityService:
    return current_app.extensions["trial_eligibility"]


def _json_body() -> tuple[Any, Any, float]:
    """(parsed body, None, parse ms) or (None, error response, parse ms). The
    parse alone is timed: the yardstick of the service's speed targets."""
    if request.mimetype not in _JSON_TYPES:
        return None, error_response(415, "not-supported", "the body must be JSON (Content-Type: application/json)"), 0.0
    data = _request_body()
    start = time.monotonic()
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, error_response(400, "structure", "the body is not valid JSON"), 0.0
    return body, None, (time.monotonic() - start) * 1000


def _request_body() -> bytes:
    """The body as werkzeug reads it (a declared length over the limit is 413 before
    anything is read), except a chunked one (no length; the server ends the stream):
    read here up to one byte past the limit, and that byte is 413 too (werkzeug would
    stop at the limit and hand on the truncated body). A body the server cannot read
    (a malformed chunk) is 400."""
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):  # chunked (gunicorn)
        return _read_terminated(request.environ["wsgi.input"], request.max_content_length)
    return request.get_data(cache=False)


def _read_terminated(stream, limit: int | None) -> bytes:
    """A body whose end the server marks (chunked): all of it, or 413 past `limit`."""
    parts, received = [], 0
    while chunk := _read(stream, 65536 if limit is None else min(65536, limit + 1 - received)):
        parts.append(chunk)
        received += len(chunk)
        if limit is not None and received > limit:
            raise RequestEntityTooLarge()
    return b"".join(parts)


def _read(stream, size: int) -> bytes:
    try:
        return stream.read(size)
    except HTTPException:
        raise
    except Exception as exc:  # the server's own read error (a bad chunk size, a missing terminator)
        logging.getLogger("cds_service").warning(event(event="request-body", outcome="unreadable",
                                                       error=type(exc).__name__))
        raise BadRequest("the request body could not be read (malformed chunked encoding?)") from None


def _unknown_service(service_id: str):
    return error_response(404, "not-found", f"no CDS service with id '{service_id}'; see /cds-services")


# CDS Hooks: every call — discovery, the service, feedback — carries a client JWT.
@api.before_request
def authenticate():
    authenticator = current_app.extensions.get("cds_authenticator")
    if authenticator is None or request.method == "OPTIONS" or request.endpoint not in _PROTECTED:
        return None
    try:
        authenticator.authenticate(request.headers.get("Authorization"), request.path)
    except AuthError:  # the reason is logged by the authenticator; the caller learns nothing
        return error_response(401, "login", "authentication required", headers={"WWW-Authenticate": "Bearer"})
    except ReplayStoreUnavailable as exc:  # fail closed
        logging.getLogger("cds_service.auth").error(json.dumps({"event": "auth", "outcome": "unavailable",
                                                                "error": type(exc).__name__}))
        return error_response(503, "transient", "authentication temporarily unavailable")
    return None


@api.get("/cds-services")
def discovery():
    return json_response({"services": [_service().description]})


@api.post("/cds-services/<service_id>")
def call_service(service_id: str):
    started = time.monotonic()
    if service_id != SERVICE_ID:
        return _unknown_service(service_id)
    body, error, parse_ms = _json_body()
    if error is not None:
        return error
    with hook_instance_logged(body.get("hookInstance") if isinstance(body, dict) else None) as hook_instance:
        return _service().call(body, started, parse_ms, hook_instance)


@api.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str):
    if service_id != SERVICE_ID:
        return _unknown_service(service_id)
    body, error, _ = _json_body()
    if error is not None:
        return error
    try:
        parsed = parse_feedback(body)
    except Invalid as exc:
        return problems_response(400, "invalid", exc.problems)
    items = [item.model_dump(exclude_none=True) for item in parsed.feedback]
    new = _service().store.record_feedback(SERVICE_ID, items) if items else 0  # [] is valid: nothing to store
    log_event(event="feedback", service=SERVICE_ID, outcome="stored", status=200, items=len(items), new=new)
    return json_response({"stored": new, "duplicates": len(items) - new})


@api.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@api.get("/readyz")
def readyz():
    service = _service()
    try:
        service.store.ping()
    except Exception as exc:  # the database is a dependency of every call
        return error_response(503, "transient", f"database not usable: {type(exc).__name__}")
    return json_response({"status": "ready", "service": SERVICE_ID,
                          "trials": {t.id: t.definition.definition_version for t in service.trials},
                          "fhirServers": len(service.settings.allowed_fhir_servers)})


def create_app(settings: Settings | None = None, *, client: FhirClient | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging()
    trials = list((load_trials(only=settings.trials) if settings.trials else enrolling_trials()).values())
    client = client or FhirClient(settings.allowed_fhir_servers, page_limit=settings.fhir_page_limit,
                                  cache_ttl=settings.fhir_cache_ttl, cache_bytes=settings.fhir_cache_bytes,
                                  max_response_bytes=settings.fhir_max_response_bytes)
    renderer = CardRenderer(settings.card_templates, show_ineligible=settings.show_ineligible)
    store = Store(settings.database_path)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    terminology = TerminologyClient(
        settings.terminology_server, timeout=settings.terminology_timeout, cache_ttl=settings.terminology_cache_ttl,
        cache_size=settings.terminology_cache_size, max_lookups=settings.terminology_max_lookups,
    ) if settings.terminology_server else None
    service = TrialEligibilityService(settings, trials, client, renderer, store, terminology)
    demo = hook_request("eligible")
    service.warm_up([demo["prefetch"]["patient"]] + [e["resource"] for key, bundle in demo["prefetch"].items()
                                                     if key != "patient" for e in bundle["entry"]],
                    demo["context"]["patientId"])
    app.extensions["trial_eligibility"] = service
    if settings.trusted_clients is not None:
        app.extensions["cds_authenticator"] = Authenticator.from_file(
            settings.trusted_clients, public_base_url=settings.public_base_url or "",
            jti_store=jti_store_for(settings.jti_store, settings.database_path.with_name("jti.sqlite3"),
                                    leeway=settings.jwt_leeway),
            leeway=settings.jwt_leeway, max_lifetime=settings.jwt_max_lifetime)
    else:
        logging.getLogger("cds_service").warning(json.dumps(
            {"event": "startup", "warning": "no CDS_TRUSTED_CLIENTS: client JWTs are not checked"}))
    app.register_blueprint(api)
    openapi = openapi_document(service.needs)  # generated from the wire models, once
    app.add_url_rule("/openapi.json", "openapi", lambda: json_response(openapi))
    if settings.cors_origins:
        CORS(app, resources={r"/cds-services*": {"origins": list(settings.cors_origins)}},
             methods=["GET", "POST", "OPTIONS"], allow_headers=["Authorization", "Content-Type"], max_age=600)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        headers = {"Allow": exc.get_response().headers["Allow"]} if exc.code == 405 else None
        code = exc.code or 500
        diagnostics = exc.description or exc.name
        if code == 413:
            diagnostics = f"the request body is over the limit of {settings.max_request_bytes} bytes " \
                          "(CDS_MAX_REQUEST_BYTES)"
        return error_response(code, ISSUE_TYPES.get(code, "processing" if code < 500 else "exception"),
                              diagnostics, headers=headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # the class and where it was raised; its message may carry PHI
        logging.getLogger("cds_service").error(event(
            event="error", outcome="exception", status=500, error=type(exc).__name__, method=request.method,
            path=loggable_path(request.path), exception=exception_summary(exc)))
        return error_response(500, "exception", "internal error; see the service log")

    @app.after_request
    def no_store(response):
        # Cards and errors may carry PHI: no cache may keep them, no browser may sniff a type.
        response.headers.update(SECURITY_HEADERS)
        return response

    return app
