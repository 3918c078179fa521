"""SMART on FHIR scopes (v1 `user/Observation.read`, v2 `patient/Observation.rs`):
can a token read a resource type? Checked before any call, so a token that
cannot read what is still needed gives 412 without a request to the EHR."""

from __future__ import annotations

import re

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|c?r?u?d?s?)(\?.*)?$")


def can_read(scope: str | None, resource_type: str, *, search: bool) -> bool:
    """True when some scope in the space-separated list grants a read (instance
    read) or a search of `resource_type`. SMART v1 `read` and `*` grant both; v2
    grants read with `r` and search with `s`. A v2 scope with a query
    (`Observation.rs?category=laboratory`) restricts what comes back, not
    whether the query may run, so it counts."""
    if scope is None:
        return True  # no token: an open server on the allowlist decides for itself
    for token in scope.split():
        m = _SCOPE.match(token)
        if not m or m.group(2) not in ("*", resource_type):
            continue
        permission = m.group(3)
        if permission in ("*", "read"):
            return True
        if permission != "write" and ("s" if search else "r") in permission:
            return True
    return False
