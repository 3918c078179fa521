"""What a FHIR server's answer says: the body checked to be the resource asked
for, a Bundle's links and resources, a Retry-After header. Nothing the server
wrote reaches an error: a failure is told by an error class (FhirBadResponse)."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import requests

from .errors import FhirBadResponse


def parse_answer(content: bytes, expect: str) -> dict[str, Any]:
    """A 200 body, parsed and checked to be an `expect` resource (a Bundle's entry a list)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise FhirBadResponse("the FHIR server answered with something that is not JSON", error_class="not-json",
                              status=200) from None
    resource_type = body.get("resourceType") if isinstance(body, dict) else None
    if resource_type == "OperationOutcome":
        raise FhirBadResponse("the FHIR server answered with an OperationOutcome", error_class="operation-outcome",
                              status=200)
    if resource_type != expect:
        raise FhirBadResponse(f"the FHIR server's answer is not a {expect}", error_class="wrong-type", status=200)
    if expect == "Bundle" and not isinstance(body.get("entry", []), list):
        raise FhirBadResponse("the FHIR server's Bundle.entry is not a list", error_class="wrong-type", status=200)
    return body


def link_url(bundle: dict[str, Any], relation: str) -> str | None:
    """The URL of a Bundle's link with this relation ("next", "self"), as written."""
    links = bundle.get("link") if isinstance(bundle, dict) else None
    for link in links if isinstance(links, list) else []:
        url = link.get("url") if isinstance(link, dict) and link.get("relation") == relation else None
        if isinstance(url, str) and url.strip():
            return url
    return None


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries' resources, without OperationOutcomes: a search reports
    warnings as entries (search.mode "outcome") that are not patient data."""
    resources = []
    for entry in bundle.get("entry", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        if entry["resource"].get("resourceType") == "OperationOutcome" or \
                (isinstance(search, dict) and search.get("mode") == "outcome"):
            continue
        resources.append(entry["resource"])
    return resources


def retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After in seconds: either delay-seconds or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
