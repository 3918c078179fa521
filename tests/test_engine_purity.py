"""The engine is pure: no web framework, no network, no clock, no other layer."""

import ast
from pathlib import Path

import cds_service.engine

ENGINE = Path(cds_service.engine.__file__).parent
ROOT = ENGINE.parent.parent  # the directory holding the cds_service package
FORBIDDEN_MODULES = {"flask", "requests", "urllib", "urllib3", "http", "socket", "cachetools", "sqlite3", "psycopg",
                     "redis", "os", "subprocess", "cds_service.fhir", "cds_service.trials",
                     "cds_service.hooks", "cds_service.cards", "cds_service.cli", "cds_service.harness",
                     "cds_service.report", "cds_service.demo"}
CLOCK_CALLS = {"today", "now", "utcnow", "time", "monotonic", "perf_counter"}


def _modules():
    for path in sorted(ENGINE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def imported_modules(path: Path, tree: ast.AST) -> list[str]:
    """Every module `tree` (the source of `path`) imports, relative imports resolved to
    absolute names: `from ..hooks import config` in cds_service/engine/dates.py is
    cds_service.hooks.config."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)
    package = package[:-1] if package[-1] != "__init__" else package[:-1]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def _forbidden(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES)


def test_engine_imports_no_io_or_outer_layer():
    for path, tree in _modules():
        for name in imported_modules(path, tree):
            assert not _forbidden(name), f"{path.relative_to(ENGINE)} imports {name}"


def test_a_relative_import_of_an_outer_layer_is_caught():
    # The example the review found passing the old check: an import of hooks.config from engine/dates.py.
    for source in ("from ..hooks.config import Settings", "from .. import hooks", "from ..fhir import client"):
        tree = ast.parse(source)
        assert any(_forbidden(n) for n in imported_modules(ENGINE / "dates.py", tree)), source
    inner = ast.parse("from .rules.base import Context\nfrom ..engine import model")
    assert not any(_forbidden(n) for n in imported_modules(ENGINE / "evaluate.py", inner))


def test_engine_never_reads_the_clock():
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in CLOCK_CALLS, f"{path.name}:{node.lineno} calls .{node.func.attr}()"
