"""Card templates (Jinja2), shipped inside the wheel as the package
`cds_service.card_templates`. Edit them without touching code; set
CDS_CARD_TEMPLATES to a directory to use your own copies."""
