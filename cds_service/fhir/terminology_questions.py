"""Which questions a terminology server could settle for a chart: the trial's
code sets it can extend (plan: those with an intension or a ValueSet, and where
their members are read), the codings the chart carries there (record_codings),
and the questions about those no shipped set holds (questions_for). Asking them
is terminology.py's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..engine import CodeSet, PatientRecord, Trial, coding_key, codeset_fields

# What a Question asks (its anchor's first element): a `<< root` intension, or a ValueSet.
SUBSUMES = "subsumes"
VALIDATE_CODE = "validate-code"

# Where a resource's codes are, for the types criteria read (raw JSON, no validation), by role:
# CODE, what the resource is or says (code, value, type, conclusion); SITE, where (bodySite).
CODE, SITE = "code", "site"
_CODED_ELEMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "Condition": (("code", CODE), ("bodySite", SITE)),
    "AllergyIntolerance": (("code", CODE),),
    "Observation": (("code", CODE), ("valueCodeableConcept", CODE)),
    "Specimen": (("type", CODE),),
    "DiagnosticReport": (("code", CODE), ("conclusionCode", CODE)),
}
# Rule fields (aliases) whose code sets are matched against a bodySite.
_SITE_FIELDS = frozenset({"bodySiteCodes"})


@dataclass(frozen=True)
class Question:
    """One lookup: is (system, code) in `anchor`? `anchor` is (SUBSUMES, root system,
    root code) or (VALIDATE_CODE, ValueSet URL)."""

    anchor: tuple[str, ...]
    system: str
    code: str


@dataclass(frozen=True)
class _PlannedSet:
    name: str
    codeset: CodeSet
    reads: frozenset[tuple[str, str]]  # (resource type, role) whose codings may be members
    roots: Mapping[str, tuple[str, ...]]  # system -> intension root codes


@dataclass(frozen=True)
class Plan:
    """What a trial's code sets let a server settle: the sets it can extend, and
    every set the trial uses (a code one of them holds is recognised: never asked)."""

    sets: tuple[_PlannedSet, ...]
    shipped: tuple[CodeSet, ...]

    def recognised(self, key: tuple[str, str]) -> bool:
        return any(codeset.contains(key) for codeset in self.shipped)


def plan(trial: Trial) -> Plan:
    """The trial's code sets a server can extend (those with an intension or a
    ValueSet), each with where its members are read: the resource types a criterion
    lists it under in what it reads, else every type the criterion reads (value codes,
    specimen types, allergy codes); a bodySite for body-site sets, else the codes."""
    reads_of: dict[str, set[tuple[str, str]]] = {}
    for criterion in trial.definition.criteria:
        rule = criterion.rule
        reads = rule.reads()
        listed: dict[str, set[str]] = {}
        for rtype, names in reads.items():
            for name in names:
                listed.setdefault(name, set()).add(rtype)
        for alias, name in codeset_fields(rule):
            role = SITE if alias in _SITE_FIELDS else CODE
            types = listed.get(name) or reads.keys()
            reads_of.setdefault(name, set()).update((t, role) for t in types)
    used = trial.codesets_used()
    planned = []
    for name, codeset in used.items():
        if not (codeset.intension or codeset.value_set):
            continue
        roots: dict[str, tuple[str, ...]] = {}
        for system, root in codeset.intension:
            roots[system] = roots.get(system, ()) + (root,)
        readable = frozenset(r for r in reads_of.get(name, ()) if r[0] in _CODED_ELEMENTS)
        planned.append(_PlannedSet(name, codeset, readable, roots))
    return Plan(tuple(planned), tuple(used.values()))


def record_codings(record: PatientRecord, wanted: Iterable[tuple[str, str]] | None = None
                   ) -> dict[tuple[str, str], dict[tuple[str, str], None]]:
    """(resource type, role) -> the coding keys its resources carry there (in record
    order, each once); contained resources are among the record's own. Only the
    `wanted` (type, role) pairs (default: all): a chart's lab history is not walked
    when no extensible set is read there."""
    wanted = set(wanted) if wanted is not None else {(t, role) for t, elements in _CODED_ELEMENTS.items()
                                                      for _, role in elements}
    found: dict[tuple[str, str], dict[tuple[str, str], None]] = {}
    for rtype, elements in _CODED_ELEMENTS.items():
        reads = tuple((element, role) for element, role in elements if (rtype, role) in wanted)
        if reads:
            for raw in record.all_of(rtype):
                _add_codings(found, rtype, raw, reads)
    return found


def _add_codings(found: dict[tuple[str, str], dict[tuple[str, str], None]], rtype: str, raw: dict[str, Any],
                 reads: tuple[tuple[str, str], ...]) -> None:
    for element, role in reads:
        value = raw.get(element)
        if value is not None:
            keys = found.setdefault((rtype, role), {})
            for concept in value if isinstance(value, list) else (value,):  # bodySite, conclusionCode: lists
                _add_concept(keys, concept)
    if rtype == "Observation" and isinstance(raw.get("component"), list):  # Observation: CODE only
        keys = found.setdefault((rtype, CODE), {})
        for part in raw["component"]:
            if isinstance(part, dict):
                _add_concept(keys, part.get("code"))
                _add_concept(keys, part.get("valueCodeableConcept"))


def _add_concept(keys: dict[tuple[str, str], None], concept: Any) -> None:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                key = coding_key(coding.get("system"), coding.get("code"))
                if key is not None:
                    keys[key] = None


def questions_for(trial_plan: Plan, codings: Mapping[tuple[str, str], Mapping[tuple[str, str], None]]
                  ) -> tuple[dict[tuple[str, tuple[str, str]], list[Question]], set[tuple[str, tuple[str, str]]]]:
    """For each (set name, coding key) a server could settle: the questions whose
    yes makes it a member; and the pairs settled without asking (a root itself:
    `<< root` holds the root, whatever a server says of a code and itself).

    Only codes no shipped set of the trial holds are asked about: a code one of them
    holds is recognised, and the sets that hold it say what it is (a secondary
    neoplasm of the breast, known and deliberately not counted as a breast primary,
    is never added to the breast-cancer set by its place under the root)."""
    asked: dict[tuple[str, tuple[str, str]], list[Question]] = {}
    members: set[tuple[str, tuple[str, str]]] = set()
    recognised: dict[tuple[str, str], bool] = {}
    for p in trial_plan.sets:
        for where in p.reads:
            for key in codings.get(where, ()):
                pair = (p.name, key)
                if pair in asked or pair in members:
                    continue
                known = recognised.get(key)
                if known is None:
                    known = recognised[key] = trial_plan.recognised(key)
                if known:
                    continue
                system, code = key
                roots = p.roots.get(system)
                if roots:
                    if code in roots:
                        members.add(pair)
                    else:
                        asked[pair] = [Question((SUBSUMES, system, root), system, code) for root in roots]
                elif p.codeset.value_set:
                    asked[pair] = [Question((VALIDATE_CODE, p.codeset.value_set), system, code)]
    return asked, members
