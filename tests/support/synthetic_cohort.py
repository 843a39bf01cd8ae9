"""Seeded synthetic cohorts as FHIR R4 resources, drawn from a known truth, for proving
`cds-service learn` (tests/learning) and for the scale benchmark.

- RFA recurrence (Cox): h(t | x) = h0(t) exp(b_op * (op_min - 30) / 10 + b_hb * (HB - 1)),
  h0 piecewise constant so that the reference patient (30 min, House-Brackmann I) has the
  published cohort curve: 20.2 / 36.4 / 71.9 % recurrence at 3 / 6 / 12 months. Follow-up
  ends at a uniform 3-18 months (an Encounter); an event is an HFS Condition with clinical
  status `recurrence` or (a third of them) a repeat BTX-A chemodenervation.
- AMR persistence (logistic): logit p = a + b . x over the five preoperative factors in the
  coding of cards/learning/amr-persistence.toml.
- BTX-A poor response (logistic): logit p = a + b . (hypertension, male, drinking, diabetes).

Each patient is a list of resources with urn:uuid references (one transaction per batch of
patients); patients carry a name, an MRN and a birth date so a test can prove none of them
reaches the learned outputs.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from support.chart import (
    ALCOHOL,
    CHEMODENERVATION,
    CLINICAL,
    DIABETES,
    HFS,
    HYPERTENSION,
    LOCAL,
    MVD,
    RFA,
    RXNORM,
    UCUM,
)

SNOMED_HFS = ("http://snomed.info/sct", "13753008")
MONTH_DAYS = 365.25 / 12
# Published cohort curve (EVIDENCE.md A): cumulative recurrence at 3 / 6 / 12 months.
CURVE = ((3.0, 0.202), (6.0, 0.364), (12.0, 0.719))


def piecewise_hazards(curve=CURVE) -> list[tuple[float, float, float]]:
    """(start, end, hazard per month) pieces whose survival matches the curve; the last
    hazard continues past its end."""
    pieces, start, h_prev = [], 0.0, 0.0
    for t, risk in curve:
        h = -math.log(1.0 - risk)
        pieces.append((start, t, (h - h_prev) / (t - start)))
        start, h_prev = t, h
    return pieces


def draw_time(rng: np.random.Generator, multiplier: float, pieces) -> float:
    """Event time (months) with cumulative hazard multiplier * H0(t)."""
    target = rng.exponential() / multiplier
    for start, end, rate in pieces:
        span = (end - start) * rate
        if target <= span:
            return start + target / rate
        target -= span
    start, end, rate = pieces[-1]
    return end + target / rate


@dataclass(frozen=True)
class RfaTruth:
    b_operation_time: float = -0.5  # per 10 minutes
    b_paralysis: float = -0.9  # per House-Brackmann grade above I


@dataclass(frozen=True)
class AmrTruth:
    intercept: float = -4.7
    b_duration: float = 0.12  # per year
    b_cohen: float = 0.45  # per grade
    b_carbamazepine: float = 0.8
    b_vessels: float = 0.7  # per vessel beyond the first
    b_amplitude: float = 0.3  # per 100 uV


@dataclass(frozen=True)
class BtxaTruth:
    intercept: float = -2.3
    b_hypertension: float = math.log(5.847)
    b_male: float = 0.4
    b_drinking: float = 0.6
    b_diabetes: float = 0.5
    p_hypertension: float = 0.30
    p_male: float = 0.45
    p_drinking: float = 0.20
    p_diabetes: float = 0.15


@dataclass
class Population:
    patients: list[list[dict]] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)  # names, MRNs, birth dates written

    def transactions(self, per_bundle: int = 200):
        for start in range(0, len(self.patients), per_bundle):
            entries = []
            for resources in self.patients[start : start + per_bundle]:
                for r in resources:
                    full_url = r.pop("_fullUrl")
                    entries.append(
                        {
                            "fullUrl": full_url,
                            "resource": r,
                            "request": {"method": "POST", "url": r["resourceType"]},
                        }
                    )
            yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class Generator:
    def __init__(self, seed: int, anchor: datetime = datetime(2021, 1, 1, tzinfo=UTC)) -> None:
        self.rng = np.random.default_rng(seed)
        self.anchor = anchor
        self.population = Population()

    # -- building blocks ---------------------------------------------------------------------
    def _patient(self, male: bool | None = None) -> tuple[list[dict], str]:
        ref = f"urn:uuid:{uuid.UUID(int=int(self.rng.integers(0, 2**63)) << 64 | int(self.rng.integers(0, 2**63)))}"
        mrn = f"MRN{int(self.rng.integers(10**7, 10**8))}"
        family = f"Synth{int(self.rng.integers(10**5, 10**6))}"
        born = (datetime(1940, 1, 1) + timedelta(days=int(self.rng.integers(0, 365 * 45)))).date().isoformat()
        male = bool(self.rng.random() < 0.5) if male is None else male
        patient = {
            "_fullUrl": ref,
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.3.4.5.1", "value": mrn}],
            "name": [{"family": family, "given": ["Test"]}],
            "gender": "male" if male else "female",
            "birthDate": born,
        }
        self.population.identifiers.update({mrn, family, born})
        return [patient], ref

    @staticmethod
    def _add(resources: list[dict], ref: str, resource: dict) -> None:
        resource["_fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
        resource["subject"] = {"reference": ref}
        resources.append(resource)

    def _condition(self, res, ref, code, onset: datetime, status: str = "active") -> None:
        self._add(
            res,
            ref,
            {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
                "code": {"coding": [{"system": code[0], "code": code[1]}]},
                "onsetDateTime": _day(onset),
                "recordedDate": _day(onset),
            },
        )

    def _procedure(self, res, ref, code, start: datetime, minutes: float | None = None) -> None:
        resource = {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {"coding": [{"system": code[0], "code": code[1]}]},
        }
        if minutes is None:
            resource["performedDateTime"] = _instant(start)
        else:
            resource["performedPeriod"] = {
                "start": _instant(start),
                "end": _instant(start + timedelta(minutes=minutes)),
            }
        self._add(res, ref, resource)

    def _observation(self, res, ref, code: str, when: datetime, **value) -> None:
        self._add(
            res,
            ref,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOCAL, "code": code}]},
                "effectiveDateTime": _instant(when),
                **value,
            },
        )

    def _encounter(self, res, ref, when: datetime) -> None:
        self._add(
            res,
            ref,
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "period": {"start": _instant(when), "end": _instant(when + timedelta(minutes=20))},
            },
        )

    def _index_time(self) -> datetime:
        return self.anchor + timedelta(days=int(self.rng.integers(0, 900)), hours=8)

    def _hfs(self, res, ref, before: datetime) -> None:
        onset = before - timedelta(days=int(self.rng.integers(200, 3000)))
        code = HFS if self.rng.random() < 0.7 else SNOMED_HFS
        self._condition(res, ref, code, onset)

    # -- cohorts -----------------------------------------------------------------------------
    def rfa(self, n: int, truth: RfaTruth = RfaTruth()) -> None:
        pieces = piecewise_hazards()
        for _ in range(n):
            res, ref = self._patient()
            when = self._index_time()
            self._hfs(res, ref, when)
            minutes = float(self.rng.integers(15, 61))
            grade = int(self.rng.choice([1, 2, 3], p=[0.55, 0.30, 0.15]))
            self._procedure(res, ref, RFA, when, minutes)
            self._observation(res, ref, "house-brackmann-grade", when + timedelta(days=1), valueInteger=grade)
            lp = truth.b_operation_time * (minutes - 30) / 10 + truth.b_paralysis * (grade - 1)
            event_months = draw_time(self.rng, math.exp(lp), pieces)
            censor_months = float(self.rng.uniform(3.0, 18.0))
            if event_months <= censor_months:
                at = when + timedelta(days=event_months * MONTH_DAYS)
                if self.rng.random() < 1 / 3:
                    self._procedure(res, ref, CHEMODENERVATION, at)
                else:
                    self._condition(res, ref, HFS, at, status="recurrence")
                self._encounter(res, ref, at)
            else:
                self._encounter(res, ref, when + timedelta(days=censor_months * MONTH_DAYS))
            self.population.patients.append(res)

    def amr(self, n: int, truth: AmrTruth = AmrTruth()) -> None:
        for _ in range(n):
            res, ref = self._patient()
            when = self._index_time()
            years = float(self.rng.uniform(0.5, 10.0))
            onset = when - timedelta(days=round(years * 365.25))
            self._condition(res, ref, HFS, onset)
            cohen = int(self.rng.integers(1, 5))
            carbamazepine = bool(self.rng.random() < 0.4)
            vessels = int(self.rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
            amplitude = float(self.rng.integers(50, 601))
            before = when - timedelta(days=int(self.rng.integers(3, 60)))
            self._observation(res, ref, "cohen-spasm-grade", before, valueInteger=cohen)
            self._observation(res, ref, "responsible-vessel-count", before, valueInteger=vessels)
            self._observation(
                res,
                ref,
                "amr-amplitude-preop",
                when - timedelta(hours=1),
                valueQuantity={"value": amplitude, "unit": "uV", "system": UCUM, "code": "uV"},
            )
            if carbamazepine:
                self._add(
                    res,
                    ref,
                    {
                        "resourceType": "MedicationStatement",
                        "status": "active",
                        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2002"}]},
                        "effectiveDateTime": _day(before - timedelta(days=200)),
                    },
                )
            self._procedure(res, ref, MVD, when, 150.0)
            d = (round(years * 365.25)) / 365.25
            lp = (
                truth.intercept
                + truth.b_duration * d
                + truth.b_cohen * cohen
                + truth.b_carbamazepine * carbamazepine
                + truth.b_vessels * (vessels - 1)
                + truth.b_amplitude * amplitude / 100
            )
            persisted = self.rng.random() < 1 / (1 + math.exp(-lp))
            answer = "amr-persisted" if persisted else "amr-resolved"
            self._observation(
                res,
                ref,
                "amr-intraop-result",
                when + timedelta(hours=2),
                valueCodeableConcept={"coding": [{"system": LOCAL, "code": answer}]},
            )
            self.population.patients.append(res)

    def btxa(self, n: int, truth: BtxaTruth = BtxaTruth()) -> None:
        for _ in range(n):
            male = bool(self.rng.random() < truth.p_male)
            res, ref = self._patient(male)
            when = self._index_time()
            self._hfs(res, ref, when)
            x = {}
            for name, code, p in (
                ("hypertension", HYPERTENSION, truth.p_hypertension),
                ("drinking", ALCOHOL, truth.p_drinking),
                ("diabetes", DIABETES, truth.p_diabetes),
            ):
                x[name] = bool(self.rng.random() < p)
                if x[name]:
                    self._condition(res, ref, code, when - timedelta(days=int(self.rng.integers(30, 2000))))
            self._procedure(res, ref, CHEMODENERVATION, when)
            lp = (
                truth.intercept
                + truth.b_hypertension * x["hypertension"]
                + truth.b_male * male
                + truth.b_drinking * x["drinking"]
                + truth.b_diabetes * x["diabetes"]
            )
            poor = self.rng.random() < 1 / (1 + math.exp(-lp))
            if poor:
                answer = "cohen-response-partial" if self.rng.random() < 0.7 else "cohen-response-none"
            else:
                answer = "cohen-response-complete" if self.rng.random() < 0.5 else "cohen-response-significant"
            self._observation(
                res,
                ref,
                "cohen-response",
                when + timedelta(days=int(self.rng.integers(21, 60))),
                valueCodeableConcept={"coding": [{"system": LOCAL, "code": answer}]},
            )
            self.population.patients.append(res)

    def bystanders(self, n: int) -> None:
        """Patients outside every cohort (an MVD without AMR result, other conditions, visits)."""
        for i in range(n):
            res, ref = self._patient()
            when = self._index_time()
            if i % 3 == 0:
                self._condition(res, ref, HYPERTENSION, when)
            if i % 7 == 0:
                self._hfs(res, ref, when)
                self._procedure(res, ref, MVD, when, 120.0)
            self._encounter(res, ref, when)
            self.population.patients.append(res)


def _instant(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(when: datetime) -> str:
    return when.date().isoformat()
