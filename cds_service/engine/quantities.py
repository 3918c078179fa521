"""Unit conversion for lab values, in decimal.

UCUM units are converted with the `ucumvert` parser on top of pint. Pint
works in binary floating point (1500 /mm3 comes out as 1.5000000000000004
×10^9/L), so only the *factor* between two units is taken from it, rounded
to 12 significant digits (UCUM factors are exact decimals), and values are
multiplied in decimal at the precision they were reported with.

What UCUM cannot say is data (see trials/units.yaml): local unit spellings
("K/uL"), unit equivalences that are domain facts ([IU]/L = U/L for ALT/AST)
and molar-mass factors per analyte (haemoglobin mmol/L -> g/dL).
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal

from .codes import UCUM, canonical_system

_registry = None
_registry_lock = threading.Lock()


def _ucum():
    """The UCUM registry; building it takes most of a second, so only once."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                from ucumvert import PintUcumRegistry

                _registry = PintUcumRegistry()
    return _registry


class NotConvertible(ValueError):
    pass


# Parsing a unit and asking pint for a factor take ~0.1-1 ms: units and pairs of units are remembered,
# failures included. bench/cache_bench.py ucum-lru: without them the hook takes 3.0x at 100, 1.3x at 1,000
# A UCUM annotation standing alone ("{ratio}", "{1}", "{cells}") is the unity 1 (UCUM §2.4.4);
# ucumvert reads it as a unit of its own. Attached to a unit ("10*3{cells}/uL") it already reads right.
_ANNOTATION_ALONE = re.compile(r"\{[^{}]*\}")


@functools.lru_cache(maxsize=4096)
def _parse(unit: str):
    """The pint quantity of a UCUM unit; None when it is not one."""
    try:
        return _ucum().from_ucum("1" if _ANNOTATION_ALONE.fullmatch(unit) else unit)
    except Exception:  # ucumvert raises its own parse errors and pint's
        return None


@functools.lru_cache(maxsize=4096)
def _factor(from_unit: str, to_unit: str) -> Decimal | str:
    """ucum_factor's answer, or why there is none."""
    if from_unit == to_unit:
        return Decimal(1)
    a, b = _parse(from_unit), _parse(to_unit)
    for unit, parsed in ((from_unit, a), (to_unit, b)):
        if parsed is None:
            return f"'{unit}' is not a UCUM unit"
    try:
        magnitude = a.to(b.units).magnitude / b.magnitude
        factor = Decimal(f"{magnitude:.12g}")
    except Exception:  # pint DimensionalityError and friends
        return f"'{from_unit}' cannot be converted to '{to_unit}'"
    if not factor.is_finite() or factor <= 0:  # pint's binary floats overflow or underflow: 10*-400/L
        return f"'{from_unit}' cannot be converted to '{to_unit}': factor out of range"
    return factor


def ucum_factor(from_unit: str, to_unit: str) -> Decimal:
    """Decimal factor f with value[from_unit] * f = value[to_unit]."""
    factor = _factor(from_unit, to_unit)
    if isinstance(factor, str):
        raise NotConvertible(factor)
    return factor


def is_ucum(unit: str) -> bool:
    return _parse(unit) is not None


# Spelling variants lab interfaces use for the same UCUM unit, undone before the alias table and
# UCUM read a unit: the micro sign (U+00B5) and Greek mu (U+03BC) for "u", "mc" for micro (mcL,
# mcmol), "gm" for grams, and powers of ten written x10(9), x10E9, x10e9, 10E9, x10^9 or 10^9.
_MICRO = str.maketrans({"\u00b5": "u", "\u03bc": "u"})
_MC_PREFIX = re.compile(r"(?<![A-Za-z])mc(?=(?:g|L|l|mol|kat|IU|\[IU\])(?![A-Za-z]))")
_GRAMS = re.compile(r"(?<![A-Za-z])gm(?=/)")
_POWER_OF_TEN = re.compile(r"(?<![0-9A-Za-z*])x?10(?:\((\d+)\)|[Ee\^](\d+))")


def respell(unit: str) -> str:
    """A unit string with the spelling variants above undone ("K/µL" -> "K/uL",
    "x10(9)/L" -> "10*9/L", "mcmol/L" -> "umol/L", "gm/dL" -> "g/dL"); other
    text is left as it was, spaces removed."""
    unit = unit.translate(_MICRO).replace(" ", "")
    unit = _MC_PREFIX.sub("u", unit)
    unit = _GRAMS.sub("g", unit)
    return _POWER_OF_TEN.sub(lambda m: f"10*{m.group(1) or m.group(2)}", unit)


@dataclass(frozen=True)
class UnitBridge:
    """A conversion UCUM cannot make on its own, for one analyte."""

    from_unit: str
    to_unit: str
    factor: Decimal
    source: str


@dataclass
class UnitTable:
    aliases: dict[str, str] = field(default_factory=dict)  # local spelling -> UCUM
    bridges: dict[str, list[UnitBridge]] = field(default_factory=dict)  # analyte -> bridges

    def ucum_of(self, code: str | None, unit: str | None, system: str | None) -> str | None:
        """The UCUM unit of a FHIR Quantity: its code when coded in UCUM, else its
        human unit string, through the alias table."""
        candidates = []
        if code and (system is None or canonical_system(system) == UCUM):
            candidates.append(code)
        if unit:
            candidates.append(unit)
        for c in candidates:
            c = c.strip()
            if c in self.aliases:
                return self.aliases[c]
        respelled = [respell(c) for c in dict.fromkeys(candidates)]  # the code and the unit are often alike
        for c in respelled:
            if c in self.aliases:
                return self.aliases[c]
        return next((c for c in respelled if c), None)

    def factor(self, from_unit: str, to_unit: str, analyte: str | None = None) -> Decimal:
        try:
            return ucum_factor(from_unit, to_unit)
        except NotConvertible:
            pass
        for bridge in self.bridges.get(analyte or "", ()):
            for a, b, f in ((bridge.from_unit, bridge.to_unit, bridge.factor),
                            (bridge.to_unit, bridge.from_unit, Decimal(1) / bridge.factor)):
                try:
                    return ucum_factor(from_unit, a) * f * ucum_factor(b, to_unit)
                except NotConvertible:
                    continue
        raise NotConvertible(f"'{from_unit}' cannot be converted to '{to_unit}'"
                             + (f" for {analyte}" if analyte else ""))

    def convert(self, value: Decimal, from_unit: str, to_unit: str, analyte: str | None = None) -> Decimal:
        return value * self.factor(from_unit, to_unit, analyte)
