"""THE registry of derivation kinds: how a card's predictor is read from the patient record.

A predictor in a card file names its kind (`derive = "observation"`). This registry is what
the card loader knows about each kind: what it reads, which kind of concept it needs (if
any), whether its value is yes/no or a number, whether it is read relative to the
situation's procedure, which predictor options apply, and the notes a card may word for it.
clinical/predictors.py holds one function per kind, registered under the same name.

Adding a kind = one entry here + one function in clinical/predictors.py (DERIVE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cds_service import hooks

OBSERVATION_OPTIONS = frozenset({"lookback_days", "after_procedure", "annotate_procedure", "values"})
# `for_condition`: only operations / orders done for that condition (EVIDENCE.md "The patient's
# story", indication: one whose stated reason names only another condition does not count).
TREATMENT_OPTIONS = frozenset({"for_condition"})


@dataclass(frozen=True)
class DerivationKind:
    description: str
    concept_kinds: tuple[str, ...] = ()  # kinds of concept it reads; () = reads no concept
    yes_no: bool = False  # value is yes/no (coded 1 / 0 by a site model); else a number or an answer
    needs_procedure: bool = False  # read relative to the situation's procedure
    several_concepts: bool = False  # `concept` may list several concepts (the first found wins)
    absent_when_missing: bool = False  # a site model may take a missing value as "no" (and says so)
    options: frozenset[str] = frozenset()  # predictor keys that apply to this kind only
    notes: dict[str, str] = field(default_factory=dict)  # note key -> generic wording; a card may word it
    is_procedure: bool = False  # the fact it finds is the situation's procedure
    is_order: bool = False  # the fact it finds is the draft order that triggers the card
    # the kind of concept each position of `concept` must be (the last repeats): several
    # concepts with different roles, e.g. ("observation", "medication"); () = any of concept_kinds
    concept_roles: tuple[str, ...] = ()
    # The `cds-service learn` reads (cards/learning/*.toml `read`) that stand for this kind at
    # the index operation: read by the same story code as the bedside (learning/cohort.py).
    learn_reads: tuple[str, ...] = ()


KINDS: dict[str, DerivationKind] = {
    "condition": DerivationKind(
        "a Condition of the concept (yes / recorded as resolved / not recorded)",
        concept_kinds=("condition",),
        yes_no=True,
        absent_when_missing=True,
        learn_reads=("condition_at_index",),
    ),
    "condition_after_procedure": DerivationKind(
        "a Condition of the concept present after the situation's procedure",
        concept_kinds=("condition",),
        yes_no=True,
        needs_procedure=True,
    ),
    "medication": DerivationKind(
        "a MedicationRequest / MedicationStatement of the concept (current use)",
        concept_kinds=("medication",),
        yes_no=True,
        absent_when_missing=True,
        learn_reads=("medication_at_index",),
    ),
    "observation": DerivationKind(
        "the latest Observation of the concept",
        concept_kinds=("observation",),
        options=OBSERVATION_OPTIONS,
        learn_reads=("observation_after_index", "observation_before_index"),
        notes={
            # the value used is older than one that could not be read; followed by that one's date
            "newer_unreadable": "this older value is used: a newer one could not be read, dated",
            # no value used; one on the procedure's own day cannot be placed before or after it
            "unplaced": "a value recorded on the day of the procedure without a time of day cannot be "
            "placed before or after it, so it is not used",
        },
    ),
    "sex": DerivationKind(
        "the patient's administrative gender (male = yes); the note is `how`, a colon and the gender found",
        yes_no=True,
        learn_reads=("sex_male",),
    ),
    "age": DerivationKind("age in whole years at the date of the call, from the patient's birth date"),
    "disease_duration": DerivationKind(
        "years since the earliest onset of the concept's Condition",
        concept_kinds=("condition",),
        learn_reads=("disease_duration_at_index",),
        notes={
            "used": "",  # where the onset comes from
            "no_onset": "the Condition has no usable onset date (its recorded date is not taken as the onset)",
        },
    ),
    "operation_time": DerivationKind(
        "an operation-time Observation of the procedure's day, else the minutes from the start to the "
        "end of its period (a period longer than 12 hours is a stay: not used); the concept's range holds for both",
        concept_kinds=("observation",),
        needs_procedure=True,
        learn_reads=("index_duration",),
        notes={
            "from_period": "from the procedure's start and end times",
            "from_observation": "from an Observation of the procedure day",
            "stay": "the procedure's recorded period is longer than 12 hours (a stay, not an operation time): not used",
            "range": "the procedure's recorded period is outside the valid range of an operation time: not used",
        },
    ),
    "condition_since_procedure": DerivationKind(
        "where the concept's Conditions stand relative to the situation's procedure: "
        "'after' (active, dated after it), 'unclear' (no date that places it, or only the procedure's day "
        "(note 'unplaced'); dated before it with no end (note 'ongoing')), 'resolved' (ended on a date "
        "after it: delayed resolution; the display gives the date), 'none' (none active)",
        concept_kinds=("condition",),
        needs_procedure=True,
        notes={
            "after": "recorded after the procedure",
            "unplaced": "recorded without a date that places it before or after the procedure",
            "ongoing": "still active since before the procedure, with no end date",
            "none": "none active since the procedure",
            "procedure_undated": "present; the procedure has no date to place it against",
            "resolved": "recorded as resolved on",  # followed by the date
            "resolved_after": "after the procedure",  # follows the time from the procedure to it
        },
    ),
    "procedure_count": DerivationKind(
        "how many operations of the concept the story holds (records of one day merged; not dated after today)",
        concept_kinds=("procedure",),
        options=TREATMENT_OPTIONS,
    ),
    "time_since_procedure": DerivationKind("months since the situation's procedure", needs_procedure=True),
    "intraoperative": DerivationKind(
        "only known during the operation: always listed as not yet known",
        notes={"not_yet_known": "not known before surgery"},  # shown as its value; `how` says when it is known
    ),
    "procedure": DerivationKind(
        "the latest operation of the concept (records of one day merged; yes / not recorded); the "
        "situation's procedure",
        concept_kinds=("procedure",),
        yes_no=True,
        is_procedure=True,
        options=TREATMENT_OPTIONS,
    ),
    "later_procedure": DerivationKind(
        "a completed Procedure of the concept(s) performed after the situation's procedure (yes / not recorded)",
        concept_kinds=("procedure",),
        yes_no=True,
        needs_procedure=True,
        several_concepts=True,
        options=TREATMENT_OPTIONS,
    ),
    "treated_after": DerivationKind(
        "the first operation of the concept(s) after the situation's procedure, with its date; 'treated' "
        "when the condition of `for_condition` is not recorded after that later operation, 'spasm_after' "
        "when it is (recorded after the later treatment)",
        concept_kinds=("procedure",),
        needs_procedure=True,
        several_concepts=True,
        options=TREATMENT_OPTIONS,
        notes={
            "treated": "treated again after the procedure",
            "spasm_after": "treated again after the procedure, and the condition is recorded after that treatment",
        },
    ),
    "order": DerivationKind(
        "a draft order of the concept(s) being selected (order-select) or signed (order-sign); with "
        "`indication` (a condition concept), only an order for it: its stated reason (reasonCode / "
        "reasonReference) names the indication, or it states no reason of a known concept and the "
        "patient has the indication active; an order whose stated reason is another known condition "
        "does not count",
        concept_kinds=("procedure", "medication"),
        yes_no=True,
        several_concepts=True,
        is_order=True,
        options=frozenset({"indication"}) | TREATMENT_OPTIONS,
        notes={
            "for_indication": "ordered for the indication (its stated reason)",
            "patient_has_indication": "no stated reason of a known condition; the patient has the indication",
            "other_reason": "an order was placed, but its stated reason is another condition",
            "no_indication": "an order was placed, but it states no reason and the patient has no active indication",
        },
    ),
    "condition_site": DerivationKind(
        "where the concept's active Conditions are sited (Condition.bodySite), as an answer: "
        "'at_site' (a body site of the `site` concept, by code or by text), 'site_not_recorded' "
        "(no body site recorded), 'elsewhere' (only other sites); 'inactive' when none is active",
        concept_kinds=("condition",),
        options=frozenset({"site"}),
        notes={
            "at_site": "",  # the answer's wording, followed by the site as recorded
            "site_not_recorded": "",
            "elsewhere": "",
            "site_unreadable": "its body site could not be read",
        },
    ),
    "daily_morphine": DerivationKind(
        "the daily dose of a drug: concept [0] a recorded daily-dose Observation (the latest in "
        "`lookback_days`), concept [1] the drug's current prescriptions, whose structured dosage "
        "gives the daily dose (summed over prescriptions; a newer Observation wins), further "
        "concepts: other drugs of the class, named and never converted",
        concept_kinds=("observation", "medication"),
        several_concepts=True,
        concept_roles=("observation", "medication"),
        options=frozenset({"lookback_days"}),
        notes={
            "prescribed": "prescribed",
            "not_read": "a prescription's daily dose could not be read",
            "others": "not converted to morphine (the source reports morphine)",
            "older_observation": "a recorded daily dose is older than the prescription",
            "no_dosage": "no dosage recorded",
            # shown as the value (in a lead): a prescription whose dose cannot be read; only other drugs
            "prescribed_unread": "prescribed, daily dose not readable",
            "others_only": "none recorded; another opioid prescribed (not converted)",
            "none": "no prescription or recorded daily dose of the drug",
        },
    ),
}

ORDER_HOOKS = hooks.ORDER_HOOKS
