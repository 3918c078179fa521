"""A trial definition: what a trial file holds, validated.

The file format is documented in the README ("Trial definition files"). Rule
kinds live in `rules/`; adding a trial that uses existing kinds is writing a
file, not code.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import Field, model_validator

from .model import Order
from .rules.allergy import AllergyRule
from .rules.base import RuleModel
from .rules.conditions import ConditionAbsentRule, ConditionPresentRule
from .rules.her2 import Her2Rule
from .rules.labs import LabRule
from .rules.mentions import TextMentions
from .rules.patient import AgeRule, AliveRule, ReviewRule
from .rules.pregnancy import PregnancyRule

Rule = Annotated[
    Union[AliveRule, AgeRule, ReviewRule, ConditionPresentRule, ConditionAbsentRule, Her2Rule, LabRule,
          AllergyRule, PregnancyRule],
    Field(discriminator="type"),
]

_RULE_MODELS = get_args(get_args(Rule)[0])
# Each kind's name, as the models' `type` literals say it (the one place a kind is named).
RULE_KINDS = tuple(get_args(model.model_fields["type"].annotation)[0] for model in _RULE_MODELS)


class AppliesTo(RuleModel):
    """Who a criterion concerns. Outside it the result is `not-applicable`; when
    sex or age is unknown the criterion applies (never skipped for lack of data)."""

    sex: Literal["female", "male"] | None = None
    min_age: int | None = Field(default=None, ge=0)
    max_age: int | None = Field(default=None, ge=0)


class OrderDefinition(RuleModel):
    system: str = Field(min_length=1)
    code: str = Field(min_length=1)
    display: str = Field(min_length=1)
    source: str

    def as_order(self, key: str) -> Order:
        return Order(key=key, system=self.system, code=self.code, display=self.display)


class Criterion(RuleModel):
    id: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    kind: Literal["inclusion", "exclusion"]
    title: str = Field(min_length=1)
    protocol_text: str = Field(min_length=1)  # verbatim from the protocol
    interpretation: str = Field(min_length=1)  # how the product reads it
    applies_to: AppliesTo | None = None
    card_note: str | None = None  # a reading clinicians must see on the card, in one line
    rule: Rule


class TrialDefinition(RuleModel):
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
            order = getattr(c.rule, "order", None)
            if order is not None and order not in self.orders:
                raise ValueError(f"criterion '{c.id}': order '{order}' is not defined under orders")
        return self
