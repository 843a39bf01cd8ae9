"""The learning definition of a card (cards/learning/<card-id>.toml): index event,
predictors at the decision time, outcome, windows, the minimum-sample-size rule and the
validation minimums, as reviewable data. Declared once as pydantic models; a mistake is a
`DefinitionError` naming the file and the place.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds_service.config import ConfigError

DEFINITIONS_DIR = "learning"

# How a predictor is read at the decision time (see cohort.py).
NUMERIC_READS = frozenset(
    {"index_duration", "observation_after_index", "observation_before_index", "disease_duration_at_index"}
)
BINARY_READS = frozenset({"condition_at_index", "medication_at_index", "sex_male"})


class DefinitionError(ConfigError):
    """A learning definition cannot be used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Strict):
    """X = (value - offset) / scale, value in the concept's canonical unit."""

    scale: float = Field(gt=0)
    offset: float = 0.0

    def code(self, value: float) -> float:
        return (value - self.offset) / self.scale


class Index(_Strict):
    procedure: str
    which: Literal["first", "first_with_outcome"] = "first"
    requires_condition: str | None = None
    decision_days: int = Field(default=0, ge=0, le=365)


class PredictorRead(_Strict):
    id: str
    read: Literal[
        "index_duration",
        "observation_after_index",
        "observation_before_index",
        "disease_duration_at_index",
        "condition_at_index",
        "medication_at_index",
        "sex_male",
    ]
    concept: str | None = None
    coding: Coding | None = None

    @property
    def binary(self) -> bool:
        return self.read in BINARY_READS

    @model_validator(mode="after")
    def _check(self) -> PredictorRead:
        if self.read != "sex_male" and not self.concept:
            raise ValueError(f"predictor {self.id!r}: read {self.read!r} needs a concept")
        if self.binary and self.coding is not None:
            raise ValueError(f"predictor {self.id!r}: a yes/no predictor is coded 1 / 0; remove its coding")
        if not self.binary and self.coding is None:
            raise ValueError(f"predictor {self.id!r}: a numeric predictor needs a coding (scale, offset)")
        return self


class Outcome(_Strict):
    # Cox
    condition: str | None = None
    condition_statuses: tuple[str, ...] = ()
    procedures: tuple[str, ...] = ()
    censor: Literal["last_contact"] | None = None
    time_unit: Literal["months"] | None = None
    horizons: tuple[float, ...] = ()
    # logistic
    observation: str | None = None
    event_answers: tuple[str, ...] = ()
    window_days: tuple[int, int] | None = None


class SampleSizeRule(_Strict):
    rule: str
    min_events_per_predictor: float = Field(gt=0)
    min_events: int = Field(default=0, ge=0)
    riley_margin: float | None = Field(default=None, gt=0, lt=0.5)


class Validation(_Strict):
    bootstrap: int = Field(default=200, ge=0, le=5000)
    min_c_statistic: float = Field(default=0.6, ge=0.5, le=1.0)
    calibration_slope: tuple[float, float] = (0.8, 1.2)
    calibration_horizon: float | None = None


class Monitoring(_Strict):
    """[monitoring]: how `cds-service monitor` judges a deployed model (see learning/drift.py)."""

    alpha: float = Field(default=0.05, gt=0, lt=0.5)  # false-alarm rate of the drift test, over all looks
    mixture_sd: float = Field(default=0.4, gt=0, le=2)  # prior sd of the log O/E drift (mixture SPRT)
    min_events: int = Field(default=20, ge=1)  # fewer events since deployment: "insufficient", no verdict
    window_days: int = Field(default=90, ge=7, le=730)  # report windows, by the date the patient was scored
    lookback_days: int = Field(default=730, ge=0)  # history exported before the deployment (`_since`)
    min_calibration_slope: float = Field(default=0.5, gt=0)  # retire when the slope's upper 95 % bound is below
    min_c_statistic: float = Field(default=0.55, ge=0.5, le=1)  # retire when the C's upper 95 % bound is below


class ModelCardText(_Strict):
    """The model card's words a person writes (TRIPOD+AI items the data cannot say)."""

    intended_use: str
    intended_users: str
    setting: str
    missing_inputs: str
    updating_policy: str
    age_bands: tuple[float, ...] = (50.0, 65.0)  # subgroup cut-offs, years at the index
    min_subgroup_events: int = Field(default=10, ge=1)  # fewer: "too few events", no estimate


class LearningDefinition(_Strict):
    card: str
    version: str
    kind: Literal["cox", "logistic"]
    outcome_label: str
    resource_types: tuple[str, ...]
    index: Index
    predictors: tuple[PredictorRead, ...] = Field(min_length=1)
    outcome: Outcome
    minimum_sample_size: SampleSizeRule
    validation: Validation = Validation()
    model_card: ModelCardText
    monitoring: Monitoring = Monitoring()

    @model_validator(mode="after")
    def _check(self) -> LearningDefinition:
        ids = [p.id for p in self.predictors]
        if len(set(ids)) != len(ids):
            raise ValueError("a predictor is listed twice")
        o = self.outcome
        if self.kind == "cox":
            if not (o.condition or o.procedures) or o.censor is None or o.time_unit is None or not o.horizons:
                raise ValueError("a Cox outcome needs condition and/or procedures, censor, time_unit and horizons")
            if self.validation.calibration_horizon is None:
                raise ValueError("a Cox model needs [validation] calibration_horizon")
        else:
            if not o.observation or not o.event_answers or o.window_days is None:
                raise ValueError("a logistic outcome needs observation, event_answers and window_days")
            if o.window_days[0] > o.window_days[1]:
                raise ValueError("outcome window_days must be [from, to] with from <= to")
        if "Patient" not in self.resource_types:
            raise ValueError("resource_types must include Patient")
        return self

    def concepts(self) -> set[str]:
        found = {self.index.procedure, *(p.concept for p in self.predictors if p.concept)}
        o = self.outcome
        found.update(x for x in (self.index.requires_condition, o.condition, o.observation) if x)
        found.update(o.procedures)
        return found


def definition_path(cards_dir: Path, card_id: str) -> Path:
    return Path(cards_dir) / DEFINITIONS_DIR / f"{card_id}.toml"


def load_definition(path: Path) -> tuple[LearningDefinition, str]:
    """The definition and the SHA-256 of its file (for the report's provenance)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot read the learning definition ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DefinitionError(f"{path}: not valid TOML: {exc}") from None
    try:
        return LearningDefinition.model_validate(data), hashlib.sha256(raw).hexdigest()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:5])
        raise DefinitionError(f"{path}: {problems}") from None
