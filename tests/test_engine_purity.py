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


def engine_modules_imported(path: Path, tree: ast.AST) -> list[str]:
    """The engine modules (not the package itself) that `tree` imports from or imports."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("cds_service.engine.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package[:len(package) - (node.level - 1)] + ([module] if module else []))
            if module.startswith("cds_service.engine."):
                found.append(module)
    return found


def test_outer_layers_use_the_engines_public_api_only():
    # cds_service.engine's __init__ names what the other layers may use; its modules are its own.
    package = ENGINE.parent
    for path in sorted(package.rglob("*.py")):
        if ENGINE in path.parents:
            continue
        inside = engine_modules_imported(path, ast.parse(path.read_text(), filename=str(path)))
        assert not inside, f"{path.relative_to(package)} imports the engine's internals: {inside}"


def test_an_import_of_an_engine_module_is_caught():
    where = ENGINE.parent / "hooks" / "service.py"
    for source in ("from ..engine.evaluate import Trial", "import cds_service.engine.record",
                   "from cds_service.engine.rules.base import newest_first"):
        assert engine_modules_imported(where, ast.parse(source)), source
    assert not engine_modules_imported(where, ast.parse("from ..engine import Trial, evaluate"))
