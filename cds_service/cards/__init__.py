"""CDS Hooks 2.0 cards for trial evaluations (templates in the top-level
`cards/` folder, packaged as `cds_service.card_templates`)."""

from .render import CardContext, CardRenderer
from .text import find_empty_values, fit_summary, md_escape

__all__ = ["CardContext", "CardRenderer", "find_empty_values", "fit_summary", "md_escape"]
