"""The process-wide caches of the engine and the cards (issue 15: speed by structure, not by
caches). What stays is bounded by functools.lru_cache and kept because bench/cache_bench.py
shows it earns its keep; none of it may change an evaluation."""

import ast
import datetime as dt
import importlib
import pkgutil
from pathlib import Path

import pytest

import cds_service.cards
import cds_service.demo
import cds_service.engine
from cds_service.engine import PatientRecord, evaluate
from cds_service.engine.validation import validate_serialized, validations_done
from cds_service.fhir.bundles import patient_groups_from_bytes
from fhirbuild import lab

GOLD = Path(__file__).parent / "gold" / "patients"
DATES = (dt.date(2026, 6, 15), dt.date(2026, 11, 27))
PACKAGES = (cds_service.engine, cds_service.cards)


def _modules():
    for package in PACKAGES:
        yield package
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            yield importlib.import_module(info.name)


def test_every_cache_is_a_bounded_lru_cache():
    # A memo kept by hand (a dict cleared when full, a registry to patch it out) or an
    # unbounded functools.cache is refused: functools.lru_cache with a number as maxsize.
    found = []
    for module in _modules():
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for decorator in getattr(node, "decorator_list", ()):
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", "")
                if name in ("cache", "lru_cache"):
                    where = f"{module.__name__}.{node.name}"
                    found.append(where)
                    assert name == "lru_cache" and isinstance(decorator, ast.Call), f"{where}: not bounded"
                    sizes = [k.value for k in decorator.keywords if k.arg == "maxsize"] + decorator.args[:1]
                    assert sizes and not (isinstance(sizes[0], ast.Constant) and sizes[0].value is None), \
                        f"{where}: lru_cache without a maxsize"
    assert "cds_service.engine.quantities._parse" in found  # the walk sees them


def _lru_caches():
    """Every module-level lru_cache of the engine (the validation memo among them)."""
    for module in _modules():
        for value in vars(module).values():
            if callable(value) and hasattr(value, "cache_clear") and getattr(value, "__module__", "") == \
                    module.__name__:
                yield value


def _clear_all(trial, caches):
    for c in caches:
        c.cache_clear()
    if trial.result_names is not None:  # the trial's memo of the names its criteria look for
        trial.result_names.cache_clear()


def _charts():
    for path in sorted(GOLD.glob("*.json")) + sorted((GOLD.parent / "nct01325207").glob("*.json")):
        yield from patient_groups_from_bytes(path.read_bytes())
    yield from patient_groups_from_bytes((Path(cds_service.demo.__file__).parent / "patients.json").read_bytes())


def _evaluations(trial, charts, before_each=lambda: None):
    out = []
    for day in DATES:
        for g in charts:
            before_each()
            out.append(evaluate(trial, PatientRecord(g.resources, g.full_urls), day).to_json())
    return out


@pytest.mark.parametrize("trial_id", ["NCT06462092", "NCT01325207"])
def test_the_caches_never_change_an_evaluation(trials, trial_id):
    trial = trials[trial_id]
    charts = list(_charts())  # both gold sets and the demo patients
    assert len(charts) >= 240
    caches = list(_lru_caches())
    assert {c.__name__ for c in caches} >= {"_parse", "_factor", "validate_serialized"}
    _evaluations(trial, charts[::-1])  # warm: answers from other charts and dates
    warm = _evaluations(trial, charts)
    assert trial.result_names is not None
    cold = _evaluations(trial, charts, lambda: _clear_all(trial, caches))
    assert warm == cold


def test_validations_are_counted_across_a_cleared_memo():
    # The worker's freezer (hooks/server.py) acts on this count; cache_info() would restart at a clear.
    raw = lab("751-8", 2.4, "10*3/uL", "2026-06-10T08:00:00Z", id="counted-once")
    before = validations_done()
    PatientRecord([raw]).model(raw)
    validate_serialized.cache_clear()
    PatientRecord([raw]).model(raw)
    PatientRecord([raw]).model(raw)  # a hit: not counted
    assert validations_done() == before + 2
