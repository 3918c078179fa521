"""The card templates: the files read once at start-up, the Jinja environment, and the
checks that fail start-up on a missing file or key, a syntax error or a misspelt variable
(text.yaml through a pydantic model, CardTexts)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Iterator

import jinja2
import jinja2.meta
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engine import Result, error_message, error_path


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


# text.yaml, as pydantic models: every text present and non-empty, no unknown key, and each
# template using only the variables it is given (StrictUndefined would fail at chart open).


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


Text = Annotated[str, AfterValidator(_nonempty)]


def _template(allowed: frozenset[str]) -> Any:
    """A text that is a Jinja template of the `allowed` variables."""
    def check(value: str) -> str:
        try:
            used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(value))
        except jinja2.TemplateError as exc:
            raise ValueError(jinja_error(exc)) from None
        problem = unknown_variables(used, allowed)
        if problem:
            raise ValueError(problem)
        return value
    return Annotated[Text, AfterValidator(check)]


TrialText = _template(TRIAL_VARS)
OrderText = _template(ORDER_VARS)


class _Texts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Label(_Texts):
    label: TrialText


class _OrderSuggestion(_Texts):
    label: OrderText
    description: OrderText


class _ReferralSuggestion(_Texts):
    label: TrialText
    description: TrialText


class _Suggestions(_Texts):
    order: _OrderSuggestion
    referral: _ReferralSuggestion


class _ServiceRequest(_Texts):
    order_reason: OrderText
    referral_text: TrialText
    referral_reason: TrialText
    referral_note: TrialText


class _Reason(_Texts):
    code: Text
    display: Text


class _OverrideReasons(_Texts):
    system: Text
    reasons: list[_Reason] = Field(min_length=1)

    @field_validator("reasons")
    @classmethod
    def _codes_once(cls, reasons: list[_Reason]) -> list[_Reason]:
        codes = [r.code for r in reasons]
        repeated = sorted({c for c in codes if codes.count(c) > 1})
        if repeated:
            raise ValueError(f"repeats the code(s) {', '.join(repeated)}")
        return reasons


# The sections whose texts are templates, rendered with the trial's (and the order's) variables.
TEMPLATE_SECTIONS = ("source", "link", "suggestions", "service_request")


class CardTexts(_Texts):
    """cards/text.yaml."""
    source: _Label
    link: _Label
    symbols: dict[str, Text]  # the mark of each criterion result (by its value) in the detail checklist
    suggestions: _Suggestions
    service_request: _ServiceRequest
    override_reasons: _OverrideReasons
    short_names: dict[str, Text] = {}  # by criterion id, for the summary and order labels
    failed_names: dict[str, Text] = {}  # by criterion id, when it rules the patient out

    @field_validator("symbols")
    @classmethod
    def _every_result(cls, symbols: dict[str, str]) -> dict[str, str]:
        results = [r.value for r in Result]
        unknown = [name for name in symbols if name not in results]
        if unknown:
            raise ValueError(f"unknown result(s) {', '.join(unknown)} (the results: {', '.join(results)})")
        missing = [name for name in results if name not in symbols]
        if missing:
            raise ValueError(f"missing the symbol(s) for {', '.join(missing)}")
        return symbols

    def templates(self) -> dict[str, str]:
        """The template texts by dotted key (source.label, suggestions.order.label, ...)."""
        def leaves(prefix: str, node: Any) -> Iterator[tuple[str, str]]:
            if isinstance(node, dict):
                for name, value in node.items():
                    yield from leaves(f"{prefix}.{name}" if prefix else name, value)
            else:
                yield prefix, node
        return dict(leaves("", self.model_dump(include=set(TEMPLATE_SECTIONS))))

    def symbol_texts(self) -> dict[str, str]:
        """The mark of each result, by its value ("pass": "✔", ...), in the order of Result."""
        return {r.value: self.symbols[r.value] for r in Result}

    def override_codings(self) -> list[dict[str, str]]:
        """The override reasons as CDS Hooks 2.0 wants them: Codings with a display."""
        return [{"system": self.override_reasons.system, "code": r.code, "display": r.display}
                for r in self.override_reasons.reasons]


def load_texts(source: str) -> CardTexts:
    """text.yaml, checked; a problem is a ValueError in one line naming the key."""
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ValueError(f"{TEXT_FILE}:{where} not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{TEXT_FILE}: must be a mapping")
    try:
        return CardTexts.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        message = "must be a mapping" if error["type"] == "model_type" else error_message(error)  # not our class name
        raise ValueError(f"{TEXT_FILE}: '{error_path(error['loc'])}': {message}") from None


def unknown_variables(used: set[str], allowed: frozenset[str]) -> str | None:
    unknown = sorted(used - allowed)
    return f"unknown variable(s) {', '.join(unknown)}; available: {', '.join(sorted(allowed))}" if unknown else None


def refuse_unknown(where: str, used: set[str], allowed: frozenset[str]) -> None:
    problem = unknown_variables(used, allowed)
    if problem:
        raise ValueError(f"{where}: {problem}")


def jinja_error(exc: jinja2.TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    return f"line {line}: {exc.message}" if line else str(exc.message or exc)
