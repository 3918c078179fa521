"""FHIR dates as intervals of calendar days, look-back windows and age.

A FHIR date may be a year, a year-month, a day or an instant with an offset.
Each becomes the interval of local calendar days it could denote; a window
check or an age is decided only when the whole interval decides.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from enum import Enum
from typing import NamedTuple

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


class FhirDate(NamedTuple):
    """A named tuple: one is made for every date a criterion reads, on every call."""

    first_day: dt.date  # earliest local calendar day the value can denote
    last_day: dt.date  # latest
    instant: dt.datetime | None  # aware instant, when a time was given
    text: str  # as recorded

    @property
    def is_precise(self) -> bool:
        return self.first_day == self.last_day

    @property
    def day_text(self) -> str:
        """The local calendar day for precise values, else the value as recorded."""
        return self.first_day.isoformat() if self.is_precise else self.text

    def sort_key(self) -> dt.datetime:
        """An aware instant for ordering results; day-precision values count
        from the start of their (last possible) day in UTC."""
        if self.instant is not None:
            return self.instant
        return dt.datetime.combine(self.last_day, dt.time.min, tzinfo=dt.timezone.utc)


def parse_fhir_date(value: object) -> FhirDate | None:
    """Accepts what fhir.resources gives for date/dateTime/instant fields:
    datetime (aware), date, or a partial-date string ("2024", "2024-05")."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # fhir.resources rejects these; be safe for other callers
            value = value.replace(tzinfo=dt.timezone.utc)
        day = value.date()  # the calendar day in the offset it was recorded with
        return FhirDate(day, day, value, value.isoformat())
    if isinstance(value, dt.date):
        return FhirDate(value, value, None, value.isoformat())
    if isinstance(value, str):
        m = _PARTIAL.match(value.strip())
        if not m:
            try:
                day = dt.date.fromisoformat(value.strip())
            except ValueError:
                return None
            return FhirDate(day, day, None, value)
        year = int(m.group(1))
        if m.group(2):
            month = int(m.group(2))
            if not 1 <= month <= 12:
                return None
            last = calendar.monthrange(year, month)[1]
            return FhirDate(dt.date(year, month, 1), dt.date(year, month, last), None, value)
        return FhirDate(dt.date(year, 1, 1), dt.date(year, 12, 31), None, value)
    return None


class Recency(str, Enum):
    FRESH = "fresh"
    STALE = "stale"
    IMPRECISE = "imprecise"
    FUTURE = "future"


def recency(date: FhirDate, as_of: dt.date, lookback_days: int) -> Recency:
    """Where a dated result stands against the window [as_of - lookback_days, as_of],
    both ends inclusive, in local calendar days."""
    window_start = as_of - dt.timedelta(days=lookback_days)
    if date.first_day > as_of:
        return Recency.FUTURE
    if date.last_day < window_start:
        return Recency.STALE
    if date.first_day >= window_start and date.last_day <= as_of:
        return Recency.FRESH
    return Recency.IMPRECISE


def age_on(birth: dt.date, on: dt.date) -> int:
    """Completed years. A 29 February birthday falls on 1 March in common years
    (the person is not a year older on 28 February)."""
    years = on.year - birth.year
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years


def age_range(birth: FhirDate, on: dt.date) -> tuple[int, int]:
    """(youngest, oldest) possible age for a possibly partial birth date."""
    return age_on(birth.last_day, on), age_on(birth.first_day, on)


def age_range_at_death(birth: FhirDate, death: FhirDate | None, on: dt.date) -> tuple[int, int]:
    """(youngest, oldest) possible age of a deceased person: on the date of death,
    never counted past it (nor past `on`, for an evaluation dated before the death).
    A partial death date widens the range as a partial birth date does. Without a
    date of death (deceasedBoolean true) death may have come on any day from birth
    to `on`: (0, the oldest possible age on `on`), so only a range that decides as a
    whole decides anything."""
    if death is None:
        return 0, age_on(birth.first_day, on)
    youngest = age_on(birth.last_day, min(death.first_day, on))
    oldest = age_on(birth.first_day, min(death.last_day, on))
    return max(youngest, 0), max(oldest, 0)  # a death dated before the birth is no negative age


def days_before(day: dt.date, days: int) -> dt.date:
    """`day` minus `days`, or the first representable day (a record dated in year 1 exists)."""
    try:
        return day - dt.timedelta(days=days)
    except OverflowError:
        return dt.date.min
