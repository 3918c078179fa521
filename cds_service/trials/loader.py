"""Reading trial definitions, code sets and the unit table from files, with
errors that name the file, the criterion and the field."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from ..engine import (RULE_KINDS, CodeEntry, CodeLibrary, CodeSet, Provenance, Trial, TrialDefinition, UnitBridge,
                      UnitTable, canonical_system, error_message, error_path, is_ucum)

DATA_DIR = Path(__file__).parent
DEFINITIONS_DIR = DATA_DIR / "definitions"
CODESETS_DIR = DATA_DIR / "codesets"
UNITS_FILE = DATA_DIR / "units.yaml"


class DefinitionError(ValueError):
    """A trial, code-set or unit file that cannot be used. The message says
    which file, which criterion and which field."""


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class _Code(_FileModel):
    system: str = Field(min_length=1)
    code: str | None = None
    prefix: str | None = None
    display: str = Field(min_length=1)
    source: str = Field(min_length=1)
    confirmed: bool = True

    @model_validator(mode="after")
    def _one(self) -> "_Code":
        if (self.code is None) == (self.prefix is None):
            raise ValueError("give exactly one of code or prefix")
        return self


class _Provenance(_FileModel):
    source: str = Field(min_length=1)  # the published source: value set, release hierarchy, guide
    version: str = Field(min_length=1)  # its version or date
    method: str = Field(min_length=1)  # how the codes were expanded from it


class _Root(_FileModel):
    system: str = Field(min_length=1)
    descendants_of: str = Field(min_length=1)  # the code and every descendant ("<< code")


class _CodeSet(_FileModel):
    title: str
    provenance: _Provenance  # required: every shipped set says where its codes come from
    intension: list[_Root] = []
    value_set: str | None = None
    codes: list[_Code] = Field(min_length=1)


class _CodeSetFile(_FileModel):
    codesets: dict[str, _CodeSet]


class _Alias(_FileModel):
    unit: str
    ucum: str
    source: str


class _Bridge(_FileModel):
    from_: str = Field(alias="from")
    to: str
    factor: Decimal = Field(gt=0)
    source: str


class _UnitsFile(_FileModel):
    aliases: list[_Alias] = []
    bridges: dict[str, list[_Bridge]] = {}


# libyaml's loader when PyYAML has it: the code-set files hold thousands of published codes,
# and the pure-Python loader takes ~10x longer to read them. Same documents, same safety.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path, loader: Any = yaml.SafeLoader) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader, always
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DefinitionError(f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None


def _field_path(loc: Iterable[Any], data: Any) -> tuple[str | None, str]:
    """('criterion id' or None, 'dotted.field[0].path') for a pydantic error location."""
    loc = list(loc)
    criterion = None
    if len(loc) >= 2 and loc[0] == "criteria" and isinstance(loc[1], int):
        try:
            criterion = data["criteria"][loc[1]].get("id") or f"#{loc[1] + 1}"
        except (KeyError, IndexError, TypeError, AttributeError):
            criterion = f"#{loc[1] + 1}"
        loc = loc[2:]
        # discriminated unions put the rule type in the path: rule.lab.analytes -> rule.analytes
        if len(loc) >= 2 and loc[0] == "rule" and loc[1] in RULE_KINDS:
            loc = [loc[0]] + loc[2:]
    return criterion, error_path(loc) or "(top level)"


def _validation_message(path: Path, exc: ValidationError, data: Any) -> str:
    lines = []
    for err in exc.errors():
        criterion, field = _field_path(err.get("loc", ()), data)
        where = f"criterion '{criterion}': " if criterion else ""
        msg = error_message(err)
        lines.append(f"{path.name}: {where}{field}: {msg}")
    return "\n".join(lines)


def load_codesets(directory: Path = CODESETS_DIR) -> dict[str, CodeSet]:
    sets: dict[str, CodeSet] = {}
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = _read_yaml(path, _FAST_LOADER)
        try:
            parsed = _CodeSetFile.model_validate(data)
        except ValidationError as exc:
            raise DefinitionError(_validation_message(path, exc, data)) from None
        for name, cs in parsed.codesets.items():
            if name in sets:
                raise DefinitionError(f"{path.name}: code set '{name}' is also defined in {origin[name].name}")
            origin[name] = path
            sets[name] = CodeSet(
                name=name, title=cs.title,
                entries=[CodeEntry(system=c.system, code=c.code, prefix=c.prefix, display=c.display,
                                   source=c.source, confirmed=c.confirmed) for c in cs.codes],
                provenance=Provenance(cs.provenance.source, cs.provenance.version, cs.provenance.method),
                intension=tuple((canonical_system(r.system), r.descendants_of) for r in cs.intension),
                value_set=cs.value_set)
    return sets


def load_units(path: Path = UNITS_FILE) -> UnitTable:
    data = _read_yaml(path)
    try:
        parsed = _UnitsFile.model_validate(data or {})
    except ValidationError as exc:
        raise DefinitionError(_validation_message(path, exc, data)) from None
    for alias in parsed.aliases:
        if not is_ucum(alias.ucum):
            raise DefinitionError(f"{path.name}: alias '{alias.unit}': '{alias.ucum}' is not a UCUM unit")
    for analyte, bridges in parsed.bridges.items():
        for b in bridges:
            for unit in (b.from_, b.to):
                if not is_ucum(unit):
                    raise DefinitionError(f"{path.name}: bridges.{analyte}: '{unit}' is not a UCUM unit")
    return UnitTable(aliases={a.unit: a.ucum for a in parsed.aliases},
                     bridges={k: [UnitBridge(b.from_, b.to, b.factor, b.source) for b in v]
                              for k, v in parsed.bridges.items()})


def load_trial(path: Path, codesets: dict[str, CodeSet] | None = None, units: UnitTable | None = None) -> Trial:
    """Load and validate one trial file against the code sets and unit table
    (the bundled ones unless given)."""
    path = Path(path)
    codesets = load_codesets() if codesets is None else codesets
    units = load_units() if units is None else units
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise DefinitionError(f"{path.name}: a trial file must be a mapping")
    try:
        definition = TrialDefinition.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(_validation_message(path, exc, data)) from None
    problems = []
    for c in definition.criteria:
        for name in c.rule.codeset_names():
            if name not in codesets:
                problems.append(f"{path.name}: criterion '{c.id}': code set '{name}' is not defined")
        for unit in c.rule.units_used():
            if not is_ucum(unit):
                problems.append(f"{path.name}: criterion '{c.id}': '{unit}' is not a UCUM unit")
        for bridge in c.rule.unit_bridges():
            if bridge not in units.bridges:
                problems.append(f"{path.name}: criterion '{c.id}': conversions '{bridge}' is not in the unit table")
    if problems:
        raise DefinitionError("\n".join(problems))
    return Trial(definition=definition, library=CodeLibrary(codesets), units=units)


#: Registry statuses of a trial that is screening patients: without CDS_TRIALS the service
#: evaluates only these (a completed or suspended trial's card would send a clinician to a
#: study team that no longer enrols). CDS_TRIALS, the CLI's --trial and tests name others.
ENROLLING = ("Recruiting", "Not yet recruiting")


def enrolling_trials(directory: Path = DEFINITIONS_DIR) -> dict[str, Trial]:
    """The bundled trials whose registry status is one of ENROLLING."""
    return {tid: t for tid, t in load_trials(directory).items() if t.definition.status in ENROLLING}


def load_trials(directory: Path = DEFINITIONS_DIR, only: Iterable[str] | None = None) -> dict[str, Trial]:
    """Every trial file in a directory, keyed by NCT id (optionally only some)."""
    codesets, units = load_codesets(), load_units()
    trials = {}
    for path in sorted(directory.glob("*.yaml")):
        trial = load_trial(path, codesets, units)
        if trial.id in trials:
            raise DefinitionError(f"{path.name}: trial {trial.id} is defined twice")
        trials[trial.id] = trial
    if only is not None:
        wanted = list(only)
        missing = [t for t in wanted if t not in trials]
        if missing:
            raise DefinitionError(f"unknown trial(s): {', '.join(missing)}; available: {', '.join(trials)}")
        trials = {t: trials[t] for t in wanted}
    return trials
