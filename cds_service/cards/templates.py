"""The card templates: the files read once at start-up, the Jinja environment, and the
checks that fail start-up on a missing file or key, a syntax error or a misspelt variable."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Mapping

import jinja2
import jinja2.meta


SUMMARY_TEMPLATE = "summary.txt.j2"
DETAIL_TEMPLATE = "detail.md.j2"
TEXT_FILE = "text.yaml"
TEMPLATE_FILES = (SUMMARY_TEMPLATE, DETAIL_TEMPLATE, TEXT_FILE)


# text.yaml: the template strings, and the variables each may use.
TRIAL_VARS = frozenset({"nct_id", "short_title", "title", "study_url"})
ORDER_VARS = TRIAL_VARS | {"order", "criteria", "criteria_titles"}


# The variables the two file templates are given (see cards/README.md).
TEMPLATE_VARS = frozenset({"trial", "status", "as_of", "patient_id", "items", "missing", "notes", "needs",
                           "fails", "symbols"})


def read_files(template_dir: str | Path | None) -> dict[str, str]:
    if template_dir is None:
        root: Any = importlib.resources.files("cds_service.card_templates")
        where = "packaged card templates"
    else:
        root = Path(template_dir)
        where = str(root)
        if not root.is_dir():
            raise ValueError(f"card template directory {where} does not exist")
    files = {}
    for name in TEMPLATE_FILES:
        entry = root / name
        if not entry.is_file():
            raise ValueError(f"{name}: missing from {where}")
        try:
            files[name] = entry.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}: cannot read from {where}: {exc}") from None
    return files


def lookup(data: Any, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"{TEXT_FILE}: missing key '{dotted}'")
        node = node[part]
    return node


def nonempty_str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{TEXT_FILE}: '{key}' must be a non-empty string")
    return value


def name_map(data: dict, key: str) -> dict[str, str]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                              for k, v in value.items()):
        raise ValueError(f"{TEXT_FILE}: '{key}' must map criterion ids to non-empty names")
    return dict(value)


class CardEnvironment(jinja2.Environment):
    """Jinja with `item.title` read as a key first. The template variables are
    plain dicts, and Jinja's default (attribute first) raises and catches an
    AttributeError for every `item.field` on a dict: a third of the detail's
    rendering time."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:  # noqa: E721 - the renderer's own view dicts; anything else as Jinja does it
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def make_globals(self, d: Mapping[str, Any] | None) -> dict[str, Any]:  # type: ignore[override]
        # A plain dict rather than Jinja's ChainMap: every render copies the globals
        # into its context, and copying a ChainMap was a tenth of the card's render
        # time. The renderer never changes the globals after building its templates.
        return {**self.globals, **(d or {})}


def refuse_unknown(where: str, used: set[str], allowed: frozenset[str]) -> None:
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown variable(s) {', '.join(unknown)}; available: {', '.join(sorted(allowed))}")


def jinja_error(exc: jinja2.TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    return f"line {line}: {exc.message}" if line else str(exc.message or exc)
