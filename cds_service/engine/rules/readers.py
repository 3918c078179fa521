"""Reading what criteria match: results and their dates, newest first, validated only
when read; the ranks that order them from the JSON alone; invalid records as evidence."""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Iterable

from ..codes import CodeSet
from ..dates import FhirDate, parse_fhir_date
from ..model import Evidence, Role
from ..validation import InvalidResource
from .base import VALID_OBSERVATION_STATUSES, Context, coding_text, concept_label, matching_coding, observation_date


INVALID_NOTE = "not valid FHIR, skipped"


def invalid_evidence(ctx: Context, raw: dict[str, Any], exc: InvalidResource) -> Evidence:
    return Evidence(reference=ctx.record.reference(raw), role=Role.IGNORED, note=f"{INVALID_NOTE}: {exc}")


def is_invalid(evidence: Evidence) -> bool:
    """Whether the evidence is a record skipped as not valid FHIR (invalid_evidence)."""
    return evidence.role is Role.IGNORED and (evidence.note or "").startswith(INVALID_NOTE)


def has_invalid(evidence: Iterable[Evidence]) -> bool:
    return any(map(is_invalid, evidence))


@dataclass(slots=True)
class Reading:
    """One valid result whose code matched: the resource, the part carrying the
    value (the resource or one of its components), its date, and the evidence
    entry started for it."""

    resource: Any
    source: Any
    date: FhirDate | None
    evidence: Evidence


def read_results(ctx: Context, codes: CodeSet, resource_type: str = "Observation",
                 components: bool = True) -> tuple[list[Reading], list[Evidence]]:
    """Results coded in `codes` that are valid FHIR, have a valid status and are
    not dated after the evaluation date. Everything else comes back as ignored
    evidence saying why."""
    readings: list[Reading] = []
    ignored: list[Evidence] = []
    for hit in ctx.record.find(resource_type, codes):
        if hit.component is not None and not components:
            continue
        read = read_hit(ctx, hit, codes)
        if isinstance(read, Reading):
            readings.append(read)
        else:
            ignored.append(read)
    return readings, ignored


class RankingMismatch(Exception):
    """A validated result's date differs from the date it was ranked by (not
    expected: both come from the same value through the same FHIR type)."""


def read_hit(ctx: Context, hit: Any, codes: CodeSet, ranked_at: int | None = None) -> Reading | Evidence:
    """One result: a Reading, or the ignored Evidence saying why it does not count.
    `ranked_at`: the rank it was read in, which its validated date must agree with."""
    try:
        resource = ctx.record.model(hit.raw)
    except InvalidResource as exc:
        return invalid_evidence(ctx, hit.raw, exc)
    source = resource.component[hit.component] if hit.component is not None else resource
    coding = matching_coding(source.code, codes)
    date = observation_date(resource)
    if ranked_at is not None and observation_rank(resource) != ranked_at:
        raise RankingMismatch(ctx.record.reference(hit.raw))
    ev = Evidence(reference=ctx.record.reference(hit.raw), code=coding_text(coding) if coding else None,
                  display=concept_label(source.code, coding), status=resource.status,
                  date=date.text if date else None)
    if resource.status not in VALID_OBSERVATION_STATUSES:
        ev.role, ev.note = Role.IGNORED, f"status '{resource.status}' is not a valid result; ignored"
        return ev
    if date is not None and date.first_day > ctx.as_of:
        ev.role, ev.note = Role.IGNORED, "dated after the evaluation date; ignored"
        return ev
    return Reading(resource, source, date, ev)


def unreadable_value(source: Any) -> str | None:
    """What a resulted Observation sent instead of the value a rule reads, as text, or None
    when it sent nothing (no value, or a dataAbsentReason: a known absence, which does not
    stand in the way of an older result). A numeric-looking string ("8.5") is not read either:
    an interface that sends strings may send "<8.5", "8.5 (H)" or "8,5" as well."""
    if source.dataAbsentReason is not None:
        return None
    for value in (source.valueString, source.valueCodeableConcept, getattr(source, "valueBoolean", None)):
        if value is None:
            continue
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return str(value).lower()
        return concept_label(value) or "a coded value"
    return "no value"


# -- long result histories ----------------------------------------------------

# The usual shape of a lab result's time: a full dateTime with seconds and an offset, as
# FHIR's dateTime pattern allows them (no leap second). Such a string denotes one instant,
# which datetime.fromisoformat reads exactly (checked against the FHIR type in
# tests/test_engine_history.py); every other shape goes through the FHIR type.
# bench/cache_bench.py instant-regex: without it the hook takes 1.22x at 100 history, 1.25x at 1,000
_INSTANT = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
                      r"(?:\.\d{1,9})?(?:Z|[+-](?:(?:0\d|1[0-3]):[0-5]\d|14:00))")


@functools.lru_cache(maxsize=4)  # a table built on first use: one per element (a TypeAdapter takes ~60 µs)
def _date_type(element: str) -> Any:
    """The FHIR type of effective[x] (or a Period's start or end) as observation_date()
    reads it, taken from the validated model itself: effectiveDateTime, effectiveInstant,
    start or end."""
    from pydantic import TypeAdapter

    from ..validation import model_class

    if element in ("start", "end"):
        from fhir.resources.R4B.period import Period as owner
    else:
        owner = model_class("Observation")
    return TypeAdapter(owner.model_fields[element].annotation)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)


def instant_rank(instant: dt.datetime) -> int:
    """An aware instant as whole microseconds since 1970 UTC: the same order and
    equality as the instant itself (datetime's own resolution), but compared
    as an int. Aware datetimes with different offsets compare through
    utcoffset() calls: sorting a 17-result history took 12 µs, as ints 0.5."""
    return (instant - _EPOCH) // _MICROSECOND


def observation_rank(obs: Any) -> int | None:
    """instant_rank of a validated Observation's date (None when it has none)."""
    date = observation_date(obs)
    return instant_rank(date.sort_key()) if date is not None else None


def _raw_effective(raw: dict[str, Any]) -> tuple[str | None, str]:
    """(the text, the element) of the effective[x] observation_date() reads: dateTime,
    then instant, then the period's start or end; (None, ...) when it is not a string."""
    value, element = raw.get("effectiveDateTime"), "effectiveDateTime"
    if value is None:
        value, element = raw.get("effectiveInstant"), "effectiveInstant"
        if value is None:
            period = raw.get("effectivePeriod")
            if not isinstance(period, dict):
                return None, element
            value, element = (period.get("start"), "start") if period.get("start") else (period.get("end"), "end")
    return (value if isinstance(value, str) else None), element


def raw_observation_rank(raw: dict[str, Any]) -> int | None:
    """instant_rank(observation_date(model).sort_key()) of the validated resource,
    read from the JSON alone: the same element (dateTime, then instant, then the
    period's start or end) through the same FHIR type. None when there is no date
    or it is not valid (such a result is read in full, and found undated or invalid)."""
    value, element = _raw_effective(raw)
    time = _read_time(element, value) if value is not None else None
    return instant_rank(time) if time is not None else None


def observation_date_of_raw(raw: dict[str, Any]) -> FhirDate | None:
    """observation_date() of an Observation not validated as a whole: the same
    element, through the same FHIR type (None when absent or not valid)."""
    value, element = _raw_effective(raw)
    if value is None:
        return None
    try:
        return parse_fhir_date(_date_type(element).validate_python(value))
    except ValueError:
        return None


def _read_time(element: str, value: str) -> dt.datetime | None:
    if _INSTANT.fullmatch(value):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:  # 30 February: not a valid FHIR date either
            return None
    try:
        date = parse_fhir_date(_date_type(element).validate_python(value))
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None
    return date.sort_key() if date is not None else None


def sorted_newest_first(resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Observations as `_sort=-date` returns them: newest first, undated last (a
    reversed sort stays stable: record order among equals)."""
    def key(raw: dict[str, Any]) -> tuple[bool, int]:
        rank = raw_observation_rank(raw)
        return (rank is not None, rank or 0)

    return sorted(resources, key=key, reverse=True)


def newest_first(resources: Iterable[dict[str, Any]]) -> bool:
    """Whether Observations (as a server returned them) come newest first, as
    `_sort=-date` asks: undated ones aside, no result is newer than the one before."""
    previous = None
    for raw in resources:
        rank = raw_observation_rank(raw) if isinstance(raw, dict) else None
        if rank is None:
            continue
        if previous is not None and rank > previous:
            return False
        previous = rank
    return True


@dataclass(slots=True)
class LatestResults:
    """What read_latest_results read: every reading and ignored result it looked
    at, and how many older results it left unread."""

    readings: list[Reading]
    ignored: list[Evidence]
    not_read: int = 0


_UNRANKED = object()


def read_latest_results(ctx: Context, codes: CodeSet, usable: Callable[[Reading], bool]) -> LatestResults:
    """Observations coded in `codes`, read newest first and only as far as a
    latest-result rule needs: every result without a readable date, and the dated
    ones from the newest down to the latest usable one (valid FHIR, valid status,
    not in the future, and `usable`) with all results at that same time. Older
    results cannot change which result is latest, so they are counted, not
    validated nor listed (the evidence is what decided, and what was skipped on the
    way and why): a chart sending years of daily blood counts costs a few
    validations, not thousands. Results are ranked by
    the time their JSON gives (raw_observation_rank); should a validated date
    ever differ from it, everything is read, as read_results does."""
    undated, dated = [], []
    # The results of one panel share their time, and several criteria read a panel's tests:
    # each distinct effectiveDateTime of the record is ranked once per evaluation.
    ranks = ctx.memo.setdefault("rank-of-effectiveDateTime", {})
    for hit in ctx.record.find("Observation", codes):
        when = hit.raw.get("effectiveDateTime")
        if type(when) is str:  # noqa: E721 - the usual case: the rank is that text's alone
            rank = ranks.get(when, _UNRANKED)
            if rank is _UNRANKED:
                rank = ranks[when] = raw_observation_rank(hit.raw)
        else:
            rank = raw_observation_rank(hit.raw)
        if rank is None:
            undated.append(hit)
        else:
            dated.append((rank, hit))
    dated.sort(key=itemgetter(0), reverse=True)  # stable: record order among equals
    try:
        return _read_newest_first(ctx, codes, usable, undated, dated)
    except RankingMismatch:
        readings, ignored = read_results(ctx, codes)
        return LatestResults(readings, ignored)


def _read_newest_first(ctx: Context, codes: CodeSet, usable: Callable[[Reading], bool], undated: list[Any],
                       dated: list[tuple[int, Any]]) -> LatestResults:
    read: list[tuple[int, Reading | Evidence]] = [(hit.position, read_hit(ctx, hit, codes)) for hit in undated]
    latest = None  # rank of the latest usable result, once found
    not_read = 0
    for i, (rank, hit) in enumerate(dated):
        if latest is not None and rank != latest:
            not_read = len(dated) - i
            break
        result = read_hit(ctx, hit, codes, ranked_at=rank)
        read.append((hit.position, result))
        if latest is None and isinstance(result, Reading) and usable(result):
            latest = rank
    read.sort(key=itemgetter(0))  # record order, as read_results gives them
    readings = [r for _, r in read if isinstance(r, Reading)]
    ignored = [r for _, r in read if not isinstance(r, Reading)]
    return LatestResults(readings, ignored, not_read)
