"""Learning site models from the site's own outcomes (`cds-service learn <card>`).

definition (cards/learning/<card>.toml) -> extraction (fhir.bulk, SMART Backend Services)
-> staging (on disk, per patient) -> cohort (rows from the hook path's record code)
-> fit (lifelines / statsmodels, bootstrap validation) -> report (JSON, HTML + SVG, overlay).
"""
