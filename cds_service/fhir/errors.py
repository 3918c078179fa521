"""What a FHIR query that gave no data failed with: one line in the service's own words and an
error class (fhir-400, timeout, too-large ...), never the server's text, the token or a URL."""

from __future__ import annotations


class FhirError(Exception):
    """A query that gave no data. `error_class` says what went wrong in a word the
    service defines (docs/integration.md, "Errors"): `fhir-<status>` for an HTTP status the
    service cannot use (fhir-400, fhir-404, fhir-500, fhir-503 ...), `access-denied`
    (401/403), `timeout`, `too-large`, `not-json`, `operation-outcome` (a 200 holding
    one), `wrong-type`, `connection`, `request-failed`, `not-allowed`. `reason` is
    the service's own words ending with the class in brackets: never a server's
    text, the access token or a URL. `key` is the query key, `status` the HTTP
    status if any."""

    error_class = "fhir-error"

    def __init__(self, words: str, *, error_class: str | None = None, key: str | None = None,
                 status: int | None = None) -> None:
        self.error_class = error_class or type(self).error_class
        self.reason = f"{words} ({self.error_class})"
        super().__init__(self.reason)
        self.key = key
        self.status = status

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}" if self.key else self.reason

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(key={self.key!r}, error_class={self.error_class!r}, "
                f"status={self.status!r})")


class FhirNotAllowed(FhirError):
    """The server (or a next-page link) is not on the allowlist; no request was made."""

    error_class = "not-allowed"


class FhirAccessDenied(FhirError):
    """401 or 403."""

    error_class = "access-denied"


class FhirUnavailable(FhirError):
    """Timeout, connection failure, 5xx or 429 after retries, or the deadline passed."""

    error_class = "connection"


class FhirOutOfTime(FhirUnavailable):
    """The deadline passed, or waiting for a retry would pass it."""

    error_class = "timeout"


class FhirBadResponse(FhirError):
    """An answer the service cannot use: too large, not JSON, wrong resource type,
    OperationOutcome, or a 4xx other than 401/403 (and 404/410 on a read)."""
