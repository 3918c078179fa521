"""Rule kinds: one module per kind of criterion a trial file can use.

Every module of this package is imported here, so a kind's model registers itself
(base.RULE_KIND_MODELS) by being defined: adding a kind is adding its module."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .base import RULE_KIND_MODELS  # noqa: E402 - every kind registered by now

__all__ = ["RULE_KIND_MODELS"]
