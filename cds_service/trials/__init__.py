"""Trial definitions as data: one YAML file per trial under definitions/, the
code sets they name under codesets/, unit spellings and analyte conversion
factors in units.yaml. The format: docs/trial-format.md."""

from .loader import ENROLLING, DefinitionError, enrolling_trials, load_codesets, load_trial, load_trials, load_units

__all__ = ["ENROLLING", "DefinitionError", "enrolling_trials", "load_codesets", "load_trial", "load_trials",
           "load_units"]
