"""A trial definition: what a trial file holds, validated.

The file format is documented in docs/trial-format.md. Rule kinds live in
`rules/`, one module each, registered by being defined (rules/base.py
RULE_KIND_MODELS); adding a trial that uses existing kinds is writing a file,
not code, and adding a kind is adding its module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, model_validator

from .model import Order
from .rules import RULE_KIND_MODELS  # importing the package registers every kind
from .rules.base import DefinitionModel
from .rules.mentions import TextMentions

# A criterion's rule: one of the registered kinds, told apart by its `type`.
Rule = Annotated[Union[tuple(RULE_KIND_MODELS.values())], Field(discriminator="type")]  # type: ignore[valid-type]
RULE_KINDS = tuple(RULE_KIND_MODELS)


class AppliesTo(DefinitionModel):
    """Who a criterion concerns. Outside it the result is `not-applicable`; when
    sex or age is unknown the criterion applies (never skipped for lack of data)."""

    sex: Literal["female", "male"] | None = None
    min_age: int | None = Field(default=None, ge=0)
    max_age: int | None = Field(default=None, ge=0)


def _one_or_more(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


# `appliesTo` is one group of patients, or a list of groups: the criterion concerns a patient
# in any of them (NCT01325207's contraception: women aged 55 or younger, and men).
AppliesToAny = Annotated[list[AppliesTo], BeforeValidator(_one_or_more), Field(min_length=1)]


class OrderDefinition(DefinitionModel):
    system: str = Field(min_length=1)
    code: str = Field(min_length=1)
    display: str = Field(min_length=1)
    source: str
    category: Literal["imaging"] | None = None  # not a laboratory test (the default): the draft order says so

    def as_order(self, key: str) -> Order:
        return Order(key=key, system=self.system, code=self.code, display=self.display, category=self.category)


class Criterion(DefinitionModel):
    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    kind: Literal["inclusion", "exclusion"]
    title: str = Field(min_length=1)
    protocol_text: str = Field(min_length=1)  # verbatim from the protocol
    interpretation: str = Field(min_length=1)  # how the product reads it
    applies_to: AppliesToAny | None = None
    card_note: str | None = None  # a reading clinicians must see on the card, in one line
    rule: Rule


class TrialDefinition(DefinitionModel):
    schema_version: Literal[1]
    nct_id: str = Field(pattern=r"^[A-Z0-9-]+$")
    definition_version: str = Field(min_length=1)
    title: str
    short_title: str = Field(max_length=80)
    phase: str
    status: str
    sponsor: str | None = None
    study_url: str = Field(pattern=r"^https://")
    protocol_source: str  # where the verbatim criteria text was taken from
    orders: dict[str, OrderDefinition] = {}
    criteria: list[Criterion] = Field(min_length=1)

    def result_mentions(self) -> list[TextMentions]:
        """The names criteria look for among results no code set recognises (a lab's
        local code), as each rule kind declares them (RuleModel.result_mentions)."""
        return [m for c in self.criteria for m in c.rule.result_mentions()]

    @model_validator(mode="after")
    def _consistent(self) -> "TrialDefinition":
        seen = set()
        for c in self.criteria:
            if c.id in seen:
                raise ValueError(f"criterion id '{c.id}' appears twice")
            seen.add(c.id)
            for order in c.rule.orders():
                if order not in self.orders:
                    raise ValueError(f"criterion '{c.id}': order '{order}' is not defined under orders")
        return self
