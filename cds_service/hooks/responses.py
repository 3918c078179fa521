"""JSON responses and FHIR OperationOutcome error bodies."""

from __future__ import annotations

from typing import Any, Iterable

import orjson
from flask import Response

FHIR_JSON = "application/fhir+json"


def json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(orjson.dumps(body), status=status, mimetype=mimetype)


def operation_outcome(issues: Iterable[tuple[str, str, str | None]]) -> dict[str, Any]:
    """issues: (code, diagnostics, expression or None). severity is always error."""
    out = []
    for code, diagnostics, expression in issues:
        issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = [expression]
        out.append(issue)
    return {"resourceType": "OperationOutcome", "issue": out}


def error_response(status: int, code: str, diagnostics: str, expression: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    response = json_response(operation_outcome([(code, diagnostics, expression)]), status, FHIR_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problems_response(status: int, code: str, problems: list[tuple[str, str]]) -> Response:
    return json_response(operation_outcome((code, msg, path) for path, msg in problems), status, FHIR_JSON)
