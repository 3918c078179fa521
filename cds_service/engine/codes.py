"""Code sets and code matching: by system and code, never by display."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"

# The systems' names, as people read them (reports, the clinical reading).
_SYSTEM_NAMES = {LOINC: "LOINC", SNOMED: "SNOMED CT", ICD10CM: "ICD-10-CM", RXNORM: "RxNorm", UCUM: "UCUM"}


def system_name(uri: str) -> str:
    """A code system's name ("SNOMED CT"), or its URI when it has none."""
    return _SYSTEM_NAMES.get(uri, uri)

# Systems whose codes arrive with and without punctuation ("C79.32" / "C7932"):
# compare them without dots, upper-cased.
_DOTLESS_SYSTEMS = {ICD10CM, "http://hl7.org/fhir/sid/icd-10"}

# Other spellings of the same system seen in EHR data (HL7 v3 / C-CDA OIDs).
SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.8": UCUM,
    "http://snomed.info/sct/": SNOMED,
    "http://loinc.org/": LOINC,
}


def canonical_system(system: str | None) -> str | None:
    if system is None:
        return None
    system = system.strip()
    return SYSTEM_ALIASES.get(system, system)


def normalize_code(system: str | None, code: str) -> str:
    code = code.strip()
    if system in _DOTLESS_SYSTEMS:
        return code.replace(".", "").upper()
    return code


def coding_key(system: str | None, code: str | None) -> tuple[str, str] | None:
    """The key under which a coding is indexed and matched, or None when the
    coding cannot be matched (no system or no code)."""
    if not system or not code or not isinstance(system, str) or not isinstance(code, str):
        return None
    system = SYSTEM_ALIASES.get(system) or (system if system == system.strip() else canonical_system(system))
    if system in _DOTLESS_SYSTEMS:
        return system, code.strip().replace(".", "").upper()
    return system, code.strip()


@dataclass(frozen=True)
class CodeEntry:
    system: str
    code: str | None  # exact code
    prefix: str | None  # or every code that starts with this prefix (ICD-10-CM chapters, categories)
    display: str
    source: str
    confirmed: bool = True


@dataclass(frozen=True)
class Provenance:
    """Where a code set's codes come from: the published source (a value set, a
    release's hierarchy, an implementation guide), its version or date, and how
    the codes were expanded from it."""

    source: str
    version: str
    method: str


@dataclass
class CodeSet:
    name: str
    title: str
    entries: list[CodeEntry]
    provenance: Provenance | None = None
    # What the set means, for a terminology server asked about codes the shipped expansion
    # lacks: (system, code) roots whose descendants-or-self belong (SNOMED "<< code"), and the
    # canonical URL of a published ValueSet.
    intension: tuple[tuple[str, str], ...] = ()
    value_set: str | None = None
    exact: frozenset[tuple[str, str]] = field(init=False)
    prefixes: tuple[tuple[str, str], ...] = field(init=False)
    # The prefixes compiled into one look-up: system -> its prefixes, for one str.startswith.
    _prefixes_of: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact, prefixes = set(), []
        for e in self.entries:
            system = canonical_system(e.system)
            if e.code is not None:
                exact.add((system, normalize_code(system, e.code)))
            if e.prefix is not None:
                prefixes.append((system, normalize_code(system, e.prefix)))
        self._index(frozenset(exact), tuple(prefixes))

    def _index(self, exact: frozenset[tuple[str, str]], prefixes: tuple[tuple[str, str], ...]) -> None:
        self.exact, self.prefixes = exact, prefixes
        by_system: dict[str, list[str]] = {}
        for system, prefix in prefixes:
            by_system.setdefault(system, []).append(prefix)
        self._prefixes_of = {system: tuple(p) for system, p in by_system.items()}

    def contains(self, key: tuple[str, str] | None) -> bool:
        if key is None:
            return False
        if key in self.exact:
            return True
        prefixes = self._prefixes_of.get(key[0])
        return prefixes is not None and key[1].startswith(prefixes)

    def display_for(self, key: tuple[str, str]) -> str | None:
        system, code = key
        for e in self.entries:
            es = canonical_system(e.system)
            if es != system:
                continue
            if e.code is not None and normalize_code(es, e.code) == code:
                return e.display
            if e.prefix is not None and code.startswith(normalize_code(es, e.prefix)):
                return e.display
        return None


def union(name: str, sets: Iterable[CodeSet]) -> CodeSet:
    """The sets as one, joined from what each already holds: their entries are not normalised
    again (a trial extended by a terminology server builds its unions on every call)."""
    sets = list(sets)
    joined = CodeSet(name=name, title=name, entries=[], intension=tuple(r for s in sets for r in s.intension))
    joined.entries = [e for s in sets for e in s.entries]
    joined._index(frozenset().union(*(s.exact for s in sets)), tuple(p for s in sets for p in s.prefixes))
    return joined

