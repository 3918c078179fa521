"""CDS Hooks 2.0 service screening patients for clinical-trial eligibility.

Layers, each a subpackage; dependencies point one way (HTTP -> data access ->
engine), and the engine imports none of the others:
  engine/  pure eligibility evaluation over FHIR R4 resources
  trials/  trial definitions, code sets and unit tables (data) and their loader
  fhir/    reading FHIR bundles / NDJSON and fetching from FHIR servers
"""

__version__ = "0.1.0"
