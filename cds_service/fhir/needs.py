"""The FHIR data the enabled trials need: one query (and prefetch key) per kind
of data, derived from what each criterion's rule reads.

Observations come in two queries. A lab rule decides on the latest result of
its tests, so its query (`labResults`) may return years of blood counts and be
cut short (page limit, deadline) without harm: it asks for the newest first.
The other Observations criteria read (HER2, hCG, CSF cytology) are few and old;
in a query of their own (`observations`) no lab history can push them past a cut.
Nor need a lab history be read to its end: once a newest-first search has
reached results older than any lab criterion looks back, the rest is older still
and cannot decide (DataNeed.read_enough).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable

from ..engine import Trial, code_element, coding_key, instant_rank, newest_first, raw_observation_rank
from .queries import Query, Read, Search


@dataclass(frozen=True)
class _Kind:
    key: str  # prefetch key
    resource_type: str
    required: bool  # without it the hook answers 412
    latest_only: bool | None = None  # Observations: read by latest-result rules (True), by the others (False)


_KINDS = (
    _Kind("patient", "Patient", True),
    _Kind("conditions", "Condition", True),
    _Kind("labResults", "Observation", True, latest_only=True),
    _Kind("observations", "Observation", True, latest_only=False),
    _Kind("allergies", "AllergyIntolerance", True),
    _Kind("cytologyReports", "DiagnosticReport", False),
    _Kind("specimens", "Specimen", False),
)
# The search parameter for a type's classifying code, where it is not `code`.
_CODE_PARAM = {"Specimen": "type"}


def _kind_of(resource_type: str, latest_only: bool) -> _Kind:
    """The query a resource type read with (latest_only) or without a look-back goes to. A
    type no query above reads (one a new rule kind reads) gets one of its own: key
    "procedures" for Procedure; not required (the hook answers without it, and what the
    kind finds missing is its to say)."""
    kind = next((k for k in _KINDS if k.resource_type == resource_type and k.latest_only in (None, latest_only)),
                None)
    if kind is None:
        kind = _Kind(resource_type[0].lower() + resource_type[1:] + "s", resource_type, False)
    return kind


_SORTED_BY_DATE = {"Observation", "DiagnosticReport"}


@dataclass(frozen=True)
class DataNeed:
    key: str  # prefetch key
    resource_type: str
    query: Query
    required: bool  # without it the hook answers 412
    newest_first: bool = False  # sorted by -date: a cut (page limit, deadline) drops only the oldest
    # The coding keys (engine.codes.coding_key) the search is restricted to; None: every resource of the type.
    codes: frozenset[tuple[str, str]] | None = None
    # Read by latest-result rules only: the longest look-back among them (None: results of any age count).
    lookback_days: int | None = None

    def selects(self, resource: dict[str, Any]) -> bool:
        """Whether the query returns this resource (by type and code)."""
        if resource.get("resourceType") != self.resource_type:
            return False
        if self.codes is None:
            return True
        concept = resource.get(code_element(self.resource_type))
        codings = concept.get("coding") if isinstance(concept, dict) else None
        return any(isinstance(c, dict) and coding_key(c.get("system"), c.get("code")) in self.codes
                   for c in codings or ())

    def read_enough(self, resources: list[dict[str, Any]], as_of: dt.date) -> bool:
        """Whether a search of this query has read all that can decide, so its further
        pages need not be fetched: the results so far came newest first and reach one
        more than a day older than the look-back (a day's margin for time zones: such a
        result is stale in any offset). Later pages hold only older results."""
        if self.lookback_days is None or not self.newest_first:
            return False
        oldest = next((r for r in map(raw_observation_rank, reversed(resources)) if r is not None), None)
        boundary = dt.datetime.combine(as_of - dt.timedelta(days=self.lookback_days + 1), dt.time.min,
                                       tzinfo=dt.timezone.utc)
        return oldest is not None and oldest < instant_rank(boundary) and newest_first(resources)


def data_needs(trials: Iterable[Trial], page_size: int = 100) -> list[DataNeed]:
    """One query per kind of data any criterion reads. A search is restricted to
    the codes criteria use when every code set is a list of exact codes; a set
    with prefixes (ICD-10-CM C50.*) cannot be written as a token search, so that
    type is fetched whole."""
    kinds = {k.key: k for k in _KINDS}  # the usual queries first, in this order; then any a kind adds
    wanted: dict[str, set[tuple[str, str]] | None] = {}  # kind key -> codes (None: every resource of the type)
    lookback: dict[str, int] = {}  # latest-result kinds -> the longest look-back of the rules reading them
    # Resource type -> the _include values the rules reading it declare (RuleModel.includes), in order:
    # asked by the service's own searches, not in prefetch templates (queries.Search); a server that
    # rejects them is searched again without (gather); fhir/ownership.py keeps what they bring.
    includes: dict[str, dict[str, None]] = {}
    for trial in trials:
        for criterion in trial.definition.criteria:
            days = criterion.rule.latest_within_days()
            for rtype, values in criterion.rule.includes().items():
                includes.setdefault(rtype, {}).update(dict.fromkeys(values))
            for rtype, names in criterion.rule.reads().items():
                kind = _kind_of(rtype, days is not None)
                kinds[kind.key] = kind
                if kind.latest_only:  # only latest-result rules read it: it may stop at their look-back
                    lookback[kind.key] = max(days, lookback.get(kind.key, 0))
                codes = _exact_codes(trial, names)
                if kind.key in wanted:
                    current = wanted[kind.key]
                    codes = None if current is None or codes is None else current | codes
                wanted[kind.key] = codes
    needs = []
    for kind in kinds.values():
        if kind.key not in wanted:
            continue
        if kind.resource_type == "Patient":
            needs.append(DataNeed(kind.key, "Patient", Read("Patient"), kind.required))
            continue
        params: list[tuple[str, str]] = []
        codes = wanted[kind.key]
        if codes:
            params.append((_CODE_PARAM.get(kind.resource_type, "code"), ",".join(f"{s}|{c}" for s, c in sorted(codes))))
        sort = kind.resource_type in _SORTED_BY_DATE
        if sort:
            params.append(("_sort", "-date"))
        params.append(("_count", str(page_size)))
        keys = frozenset(k for k in (coding_key(s, c) for s, c in codes) if k is not None) if codes else None
        search = Search(kind.resource_type, tuple(params), includes=tuple(includes.get(kind.resource_type, ())))
        needs.append(DataNeed(kind.key, kind.resource_type, search, kind.required, sort, keys,
                              lookback.get(kind.key)))
    return needs


def _exact_codes(trial: Trial, names: list[str]) -> set[tuple[str, str]] | None:
    if not names:
        return None
    codes: set[tuple[str, str]] = set()
    for name in names:
        codeset = trial.library.sets[name]
        if codeset.prefixes:
            return None
        codes |= {(e.system, e.code) for e in codeset.entries}
    return codes
