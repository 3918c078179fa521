"""Answers read from validated FHIR models, remembered by the models' identity.

Validated models are shared between calls by content (record.py's validation
memo) and never mutated: a chart opened again re-sends the same resources and
gets the same model objects. So what a pure function reads from them (a
coding matched against a code set, a date, a status, a lab judgement) holds
for as long as the objects live, and is computed once, not on every call.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType
from typing import Any, Callable, TypeVar

T = TypeVar("T")
# Entries per function; then its memo starts afresh. An entry of a function of a whole resource
# holds its model, nearly always one the validation memo holds too (the last 4,096 read). Measured:
# evaluating 1,500 distinct charts grew a process by 66 MB with these memos, by 60 MB without
# (bench/memory_bench.py).
IDENTITY_MEMO_SIZE = 1024
_REMEMBERED: set[Callable[..., Any]] = set()  # every function made by remembered_by_identity


def remembered_by_identity(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn(*objects)` remembered by the objects' identity (positional arguments
    only, each immutable: validated models and their parts, rule definitions,
    code sets, unit tables). An entry holds its objects, so the ids in its key
    are not reused by other objects while it lives. The memo is `fn.entries`."""
    entries: dict[tuple[int, ...], tuple[tuple[Any, ...], T]] = {}

    @functools.wraps(fn)
    def remembered(*objects: Any) -> T:
        key = tuple(map(id, objects))
        kept = entries.get(key)
        if kept is None:
            answer = fn(*objects)
            if len(entries) >= IDENTITY_MEMO_SIZE:
                entries.clear()
            entries[key] = kept = (objects, answer)
        return kept[1]

    remembered.entries = entries  # type: ignore[attr-defined]
    _REMEMBERED.add(remembered)
    return remembered


def bindings(package: ModuleType) -> list[tuple[ModuleType, str, Callable[..., Any]]]:
    """(module, name, function) for every name in `package`'s modules bound to a
    remembered function: to measure or check the engine without its memos, patch
    each name with the function's `__wrapped__` (callers import them by name)."""
    modules = [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]
    return [(module, name, value) for module in modules for name, value in vars(module).items()
            if callable(value) and value in _REMEMBERED]
