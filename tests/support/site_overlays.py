"""Site overlays used by more than one test: complete models a deployment could supply."""

RFA_SITE = {
    "models": {
        "rfa-recurrence": {
            "label": "Example Hospital RFA model",
            "version": "2025.1",
            "reference_label": "operation time under 40 min, House-Brackmann grade I-II",
            "coding": {"operation_time": {"cutoffs": [40]}, "paralysis_grade_after": {"cutoffs": [3]}},
            "reference": {"operation_time": 0, "paralysis_grade_after": 0},
            "baseline_survival": {"3": 0.7, "6": 0.5, "12": 0.25},
        }
    }
}
