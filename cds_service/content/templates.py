"""Card texts as templates: {placeholders} naming figures, predictors and a few values the
renderer computes; how a figure is written; how long a summary may be."""

from __future__ import annotations

import string
from typing import Any

from cds_service.formatting import figure

SUMMARY_LIMIT = 140  # CDS Hooks: summary SHOULD be under 140 characters
# Placeholders every text may use besides figures and predictor ids.
# The estimate's names (clinical/evaluate.py estimate_values): a learned model's report
# figures, the inputs outside its training data, and the card texts chosen by the model's
# origin ({estimate_by}, {estimate_provenance}) or by a withheld figure ({estimate_withheld}).
# A learned model's report figures (also what a calibration chart's title and notes may name).
MODEL_REPORT_NAMES = frozenset(
    {
        "model_patients",
        "model_events",
        "model_c_statistic",
        "model_calibration_slope",
        "model_fitted_on",
        "model_server",
    }
)
ESTIMATE_NAMES = MODEL_REPORT_NAMES | {"outside_range", "estimate_by", "estimate_provenance", "estimate_withheld"}
# Filled from [texts] estimate_*: those texts cannot use them.
TEXT_FILLED_NAMES = frozenset({"estimate_by", "estimate_provenance", "estimate_withheld"})
DYNAMIC_NAMES = (
    frozenset({"site_label", "site_version", "estimate_headline", "factors_recorded", "factors_total", "factors_are"})
    | ESTIMATE_NAMES
)
_TYPICAL = "xxxxxxxxxx"  # a typical patient or dynamic value, for the summary length check
# Dynamic values whose length is known: a count and its verb ("2 of the 5 factors are recorded").
_TYPICAL_KNOWN = {"factors_recorded": "99", "factors_total": "99", "factors_are": "are"}


def check_template(text: str, names: set[str] | frozenset[str], where: str) -> None:
    """ValueError naming `where` when the text has a broken or unknown placeholder."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{where}: broken placeholder ({exc}); write a literal brace as {{{{ or }}}}") from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"{where}: placeholder {{{name}}} must be a plain name (no format spec)")
        if name not in names:
            raise ValueError(f"{where}: unknown placeholder {{{name}}}")


def check_summary_length(text: str, figures: dict[str, Any], where: str) -> None:
    """The summary with figures filled in and typical dynamic values must stay short."""
    filled = string.Formatter().vformat(text, (), _Typical(figures))
    if len(filled) >= SUMMARY_LIMIT - 20:
        raise ValueError(
            f"{where}: summary is {len(filled)} characters with typical values; "
            f"keep it under {SUMMARY_LIMIT - 20} to leave room for patient values"
        )


class _Typical(dict[str, Any]):
    def __init__(self, figures: dict[str, Any]) -> None:
        super().__init__({k: format_figure(v) for k, v in figures.items()})

    def __missing__(self, key: str) -> str:
        return _TYPICAL_KNOWN.get(key, _TYPICAL)


def format_figure(value: Any) -> str:
    """A figure exactly as written in the card file: 21.0 stays '21.0', 0.075 stays '0.075'."""
    return figure(value)
