"""CDS Hooks 2.0 service screening patients for clinical-trial eligibility.

Layers, each a subpackage; dependencies point one way (HTTP -> data access ->
engine), and the engine imports none of the others (tests/test_engine_purity.py):
  hooks/   the CDS Hooks HTTP layer: discovery, the service, feedback, JWT trust, serving
  fhir/    data access: prefetch, FHIR searches and reads, bundles and files
  engine/  pure eligibility evaluation over FHIR R4 resources (the date is an input)
  trials/  trial definitions, code sets and unit tables (data) and their loader
  cards/   card rendering from the evaluation (templates in cards/ at the top level)
Beside them: cli.py (the command line), harness.py and report.py (runs against a
FHIR server, population reports), demo/ (the built-in demo data).
"""

__version__ = "0.1.0"
