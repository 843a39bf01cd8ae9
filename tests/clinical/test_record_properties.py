"""Properties of build_record on arbitrary and mutated input: it never raises, it only ever
holds the concepts of concepts.toml, and unrelated codes never become facts."""

from __future__ import annotations

import copy
import json
from datetime import date

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.paths import REPO_ROOT

from cds_service.clinical.fhir_collect import READ_TYPES
from cds_service.clinical.record import (
    ConditionFact,
    MedicationFact,
    ObservationFact,
    OrderFact,
    PatientRecord,
    ProcedureFact,
    iter_facts,
)
from cds_service.clinical.record_build import build_record
from cds_service.terminology.concept_index import text_pattern
from cds_service.terminology.concepts_file import load_concepts

REPO = REPO_ROOT
DATA = REPO / "tests" / "data" / "record"
CONCEPTS = load_concepts(REPO / "cards")
TODAY = date(2025, 1, 15)
BUNDLES = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DATA.glob("*.json"))}
VALID_RESOURCES = [e["resource"] for b in BUNDLES.values() for e in b["entry"]]
TYPES = [*sorted(READ_TYPES), "Bundle", "Claim"]  # the types the record reads, and two it does not

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
resource_like = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(TYPES)},
    optional={
        "id": json_values,
        "status": st.sampled_from(["final", "completed", "active", "draft"]) | json_values,
        "code": json_values,
        "valueQuantity": json_values,
        "valueString": json_values,
        "medicationCodeableConcept": json_values,
        "medicationReference": json_values,
        "entry": st.lists(
            st.fixed_dictionaries({}, optional={"resource": json_values, "fullUrl": json_values}), max_size=3
        ),
        "component": json_values,
        "onsetDateTime": json_values,
        "effectiveDateTime": json_values,
        "performedPeriod": json_values,
        "gender": json_values,
        "birthDate": json_values,
    },
)


def build(resources, draft_orders=None, selections=None) -> PatientRecord:
    return build_record(resources, draft_orders, selections, concepts=CONCEPTS, today=TODAY, unavailable={})


def check_record(record: PatientRecord) -> None:
    """Every fact belongs to a concept of concepts.toml of the right kind, with a sane value."""
    tables = {
        "condition": (record.conditions, ConditionFact),
        "procedure": (record.procedures, ProcedureFact),
        "observation": (record.observations, ObservationFact),
        "medication": (record.medications, MedicationFact),
    }
    for kind, (table, fact_type) in tables.items():
        for concept_id, facts in table.items():
            assert concept_id in CONCEPTS and CONCEPTS.concept(concept_id).kind == kind
            assert facts and all(isinstance(f, fact_type) and f.match.concept == concept_id for f in facts)
    for concept_id, orders in record.orders.items():
        assert concept_id in CONCEPTS and CONCEPTS.concept(concept_id).kind in ("procedure", "medication")
        assert all(isinstance(o, OrderFact) for o in orders)
    for concept_id, facts in record.observations.items():
        spec = CONCEPTS.concept(concept_id).value
        for fact in facts:
            if spec.kind in ("quantity", "ordinal", "count"):
                assert isinstance(fact.value, (int, float)) and not isinstance(fact.value, bool)
                assert spec.low <= fact.value <= spec.high
            elif spec.kind == "coded":
                assert fact.value in {a.value for a in spec.answers}
            else:
                assert isinstance(fact.value, bool)
            assert fact.effective is None or fact.effective.tzinfo is not None
        dated = [f.effective for f in facts if f.effective is not None]
        assert dated == sorted(dated, reverse=True)
    for problem in record.unreadable:
        assert isinstance(problem.reason, str) and len(problem.reason) < 200
        assert problem.concept is None or problem.concept in CONCEPTS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.text(max_size=10), json_values | resource_like, max_size=4),
    json_values | resource_like,
    st.none() | st.lists(json_values, max_size=3),
)
def test_arbitrary_json_never_raises(prefetch, drafts, selections):
    check_record(build(prefetch, drafts, selections))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(resource_like, max_size=4))
def test_arbitrary_resources_in_a_bundle_never_raise(resources):
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    check_record(build({"all": bundle}, bundle, ["ServiceRequest/x"]))


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


@st.composite
def mutated_resource(draw):
    resource = copy.deepcopy(draw(st.sampled_from(VALID_RESOURCES)))
    for _ in range(draw(st.integers(1, 4))):
        all_paths = [p for p in paths(resource) if p and p != ("resourceType",)]
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent = resource
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "wrap", "string"]))
        last = path[-1]
        if action == "delete":
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]] if draw(st.booleans()) else {"value": parent[last]}
        elif action == "string":
            parent[last] = json.dumps(parent[last])
        else:
            parent[last] = draw(json_values)
    return resource


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_resource(), min_size=1, max_size=5))
def test_mutated_valid_resources_never_raise(resources):
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    check_record(build({"all": bundle}, bundle, None))


KNOWN_SYSTEMS = sorted({uri for s in CONCEPTS.systems.values() for uri in (s.uri, *s.aliases)})
ALL_TEXT = text_pattern([t for c in CONCEPTS.concepts.values() for t in c.text])


@st.composite
def unrelated_codeable(draw):
    codings = []
    for _ in range(draw(st.integers(0, 3))):
        system = draw(st.sampled_from(KNOWN_SYSTEMS) | st.text(max_size=20))
        code = draw(st.text(min_size=1, max_size=10))
        assume(not CONCEPTS.lookup(system, code))
        display = draw(st.text(max_size=30))
        assume(not ALL_TEXT.search(display))
        codings.append({"system": system, "code": code, "display": display})
    text = draw(st.text(max_size=40))
    assume(not ALL_TEXT.search(text))
    return {"coding": codings, "text": text}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(unrelated_codeable(), st.sampled_from(VALID_RESOURCES))
def test_a_resource_with_an_unrelated_code_never_appears(codeable, template):
    resource = copy.deepcopy(template)
    for key in ("code", "medicationCodeableConcept"):
        if key in resource:
            resource[key] = codeable
    resource.pop("medicationReference", None)
    if resource["resourceType"] == "MedicationRequest" or resource["resourceType"] == "MedicationStatement":
        resource["medicationCodeableConcept"] = codeable
    resource.pop("component", None)
    bundle = {"resourceType": "Bundle", "entry": [{"resource": resource}]}
    record = build({"all": bundle}, bundle, None)
    assert list(iter_facts(record)) == []
    assert all(u.resource_type == "Patient" for u in record.unreadable)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["G51.3", "G51.31", "G51.32", "G51.33", "G51.39"]), st.data())
def test_any_spelling_of_an_hfs_code_matches(code, data):
    spelled = "".join(data.draw(st.sampled_from([ch.lower(), ch.upper()])) for ch in code)
    if data.draw(st.booleans()):
        spelled = spelled.replace(".", "")
    matches = CONCEPTS.match_codeable(
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": spelled}]}, ["condition"]
    )
    assert [m.concept for m in matches] == ["hemifacial_spasm"]


@settings(max_examples=50, deadline=None)
@given(st.permutations(VALID_RESOURCES), st.integers(1, 3))
def test_order_and_repetition_of_the_input_do_not_change_the_facts(resources, copies):
    def facts(resource_list):
        bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resource_list]}
        record = build({"all": bundle})
        return sorted(repr(f) for _, f in iter_facts(record))

    with_ids = [r for r in VALID_RESOURCES if "id" in r]
    reference = facts(with_ids)
    shuffled = [r for r in resources if "id" in r] * copies
    assert facts(shuffled) == reference


def test_deeply_nested_junk_inside_a_selected_resource_is_unreadable_not_a_crash():
    nested: object = "x"
    for _ in range(200):
        nested = (
            {"extension": [{"url": "http://e.example", "valueString": "y", "extension": [nested]}]}
            if not isinstance(nested, str)
            else {"url": "http://e.example", "valueString": nested}
        )
    resource = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G51.3"}]},
        "extension": [nested],
    }
    record = build({"c": resource})
    check_record(record)


@pytest.mark.parametrize("size", [1_000_000])
def test_huge_strings_do_not_break_or_stall_the_build(size):
    resource = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
        "medicationCodeableConcept": {"text": "a" * size, "coding": [{"system": "s" * size, "code": "c" * size}]},
    }
    record = build({"m": resource})
    assert record.medications == {}
