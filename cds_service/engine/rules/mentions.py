"""The safety net: records whose codes no set of a criterion holds, but whose text names
the concept (a local code, a standard code missing from the shipped set, text only).
They never decide: an inclusion becomes unknown, an exclusion review."""

from __future__ import annotations

import datetime as dt
import functools
import re
from operator import itemgetter
from typing import Any, Callable, Iterable

from pydantic import Field, model_validator

from ..codes import CodeSet, coding_key
from ..dates import FhirDate, Recency, days_before, recency
from ..model import Evidence, Role, Why
from .base import VALID_OBSERVATION_STATUSES, Context, RuleModel
from .readers import instant_rank, observation_date_of_raw, raw_observation_rank


class TextMentions(RuleModel):
    """Words that name a criterion's concept, for records whose codes the engine
    cannot match: a local code beside no standard one, a standard code missing from
    the shipped set, or text alone. Such a record may be the concept, so it must not
    be passed over silently; it never decides either (an inclusion becomes unknown,
    an exclusion review). Text is read only here, never to pass or fail."""

    patterns: list[str] = Field(min_length=1)  # regular expressions, case-insensitive: any match names it
    except_patterns: list[str] = []  # a text matching one of these names something else ("family history")
    # Code sets of codes the criterion knows and deliberately does not count (secondary neoplasm
    # of the breast, family history of breast cancer): recognised, so their text is not read.
    other_codes: list[str] = []

    @model_validator(mode="after")
    def _compiles(self) -> "TextMentions":
        for p in self.patterns + self.except_patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r}: {exc}") from None
        return self

    @functools.cached_property
    def names(self) -> Callable[[str], bool]:
        """Whether a text names the concept: a pattern matches and no except pattern does."""
        pattern, unless = _compiled(tuple(self.patterns)), _compiled(tuple(self.except_patterns))
        assert pattern is not None  # patterns has at least one

        def names(text: str) -> bool:
            return pattern.search(text) is not None and not (unless is not None and unless.search(text))

        return names


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


_EXCLUDED_STATUSES = {"entered-in-error", "refuted", "cancelled"}


def _raw_excluded(raw: dict[str, Any]) -> bool:
    """Entered in error, refuted or cancelled, read from the JSON (the record may not be valid FHIR)."""
    if raw.get("status") in _EXCLUDED_STATUSES:
        return True
    ver = raw.get("verificationStatus")
    codings = ver.get("coding") if isinstance(ver, dict) else None
    return isinstance(codings, list) and any(isinstance(c, dict) and c.get("code") in _EXCLUDED_STATUSES
                                             for c in codings)


def concept_coding_keys(concept: Any) -> list[tuple[str, str]]:
    """The coding keys (engine/codes.py coding_key) of a raw CodeableConcept, in order."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    keys = (coding_key(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict))
    return [key for key in keys if key is not None]


def coded_in(concept: Any, codes: CodeSet) -> bool:
    """Whether a raw CodeableConcept has a coding in `codes`."""
    return any(codes.contains(key) for key in concept_coding_keys(concept))


def concept_texts(concept: Any) -> tuple[str, ...]:
    """The texts of a raw CodeableConcept: its text, then each coding's display."""
    if not isinstance(concept, dict):
        return ()
    text = concept.get("text")
    texts = [text] if isinstance(text, str) else []
    codings = concept.get("coding")
    for coding in codings if isinstance(codings, list) else ():
        display = coding.get("display") if isinstance(coding, dict) else None
        if isinstance(display, str):
            texts.append(display)
    return tuple(texts)


def named_by_text(ctx: "Context", concept: Any, mentions: TextMentions, read: CodeSet | None,
                  known: CodeSet | None) -> tuple[str, list[tuple[str, str]], Why] | None:
    """(the text, the coding keys, UNRECOGNISED_CODE or TEXT_ONLY) when a raw
    CodeableConcept has no coding in `read` nor in `known`, and a text or coding
    display that names the concept; None otherwise."""
    names = ctx.names(mentions)
    named = next((text for text in concept_texts(concept) if names(text)), None)
    if named is None:
        return None
    keys = concept_coding_keys(concept)
    if any((read is not None and read.contains(k)) or (known is not None and known.contains(k)) for k in keys):
        return None
    return named, keys, Why.UNRECOGNISED_CODE if keys else Why.TEXT_ONLY


def recorded_with(why: Why) -> str:
    """How a record the safety net found was recorded, in words."""
    return "an unrecognised code" if why is Why.UNRECOGNISED_CODE else "text only"


def mention_evidence(ctx: "Context", raw: dict[str, Any], named: tuple[str, list[tuple[str, str]], Why]
                     ) -> Evidence:
    text, keys, why = named
    shown = ", ".join(f"{system}|{code}" for system, code in keys[:2])
    note = (f"code not in the criterion's code sets ({shown}); its text names the concept"
            if why is Why.UNRECOGNISED_CODE else "recorded as text only, without a code")
    return Evidence(reference=ctx.record.reference(raw), role=Role.DECISIVE,
                    code=f"{keys[0][0]}|{keys[0][1]}" if keys else None, display=text, note=note)


def unread_mentions(ctx: "Context", resource_type: str, read: CodeSet, mentions: TextMentions,
                    element: str = "code", keep: Callable[[dict[str, Any]], bool] | None = None
                    ) -> list[tuple[Evidence, Why]]:
    """Records of `resource_type` whose `element` has no coding in `read` (the sets
    the criterion reads) nor in `mentions.other_codes`, but whose text or coding
    display names the concept. Entered-in-error, refuted and cancelled ones are
    left out. Each comes back as decisive evidence with its typed reason."""
    known = ctx.codes(mentions.other_codes) if mentions.other_codes else None
    found: list[tuple[Evidence, Why]] = []
    for raw in ctx.record.all_of(resource_type):
        named = named_by_text(ctx, raw.get(element), mentions, read, known)
        if named is not None and not _raw_excluded(raw) and (keep is None or keep(raw)):
            found.append((mention_evidence(ctx, raw, named), named[2]))
    return found


def unrecognised_results(ctx: "Context", since: dt.date) -> list[tuple[tuple[str, ...], list[tuple[int, dict[str, Any]]]]]:
    """The results of named_unrecognised_results dated on or after `since` (by the
    calendar day they were recorded in), grouped by their code's texts (concept_texts):
    each group's results newest first with their rank (raw_observation_rank), the groups
    by their newest result, newest first. Grouped because a criterion asks whether a
    *name* is its concept's, and a chart repeats a few test names many times."""
    key = ("unrecognised-results", since)
    groups = ctx.memo.get(key)
    if groups is None:
        floor = since.isoformat()
        by_texts: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
        for raw in named_unrecognised_results(ctx):
            when = raw.get("effectiveDateTime")
            # ISO dates sort as text: a dateTime on an earlier day is less than the floor's day; so is a
            # partial date ("2026-05"), which cannot be shown as newer than a dated result anyway.
            if type(when) is str and when < floor:  # noqa: E721
                continue
            rank = raw_observation_rank(raw)
            if rank is not None:
                by_texts.setdefault(concept_texts(raw.get("code")), []).append((rank, raw))
        for results in by_texts.values():
            results.sort(key=itemgetter(0), reverse=True)
        groups = sorted(by_texts.items(), key=lambda group: group[1][0][0], reverse=True)
        ctx.memo[key] = groups
    return groups


def named_unrecognised_results(ctx: "Context") -> list[dict[str, Any]]:
    """Resulted (valid status) Observations coded in no code set the trial knows (a local
    lab code alone, a standard code the sets lack, or text only) whose text or a coding
    display a criterion may be looking for (ctx.result_names; None: all of them). Found
    once per evaluation, in one pass. Usually empty: the FHIR searches ask for the
    trial's codes; an EHR that ignores the filter sends other tests, and their names are
    read here, each distinct text once (a chart repeats a few test names many times)."""
    found = ctx.memo.get("named-unrecognised-results")
    if found is not None:
        return found
    names = ctx.result_names
    candidates = ctx.record.not_coded_in("Observation", ctx.library.everything())
    if names is None:
        found = candidates
    else:
        # This runs on every result no set recognises: every result of an EHR that ignores the
        # search's code filter. So the chart's distinct texts are gathered first, in comprehensions,
        # and read once each; only when one of them is named are the results that carry it found.
        named = {text for text in _distinct_texts(candidates) if type(text) is str and names(text)}  # noqa: E721
        found = [raw for raw in candidates if named and _carries(raw.get("code"), named)]
    found = [raw for raw in found if raw.get("status") in VALID_OBSERVATION_STATUSES]
    ctx.memo["named-unrecognised-results"] = found
    return found


def _distinct_texts(resources: list[dict[str, Any]]) -> set[Any]:
    """The texts and coding displays of the resources' codes (not all of them strings).
    Read by subscript in try blocks: free when nothing is raised, which is the usual shape."""
    texts: set[Any] = set()
    add = texts.add
    for raw in resources:
        try:
            concept = raw["code"]
            add(concept["text"])
        except (KeyError, TypeError, IndexError):  # no code, no text, or not a CodeableConcept
            concept = raw.get("code")
            if type(concept) is not dict:  # noqa: E721
                continue
        codings = concept.get("coding")
        if type(codings) is list:  # noqa: E721
            for coding in codings:
                try:
                    add(coding["display"])
                except (KeyError, TypeError, IndexError):  # no display, or not a Coding
                    pass
    return texts


def _carries(concept: Any, texts: set[str]) -> bool:
    """Whether a raw CodeableConcept's text or a coding display is one of `texts`."""
    if type(concept) is not dict:  # noqa: E721
        return False
    if concept.get("text") in texts:
        return True
    codings = concept.get("coding")
    return type(codings) is list and any(  # noqa: E721
        type(coding) is dict and coding.get("display") in texts for coding in codings)  # noqa: E721


def newest_unrecognised_result(ctx: "Context", mentions: TextMentions, since: dt.date, floor: int | None,
                               keep: Callable[[FhirDate], bool]) -> tuple[Evidence, Why, str] | None:
    """The newest of unrecognised_results(ctx, since) whose texts `mentions` names,
    ranked above `floor` (an instant_rank; None: any) and whose date `keep` accepts:
    its evidence (decisive, dated), the typed reason and its day; None when none is."""
    newest: tuple[int, dict[str, Any], FhirDate] | None = None
    for texts, results in unrecognised_results(ctx, since):
        if (floor is not None and results[0][0] <= floor) or (newest is not None and results[0][0] <= newest[0]):
            break  # groups come newest first: the rest hold nothing newer
        if not any(map(ctx.names(mentions), texts)):
            continue
        for rank, raw in results:
            if (floor is not None and rank <= floor) or (newest is not None and rank <= newest[0]):
                break
            date = observation_date_of_raw(raw)
            if date is not None and keep(date):
                newest = (rank, raw, date)
                break
    if newest is None:
        return None
    _, raw, date = newest
    named = named_by_text(ctx, raw.get("code"), mentions, None, None)  # a text names it: never None here
    assert named is not None
    evidence = mention_evidence(ctx, raw, named)
    evidence.date = date.text
    return evidence, named[2], date.day_text


def newer_mention(ctx: "Context", mentions: TextMentions | None, decided_at: FhirDate | None,
                  lookback_days: int) -> tuple[Evidence, Why, str] | None:
    """A resulted Observation no code set of the trial recognises, whose text `mentions`
    names, within the look-back and dated after the deciding (or stale latest) result:
    its evidence, typed reason and day; None when there is none (or no mentions)."""
    # Recorded on an earlier calendar day than this cannot matter: a day before the look-back's
    # first day, or two before the deciding result's (a later instant may be written on an earlier
    # day: offsets run from -12 to +14 hours). The exact bounds are checked below. The usual
    # deciding result is the latest draw, so this keeps only the last days of a chart.
    if mentions is None or not named_unrecognised_results(ctx):
        return None  # the usual case: every result is coded in the trial's sets, or names nothing it reads
    since = ctx.as_of - dt.timedelta(days=lookback_days + 1)
    if decided_at is not None:
        since = max(since, days_before(decided_at.first_day, 2))
    floor = instant_rank(dt.datetime(since.year, since.month, since.day, tzinfo=dt.timezone.utc))
    if decided_at is not None:
        floor = max(floor, instant_rank(decided_at.sort_key()))
    return newest_unrecognised_result(
        ctx, mentions, since, floor, lambda date: recency(date, ctx.as_of, lookback_days) is Recency.FRESH)


def any_of_names(mentions: Iterable[TextMentions]) -> Callable[[str], bool] | None:
    """A test of one text: may one of `mentions` name it? Their patterns in one
    expression, except patterns not applied (a pre-filter: each mentions still reads
    for itself); answers remembered by text, since the same test names come on every
    chart. None when there are no mentions."""
    pattern = _compiled(tuple(p for m in mentions for p in m.patterns))
    if pattern is None:
        return None
    search = pattern.search

    # bench/cache_bench.py mentions-any-lru: without it the hook takes 1.18-1.27x at 100 other tests
    @functools.lru_cache(maxsize=8192)
    def names(text: str) -> bool:
        return search(text) is not None

    return names


def mention_reason(mention: tuple[Evidence, Why], what: str) -> str:
    evidence, why = mention
    return f"'{evidence.display}' is recorded with {recorded_with(why)}: it may be {what}"
