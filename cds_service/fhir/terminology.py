"""An optional FHIR terminology server (CDS_TERMINOLOGY_SERVER) for codes the
shipped code sets do not hold.

A code set may say what it means beyond its shipped expansion: intension roots
(SNOMED CT `<< root`: the root and its descendants) and a canonical ValueSet URL.
For a chart's codings that are in no shipped set but may belong to one, the
server is asked, in parallel and within the hook's deadline:

- `CodeSystem/$subsumes?system=S&codeA=<root>&codeB=<code>` for a code in the
  system of one of the set's roots (outcome `equivalent` or `subsumes`: a member);
- `ValueSet/$validate-code?url=<vs>&system=S&code=C` for a code in another
  system, when the set names a ValueSet (`result` true: a member).

Answers, yes and no, are kept in a bounded TTL cache, so a chart opened again
makes no call. Anything else (an error, a timeout, a 4xx, an answer that is not
the Parameters it should be) adds nothing: the shipped sets decide, as they do
when no server is configured. Only the configured server is called, never with
the patient's access token or any Authorization header, and redirects are not
followed. Each request, headers and body together, ends by the lookup's deadline
(transport.py), and an answer over 1 MiB is refused (`too-large`). Logs and the
audit carry counts only, never a code or a URL.

Here: asking the server, its answers and their cache. Which questions to ask is
terminology_questions.py's.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson
import requests
from cachetools import LRUCache, TTLCache

from ..engine import PatientRecord, Trial
from .allowlist import normalise_base
from .client import new_session
from .terminology_questions import SUBSUMES, Plan, Question, plan, questions_for, record_codings
from .transport import OutOfTime, TooLarge, bounded_get, read_body

log = logging.getLogger(__name__)

_MEMBER_OUTCOMES = frozenset({"equivalent", "subsumes"})
_SUBSUMES_OUTCOMES = frozenset({"equivalent", "subsumes", "subsumed-by", "not-subsumed"})
# 4xx answers that will not change on a retry (unknown code, unknown system or ValueSet, operation
# not supported, credentials required): remembered like a "no", so a chart reopened asks nothing.
_SETTLED_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 422})
_NO_ANSWER = None  # cached for a settled 4xx: not a member, nothing learnt
_MAX_ANSWER_BYTES = 1024 * 1024  # a Parameters answer is a few hundred bytes
_UNCACHED = object()


def normalise_server(url: str) -> str | None:
    """The server's base URL as it will be called (`scheme://host[:port]/path`, no
    trailing slash), or None for anything but a plain http(s) base URL."""
    return normalise_base(url.strip()) if isinstance(url, str) else None


@dataclass
class Lookup:
    """What the server added for one hook call: set name -> member keys, per trial
    id; and the audit entry (counts only)."""

    extra: dict[str, dict[str, frozenset[tuple[str, str]]]]
    audit: dict[str, Any]

    def for_trial(self, trial: Trial) -> Trial:
        """The trial to evaluate: extended with the members found, or itself."""
        extra = self.extra.get(trial.id)
        return trial.with_extra_codes(extra) if extra else trial


@dataclass
class _Tally:
    asked: int = 0  # requests made
    answered: int = 0  # valid answers received in time
    cached: int = 0  # questions answered from the cache
    skipped: int = 0  # questions beyond max_lookups, or with no time left to ask
    errors: Counter = field(default_factory=Counter)  # reason -> count


class TerminologyClient:
    """Shared by all requests of the process (the session, pool and cache are
    thread-safe). `clock` is the deadline's clock (time.monotonic, like the FHIR
    client's); tests pass a fake one."""

    def __init__(self, base_url: str, *, timeout: float = 1.0, cache_ttl: float = 3600.0, cache_size: int = 10000,
                 max_lookups: int = 32, max_workers: int = 4, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic, user_agent: str = "cds-service") -> None:
        base = normalise_server(base_url)
        if base is None:
            raise ValueError("the terminology server is not a plain http(s) base URL")
        self.base = base
        self.timeout = timeout
        self.max_lookups = max_lookups
        self._clock = clock
        self._cache: TTLCache[tuple[Any, ...], bool | None] = TTLCache(maxsize=cache_size, ttl=cache_ttl,
                                                                       timer=clock)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="terminology")
        self._owns_session = session is None
        self._session = session if session is not None else new_session(max_workers)
        self._headers = {"Accept": "application/fhir+json", "User-Agent": user_agent}
        # Each enabled trial's plan, by identity (the entry holds the trial, so its id is not
        # reused); bounded, should a caller pass new Trial objects on every call.
        self._plans: LRUCache[int, tuple[Trial, Plan]] = LRUCache(maxsize=64)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_session:
            self._session.close()

    def cache_size(self) -> int:
        with self._lock:
            return len(self._cache)

    def _plan(self, trial: Trial) -> Plan:
        with self._lock:
            kept = self._plans.get(id(trial))
            if kept is None or kept[0] is not trial:
                kept = self._plans[id(trial)] = (trial, plan(trial))
            return kept[1]

    def lookup(self, trials: Iterable[Trial], record: PatientRecord, deadline: float) -> Lookup:
        """Ask about the record's codings the trials' extensible sets lack, by
        `deadline` (a value of the clock) or this client's timeout, whichever is sooner."""
        started = self._clock()
        deadline = min(deadline, started + self.timeout)
        trials = list(trials)
        planned = {t.id: self._plan(t) for t in trials}
        wanted = {where for p in planned.values() for s in p.sets for where in s.reads}
        codings = record_codings(record, wanted) if wanted else {}
        tally = _Tally()
        per_trial = {tid: questions_for(p, codings) for tid, p in planned.items()}
        wanted: dict[Question, None] = {}
        for asked, _ in per_trial.values():
            for questions in asked.values():
                wanted.update(dict.fromkeys(questions))
        answers = self._answers(list(wanted), deadline, tally)
        extra: dict[str, dict[str, frozenset[tuple[str, str]]]] = {}
        members_found = 0
        for tid, (asked, settled) in per_trial.items():
            found: dict[str, set[tuple[str, str]]] = {}
            for name, key in settled:
                found.setdefault(name, set()).add(key)
            for (name, key), questions in asked.items():
                if any(answers.get(q) for q in questions):
                    found.setdefault(name, set()).add(key)
            if found:
                extra[tid] = {name: frozenset(keys) for name, keys in found.items()}
                members_found += sum(len(keys) for keys in found.values())
        audit: dict[str, Any] = {"questions": len(wanted), "asked": tally.asked, "answered": tally.answered,
                                 "cached": tally.cached, "members": members_found}
        if tally.skipped:
            audit["skipped"] = tally.skipped
        if tally.errors:
            audit["errors"] = dict(sorted(tally.errors.items()))
            log.warning("terminology server: %d lookups gave no answer (%s)", sum(tally.errors.values()),
                        ", ".join(f"{reason}: {n}" for reason, n in sorted(tally.errors.items())))
        audit["ms"] = round((self._clock() - started) * 1000, 1)
        return Lookup(extra, audit)

    def _answers(self, questions: list[Question], deadline: float, tally: _Tally) -> dict[Question, bool]:
        """Question -> member or not, for those answered (from the cache or the server in time)."""
        answers: dict[Question, bool] = {}
        to_ask: list[Question] = []
        with self._lock:
            for q in questions:
                answer = self._cache.get(self._cache_key(q), _UNCACHED)
                if answer is _UNCACHED:
                    to_ask.append(q)
                    continue
                tally.cached += 1
                if answer is not _NO_ANSWER:
                    answers[q] = answer
        if len(to_ask) > self.max_lookups:
            tally.skipped += len(to_ask) - self.max_lookups
            to_ask = to_ask[:self.max_lookups]
        if not to_ask:
            return answers
        futures = {self._executor.submit(contextvars.copy_context().run, self._ask, q, deadline): q  # logs name the call
                   for q in to_ask}
        done, _ = wait(futures, timeout=max(0.0, deadline - self._clock()))
        for future, q in futures.items():
            if future not in done:
                if future.cancel():  # never started: not asked
                    tally.skipped += 1
                else:  # in flight at the deadline: its answer, if one comes, is cached for the next call
                    tally.asked += 1
                    tally.errors["deadline"] += 1
                continue
            outcome, answer, requested = future.result()
            tally.asked += requested
            if outcome == "answered":
                tally.answered += 1
                answers[q] = answer
            elif outcome == "out-of-time":
                tally.skipped += 1
            else:  # "deadline" (answered too late: cached, not used) or why there is no answer
                tally.errors[outcome] += 1
        return answers

    def _cache_key(self, q: Question) -> tuple[Any, ...]:
        return (self.base, q.anchor, q.system, q.code)

    def _remember(self, q: Question, answer: bool | None) -> None:
        with self._lock:
            self._cache[self._cache_key(q)] = answer

    def _ask(self, q: Question, deadline: float) -> tuple[str, bool | None, int]:
        """(outcome, member?, requests made). Outcome "answered", "deadline" (answered
        after the deadline: cached, not used), "out-of-time" (not asked), or why
        there is no answer."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            return "out-of-time", None, 0
        if q.anchor[0] == SUBSUMES:
            url = f"{self.base}/CodeSystem/$subsumes"
            params = {"system": q.system, "codeA": q.anchor[2], "codeB": q.code}
        else:
            url = f"{self.base}/ValueSet/$validate-code"
            params = {"url": q.anchor[1], "system": q.system, "code": q.code}
        try:
            # The deadline is on this client's clock (a fake one in tests); the request's is on time.monotonic.
            ends = time.monotonic() + remaining
            with bounded_get(self._session, url, deadline=ends, params=params, headers=self._headers,
                             auth=_no_auth) as response:
                status = response.status_code
                content = read_body(response, ends, _MAX_ANSWER_BYTES) if status == 200 else b""
        except TooLarge:
            return "too-large", None, 1
        except (OutOfTime, requests.Timeout):
            return "timeout", None, 1
        except requests.ConnectionError:
            return "connection failed", None, 1
        except requests.RequestException as error:  # its text holds the URL, and so the code: not logged
            return f"request failed ({type(error).__name__})", None, 1
        if status != 200:
            if status in _SETTLED_STATUSES:
                self._remember(q, _NO_ANSWER)
            return f"status {status}", None, 1
        answer = _parse_subsumes(content) if q.anchor[0] == SUBSUMES else _parse_validate(content)
        if answer is None:
            return "malformed answer", None, 1
        self._remember(q, answer)
        if self._clock() > deadline:
            return "deadline", answer, 1
        return "answered", answer, 1


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """No Authorization header, whatever the environment offers (~/.netrc)."""
    request.headers.pop("Authorization", None)
    return request


def _parameters(content: bytes) -> dict[str, list[dict[str, Any]]] | None:
    """A Parameters resource's parameters by name, or None for anything else."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        return None
    parameters = body.get("parameter")
    if not isinstance(parameters, list):
        return None
    by_name: dict[str, list[dict[str, Any]]] = {}
    for p in parameters:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            return None
        by_name.setdefault(p["name"], []).append(p)
    return by_name


def _parse_subsumes(content: bytes) -> bool | None:
    """$subsumes: exactly one `outcome` (a valueCode the operation defines); member
    when codeA subsumes codeB or both are the same concept."""
    parameters = _parameters(content)
    outcome = parameters.get("outcome") if parameters is not None else None
    if not outcome or len(outcome) != 1:
        return None
    code = outcome[0].get("valueCode")
    if code not in _SUBSUMES_OUTCOMES:
        return None
    return code in _MEMBER_OUTCOMES


def _parse_validate(content: bytes) -> bool | None:
    """$validate-code: exactly one `result`, a valueBoolean."""
    parameters = _parameters(content)
    result = parameters.get("result") if parameters is not None else None
    if not result or len(result) != 1:
        return None
    value = result[0].get("valueBoolean")
    return value if isinstance(value, bool) else None
