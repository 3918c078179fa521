"""The engine is pure: no web framework, no network, no clock, no other layer."""

import ast
from pathlib import Path

import cds_service.engine

ENGINE = Path(cds_service.engine.__file__).parent
FORBIDDEN_MODULES = {"flask", "requests", "urllib", "http", "socket", "cachetools", "sqlite3", "cds_service.fhir",
                     "cds_service.trials", "cds_service.cli", "os", "subprocess"}
CLOCK_CALLS = {"today", "now", "utcnow", "time", "monotonic", "perf_counter"}


def _modules():
    for path in sorted(ENGINE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_engine_imports_no_io_or_outer_layer():
    for path, tree in _modules():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert not any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES), \
                    f"{path.name} imports {name}"


def test_engine_never_reads_the_clock():
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in CLOCK_CALLS, f"{path.name}:{node.lineno} calls .{node.func.attr}()"
