"""The report of a site model, declared once: `cds-service learn` writes it, `cds-service
monitor` extends it (`monitoring`), `cds-service approve` signs it (`approval`), and the
service (site_models.read_report) and the HTML report read it.

The writer validates what it is about to write with this model (`ModelReport`) and writes
the validated model's JSON; the reader validates what it reads with the same model. So a
report the reader would refuse is refused by the writer first (no field is undeclared:
`extra = "forbid"` everywhere), and a report the writer wrote is read.

It reads as a model card for a deployed model, following the TRIPOD+AI items (Collins et
al., BMJ 2024;385:e078378) that apply to a deployed model: intended use and users
(`model_card.intended_use`, `intended_users`, `setting`), data source and date range
(`provenance`, `model_card.data_range`), outcome and predictor definitions
(`model_card.outcome_definition`, `predictor_definitions`), missing-input handling
(`model_card.missing_inputs`), performance overall and by subgroup (`performance`,
`subgroups`, with intervals or "too few events"), calibration plot data (`calibration`),
the updating policy (`model_card.updating_policy`), who approved it (`approval`), and how
it has done since deployment (`monitoring`).

Nothing here sees a patient: every number is an aggregate.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REPORT_FORMAT: Final = "hfs-cds-site-model-report/2"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Num = float | None  # NaN / infinity are written as null


# ---------------------------------------------------------------------------- identity
class ReportCard(_Part):
    id: str
    version: str | None = None


class ReportDefinition(_Part):
    path: str
    version: str
    sha256: str


class ReportModel(_Part):
    kind: Literal["cox", "logistic"]
    outcome: str
    time_unit: str | None = None
    label: str | None = None
    version: str | None = None


# ---------------------------------------------------------------------------- the model card (TRIPOD+AI)
class DataRange(_Part):
    first_index: str | None = None  # the earliest index date in the cohort (ISO date)
    last_index: str | None = None


class PredictorDefinition(_Part):
    id: str
    label: str
    definition: str  # how it is read at the decision time, in words
    coding: str


class ModelCard(_Part):
    intended_use: str
    intended_users: str
    setting: str
    outcome_definition: str
    predictor_definitions: list[PredictorDefinition] = Field(default_factory=list)
    missing_inputs: str
    updating_policy: str
    data_range: DataRange = DataRange()


class Approval(_Part):
    """Set by a person (`cds-service approve`), never by `learn` or `monitor`."""

    approved_by: str = Field(min_length=1)
    approved_at: str
    note: str | None = None


# ---------------------------------------------------------------------------- provenance and counts
class ReportExtraction(_Part):
    method: str
    level: str
    group: str | None = None
    types: list[str] = Field(default_factory=list)
    transaction_time: str | None = None
    files: int = 0
    resources: dict[str, int] = Field(default_factory=dict)
    since: str | None = None  # monitor: `_since`


class ReportProvenance(_Part):
    fhir_server: str
    generated_at: str
    extraction_started: str | None = None
    extraction: ReportExtraction | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    timings_s: dict[str, Num] = Field(default_factory=dict)


class ReportCounts(_Part):
    included: int = Field(ge=0)
    events: int = Field(ge=0)
    patients_scanned: int | None = Field(None, ge=0)
    with_index_event: int | None = Field(None, ge=0)
    excluded: dict[str, int] = Field(default_factory=dict)
    predictors: int | None = None
    events_per_predictor: Num = None


class FollowUp(_Part):
    unit: str
    median: Num
    max: Num
    person_time: Num


class ReportCheck(_Part):
    name: str
    value: Any = None
    required: str
    passed: bool


class ReportMinimums(_Part):
    sample_size_rule: str | None = None
    checks: list[ReportCheck] = Field(default_factory=list)
    passed: bool | None = None


# ---------------------------------------------------------------------------- the model's numbers
class CodingNumbers(_Part):
    scale: float
    offset: float


class Published(_Part):
    coefficient: float
    ratio: Num = None
    source: str | None = None
    coding: str | None = None


class ReportCoefficient(_Part):
    predictor: str
    estimate: float
    label: str | None = None
    coding: CodingNumbers | None = None
    coding_text: str | None = None
    se: Num = None
    ci_low: Num = None
    ci_high: Num = None
    ratio: Num = None
    ratio_ci_low: Num = None
    ratio_ci_high: Num = None
    published: Published | None = None


class ReportIntercept(_Part):
    estimate: float
    se: Num = None
    ci_low: Num = None
    ci_high: Num = None


class BaselineSurvival(_Part):
    reference_label: str
    reference_raw: dict[str, float] = Field(default_factory=dict)
    reference_coded: dict[str, float] = Field(default_factory=dict)
    at: dict[str, Num] = Field(default_factory=dict)


class ReportPerformance(_Part):
    c_statistic_apparent: Num = None
    c_statistic_optimism_corrected: Num = None
    calibration_slope_apparent: Num = None
    calibration_slope_optimism_corrected: Num = None
    calibration_intercept_apparent: Num = None
    calibration_intercept_optimism_corrected: Num = None
    calibration_intercept_definition: str | None = None
    bootstrap_resamples: int | None = None
    bootstrap_failed: int | None = None


class ReportRange(_Part):
    """A numeric predictor's training range (raw, in the predictor's unit), or a yes/no
    predictor's prevalence."""

    n: int = Field(ge=0)
    min: float | None = None
    max: float | None = None
    p05: float | None = None
    p95: float | None = None
    unit: str | None = None
    coded_min: float | None = None
    coded_max: float | None = None
    present: int | None = None
    prevalence: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_kind(self) -> ReportRange:
        if self.prevalence is None and (self.min is None or self.max is None or self.min > self.max):
            raise ValueError("give min <= max (numeric) or prevalence (yes/no)")
        return self


class ReportGroup(_Part):
    n: int = Field(ge=0)
    predicted: float = Field(ge=0, le=1)
    observed: float | None = Field(None, ge=0, le=1)


class ReportCalibration(_Part):
    horizon: float | None = None
    groups: list[ReportGroup] = Field(default_factory=list)


class Interval(_Part):
    estimate: Num = None
    low: Num = None
    high: Num = None


class Subgroup(_Part):
    """Apparent performance in one subgroup (sex, age band). `note` says "too few events"
    when the subgroup has fewer events than the definition's minimum: then no estimate."""

    by: Literal["sex", "age"]
    level: str
    n: int = Field(ge=0)
    events: int = Field(ge=0)
    observed_expected: Interval | None = None
    c_statistic: Interval | None = None
    note: str | None = None


# ---------------------------------------------------------------------------- monitoring (added by `monitor`)
class MonitorWindow(_Part):
    start: str  # ISO date: index dates from here ...
    end: str  # ... to here (inclusive)
    n: int = Field(ge=0)
    events: int = Field(ge=0)
    expected: Num = None
    observed_expected: Interval | None = None
    calibration_slope: Interval | None = None
    c_statistic: Num = None
    note: str | None = None


class DriftTest(_Part):
    method: str
    alpha: float
    statistic: Num = None
    threshold: Num = None
    alarm: bool
    direction: Literal["higher", "lower"] | None = None
    events_at_alarm: int | None = None


class MonitorRun(_Part):
    run_at: str
    since: str  # outcomes of patients scored (indexed) on or after this date
    horizon: Num = None  # Cox: calibration-in-the-large at this horizon
    n: int = Field(ge=0)
    events: int = Field(ge=0)
    expected: Num = None
    observed_expected: Interval | None = None
    observed_risk_km: Num = None  # Cox: Kaplan-Meier risk at the horizon
    mean_predicted_risk: Num = None
    calibration_slope: Interval | None = None
    c_statistic: Num = None
    windows: list[MonitorWindow] = Field(default_factory=list)
    drift: DriftTest
    status: Literal["ok", "retired", "insufficient"]
    reason: str  # one line: why (shown on the card when retired)
    extraction: ReportExtraction | None = None


class ReportFiles(_Part):
    report_json: str
    report_html: str
    overlay: str | None = None


class Recalibration(_Part):
    """A recalibration proposed by `learn --recalibrate`: the deployed model's linear
    predictor with a new intercept (logistic) or baseline (Cox) and a slope."""

    of_version: str
    intercept: float
    slope: float
    events: int


# ---------------------------------------------------------------------------- the report
class ModelReport(_Part):
    format: Literal["hfs-cds-site-model-report/2"] = REPORT_FORMAT
    status: Literal["passed", "failed", "refused"]
    message: str = ""
    card: ReportCard
    definition: ReportDefinition | None = None
    model: ReportModel
    model_card: ModelCard
    provenance: ReportProvenance
    counts: ReportCounts
    follow_up: FollowUp | None = None
    minimums: ReportMinimums = ReportMinimums()
    coefficients: list[ReportCoefficient] = Field(default_factory=list)
    intercept: ReportIntercept | None = None
    baseline_survival: BaselineSurvival | None = None
    performance: ReportPerformance = ReportPerformance()
    subgroups: list[Subgroup] = Field(default_factory=list)
    predictor_ranges: dict[str, ReportRange] = Field(default_factory=dict)
    calibration: ReportCalibration = ReportCalibration()
    recalibration: Recalibration | None = None
    files: ReportFiles | None = None
    approval: Approval | None = None
    monitoring: list[MonitorRun] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ModelReport:
        if self.status != "refused" and not self.coefficients:
            raise ValueError(f"a {self.status} report gives the model's coefficients")
        if self.model.kind == "logistic" and self.status != "refused":
            if self.intercept is None:
                raise ValueError("a logistic model's report gives its intercept")
        if self.status == "refused" and self.approval is not None:
            raise ValueError("a refused report (no model) cannot be approved")
        return self

    # -- reading and writing --------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=False), indent=2, ensure_ascii=False) + "\n"

    @property
    def latest_monitoring(self) -> MonitorRun | None:
        return self.monitoring[-1] if self.monitoring else None


def finite(value: object) -> object:
    """NaN / infinity are not JSON: they become null (before validation)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def build_report(data: dict[str, Any]) -> ModelReport:
    """The writer's side: the report as data -> the validated report (ValidationError when
    the reader would refuse it)."""
    return ModelReport.model_validate(finite(data))
