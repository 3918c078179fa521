"""Reading a search page by page for the FHIR client: the page limit, a next link
kept on the server the token was issued for, a paged search the server expired
(410) re-run once from its self link, and a cut when the caller has enough or the
next page would not arrive before the deadline."""

from __future__ import annotations

import logging
from typing import Any, Callable
from urllib.parse import urljoin

from .allowlist import is_under, normalise_url
from .answers import link_url, resources_of
from .errors import FhirNotAllowed, FhirOutOfTime, FhirUnavailable
from .results import DEADLINE, LOOK_BACK, PAGE_LIMIT, Call, Enough

log = logging.getLogger("cds_service.fhir.client")  # paging is the FHIR client's work: its log

# One page: get(call, url, expect="Bundle", is_next_page=...) -> the Bundle (FhirClient._get).
GetPage = Callable[..., Any]


class NextPageGone(Exception):
    """410 on a next-page link: HAPI has expired the paged search."""


def resolve_link(call: Call, href: str) -> str:
    """A Bundle link as a URL. A next link must stay on the server the token was
    issued for, not just on the allowlist: the token goes with it."""
    url = normalise_url(urljoin(call.base + "/", href))
    if url is None or not is_under(url, call.base):
        raise FhirNotAllowed("next-page link leaves the allowed FHIR server")
    return url


def read_pages(call: Call, url: str, get: GetPage, *, page_limit: int, clock: Callable[[], float],
               restart_url: str | None, first_page_held: bool, enough: Enough | None = None
               ) -> tuple[list[dict[str, Any]], str | None]:
    """Resources of the pages from `url` on, and why paging stopped before the
    last page (LOOK_BACK, PAGE_LIMIT, DEADLINE) or None. `first_page_held`: the
    caller has the search's first page, so it counts towards page_limit and,
    after a restart, is not returned again. `enough(resources)`, asked when
    there is a next page, stops paging when the caller needs no more.

    Once a page is in, running out of time cuts the search short instead of
    failing it: a page that would not arrive in the time left (judged on `clock`,
    the deadline's, by the slowest page so far) is not asked for, and one still
    loading at the deadline is left to the waiting thread, which takes the pages
    read. The caller treats a cut as it treats the page limit; searches sorted
    newest first lose only older results."""
    resources: list[dict[str, Any]] = []
    call.read_so_far = resources if first_page_held else None
    fetched = {restart_url} if first_page_held and restart_url else set()
    page_number = 1 if first_page_held else 0  # pages of the search read so far, held one included
    slowest = 0.0  # seconds the slowest page took to arrive
    restarted = False
    next_url: str | None = url
    while next_url is not None:
        if next_url in fetched:
            log.warning("FHIR %s: next link repeats a page already read; paging stopped", call.key)
            break
        if page_number >= page_limit:  # the caller's page alone reaches the limit
            return resources, PAGE_LIMIT
        if page_number > 0 and clock() + slowest >= call.deadline:
            log.warning("FHIR %s: paging stopped after %d pages: the next would not arrive before the "
                        "deadline", call.key, page_number)
            return resources, DEADLINE
        fetched.add(next_url)
        started = clock()
        try:
            bundle = get(call, next_url, expect="Bundle", is_next_page=page_number > 0)
        except NextPageGone:
            if restarted or restart_url is None:
                again = " again after re-running it" if restarted else ""
                raise FhirUnavailable(f"paged search expired (410 Gone){again}", error_class="fhir-410",
                                      status=410) from None
            log.info("FHIR %s: paged search expired; re-running it", call.key)
            restarted = True
            call.read_cache = False  # a cached first page would hand back the same expired link
            resources = []
            call.read_so_far = None
            fetched.clear()
            page_number = 0
            next_url = restart_url
            continue
        except FhirOutOfTime:
            if page_number > 0:  # a later page: the pages read stand, cut short
                log.warning("FHIR %s: out of time on page %d; paging stopped", call.key, page_number + 1)
                return resources, DEADLINE
            raise
        slowest = max(slowest, clock() - started)
        page_number += 1
        if not (first_page_held and page_number == 1):
            resources.extend(resources_of(bundle))  # one step: the waiting thread may copy the list
        call.read_so_far = resources
        next_href = link_url(bundle, "next")
        if next_href is None:
            break
        if enough is not None and enough(resources):
            return resources, LOOK_BACK
        if page_number >= page_limit:
            return resources, PAGE_LIMIT
        next_url = resolve_link(call, next_href)
    return resources, None
