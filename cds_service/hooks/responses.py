"""JSON responses and FHIR OperationOutcome error bodies (their shape: hooks/wire.py)."""

from __future__ import annotations

from typing import Any, Iterable

import orjson
from flask import Response

from .wire import Issue, IssueType, OperationOutcome

FHIR_JSON = "application/fhir+json"

#: On every response, errors and gunicorn's own included: cards and errors may carry PHI.
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

#: The OperationOutcome issue type (http://hl7.org/fhir/issue-type) for an HTTP error status.
ISSUE_TYPES: dict[int, IssueType] = {
    400: "structure", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 408: "timeout",
    411: "structure", 413: "too-costly", 414: "too-costly", 415: "not-supported", 417: "not-supported",
    429: "throttled", 431: "too-costly", 500: "exception", 501: "not-supported", 503: "transient",
}


def json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(orjson.dumps(body), status=status, mimetype=mimetype)


def operation_outcome(issues: Iterable[tuple[IssueType, str, str | None]]) -> OperationOutcome:
    """issues: (code, diagnostics, FHIRPath expression or None). severity is always error."""
    out: list[Issue] = []
    for code, diagnostics, expression in issues:
        issue: Issue = {"severity": "error", "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = [expression]
        out.append(issue)
    return {"resourceType": "OperationOutcome", "issue": out}


def error_response(status: int, code: IssueType, diagnostics: str, expression: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = json_response(operation_outcome([(code, diagnostics, expression)]), status, FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problems_response(status: int, code: IssueType, problems: list[tuple[str, str]]) -> Response:
    return json_response(operation_outcome((code, msg, path) for path, msg in problems), status, FHIR_JSON)
