"""What a fetch from the EHR's FHIR server gives back (FetchResult, why a search
was cut short), what a caller says to stop paging (Enough), and the state of one
key's fetch while it runs (Call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import FhirError

# Why paging stopped before the last page (FetchResult.cut).
PAGE_LIMIT = "page-limit"
DEADLINE = "deadline"
LOOK_BACK = "look-back"  # the caller's `enough` said the rest cannot matter (older than any look-back)


# Asked with a search's resources so far: True when the caller needs no further page.
Enough = Callable[[list[dict[str, Any]]], bool]


@dataclass
class FetchResult:
    key: str
    resources: list[dict] = field(repr=False)  # patient data: kept out of logs that print a result
    not_found: bool = False
    pages: int = 0
    requests: int = 0
    cut: str | None = None  # why paging stopped before the last page: PAGE_LIMIT, DEADLINE or LOOK_BACK
    elapsed_ms: float = 0.0
    error: FhirError | None = None

    @property
    def truncated(self) -> bool:
        """Paging stopped before the last page: more may exist."""
        return self.cut is not None


@dataclass
class Call:
    """One key's work against one server: what every request needs, and counters
    the waiting thread can read if the deadline passes first. `deadline` and
    `started` are values of the client's clock."""

    key: str
    base: str
    headers: dict[str, str] = field(repr=False)
    token_hash: str
    deadline: float
    read_cache: bool
    started: float
    pages: int = 0
    requests: int = 0
    # A search's resources from the pages read so far, once one is (None before): what the
    # waiting thread returns, marked cut short, if the deadline passes while a later page loads.
    read_so_far: list[dict[str, Any]] | None = field(default=None, repr=False)
