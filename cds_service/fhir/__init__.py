"""FHIR data access: reading bundles and files, grouping resources by patient
(and, for the CDS Hooks service, fetching from the EHR's FHIR server)."""
