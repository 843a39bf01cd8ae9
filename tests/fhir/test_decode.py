"""Hook requests and FHIR answers decoded keeping only the elements the record reads
(fhir/decode.py): the record built from them is the record built from the whole JSON, every
element the record asks for is declared, and no shape of an element fails the decode."""

from __future__ import annotations

import ast
import copy
import json
from datetime import date
from pathlib import Path

import orjson
import pytest
from support.elements_asked import elements_asked
from support.paths import DATA_DIR, REPO_ROOT, SCENARIOS_DIR, SYNTHEA_DIR

from cds_service.clinical import fhir_elements
from cds_service.clinical.fhir_collect import READ_TYPES
from cds_service.clinical.fhir_elements import declared_elements
from cds_service.clinical.record_build import build_record
from cds_service.fhir.decode import Decoding
from cds_service.startup import observation_codes
from cds_service.terminology.concepts_file import load_concepts

TODAY = date(2026, 6, 1)
CHARTS = sorted(
    [*(DATA_DIR / "record").glob("*.json"), *SCENARIOS_DIR.glob("*.json"), *SYNTHEA_DIR.glob("*.json")],
    key=lambda p: p.name,
)


@pytest.fixture(scope="module")
def concepts():
    return load_concepts(REPO_ROOT / "cards")


@pytest.fixture(scope="module")
def decoding():
    return Decoding(declared_elements())


@pytest.fixture(scope="module")
def sifting(concepts):
    """The service's decoder: the resource types the record reads, and only the Observations
    that name one of the codes it reads them by (as startup builds it)."""
    return Decoding(declared_elements(), READ_TYPES, observation_codes(concepts, {}))


@pytest.fixture(params=["every Observation", "Observations sifted"])
def either(request, decoding, sifting):
    return decoding if request.param == "every Observation" else sifting


def _by_type(bundle: dict) -> dict[str, dict]:
    """A chart as the prefetch of a hook request: one searchset per resource type."""
    out: dict[str, dict] = {}
    for entry in bundle.get("entry", []):
        kind = entry["resource"]["resourceType"]
        out.setdefault(kind, {"resourceType": "Bundle", "type": "searchset", "entry": []})["entry"].append(entry)
    return out


def _request(prefetch: dict) -> bytes:
    return orjson.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "p1"},
            "prefetch": prefetch,
        }
    )


def _records(prefetch: dict, decoding: Decoding, concepts):
    body = _request(prefetch)
    whole = orjson.loads(body)["prefetch"]
    decoded = decoding.hook_request(body)
    assert decoded is not None, "a well-formed hook request must take the decoded path"
    return (
        build_record(whole, concepts=concepts, today=TODAY),
        build_record(decoded["prefetch"], concepts=concepts, today=TODAY),
    )


def _every_reader_chart() -> dict:
    """Resources that reach the readers the record charts may not: a Medication referenced
    and contained, a MedicationStatement with dosage, a Condition with a body site and an
    abatement, an Observation without a value, one with a value of another kind."""
    chart = json.loads((DATA_DIR / "record" / "hfs_before_mvd.json").read_text())
    resources = [e["resource"] for e in chart["entry"]]
    extra = []
    for resource in resources:
        if resource["resourceType"] == "MedicationRequest":
            code = resource.get("medicationCodeableConcept")
            med = {"resourceType": "Medication", "id": "med-1", "code": code}
            by_ref = {**resource, "id": "mr-ref", "medicationReference": {"reference": "Medication/med-1"}}
            by_ref.pop("medicationCodeableConcept", None)
            contained = {
                **by_ref,
                "id": "mr-contained",
                "contained": [{**med, "id": "c1"}],
                "medicationReference": {"reference": "#c1"},
            }
            statement = {
                **resource,
                "resourceType": "MedicationStatement",
                "id": "ms-1",
                "dosage": resource.get("dosageInstruction", [{"text": "1 tablet"}]),
                "effectiveDateTime": "2025-01-02",
            }
            extra += [med, by_ref, contained, statement]
        if resource["resourceType"] == "Condition":
            extra.append(
                {
                    **resource,
                    "id": resource.get("id", "c") + "-sited",
                    "bodySite": [{"text": "left face"}],
                    "abatementString": "in 2020",
                }
            )
        if resource["resourceType"] == "Observation":
            bare = {k: v for k, v in resource.items() if not k.startswith("value")}
            extra.append({**bare, "id": resource.get("id", "o") + "-absent", "dataAbsentReason": {"text": "asked"}})
            extra.append({**bare, "id": resource.get("id", "o") + "-range", "valueRange": {"low": {"value": 1}}})
    chart["entry"] += [{"resource": r, "fullUrl": f"urn:uuid:{r['id']}"} for r in extra]
    return chart


@pytest.mark.parametrize("path", CHARTS, ids=lambda p: p.stem[:24])
def test_a_decoded_chart_gives_the_record_of_the_whole_json(path, either, concepts):
    whole, decoded = _records(_by_type(json.loads(path.read_text())), either, concepts)
    assert decoded == whole
    if path.name != "draft_orders.json":  # draft orders only: nothing for the record
        assert whole.conditions or whole.observations or whole.procedures or whole.medications


def test_every_reader_gives_the_same_record_decoded(either, concepts):
    whole, decoded = _records(_by_type(_every_reader_chart()), either, concepts)
    assert decoded == whole
    assert whole.medications and whole.unreadable


def test_every_element_the_record_asks_a_decoded_resource_for_is_declared(decoding, concepts):
    """Run the readers on decoded resources and note each element they ask for: one that
    is not declared would read as absent (the decoder dropped it), silently."""
    with elements_asked(decoding) as asked:
        for path in [*CHARTS[:8]]:
            _records(_by_type(json.loads(path.read_text())), decoding, concepts)
        _records(_by_type(_every_reader_chart()), decoding, concepts)
    assert asked, "the readers asked nothing: the test does not test"
    assert asked <= decoding.elements, sorted(asked - decoding.elements)


# Sub-element names of FHIR datatypes that the record reads inside a top-level element
# (a CodeableConcept's coding, a Period's start...). Any other name a reader spells is a
# resource's own element and must be declared (fhir_elements.ELEMENTS_READ or ALSO_READ).
NESTED = {
    "coding", "text", "system", "code", "display", "reference", "start", "end", "value", "unit",
    "comparator", "low", "high", "sequence", "asNeededBoolean", "asNeededCodeableConcept", "route",
    "doseAndRate", "timing", "doseQuantity", "doseRange", "repeat", "period", "frequency",
    "timeOfDay", "when", "periodUnit", "frequencyMax", "periodMax", "fullUrl", "resource", "entry",
}  # fmt: skip


def test_every_element_name_spelled_by_the_record_build_is_declared(decoding):
    """Static guard for elements added later: every string the record's readers use as a key
    (`.get("x")`, `["x"]`, `"x" in`) is declared, or a datatype's sub-element."""
    sources = [Path(m.__file__) for m in (fhir_elements,)]
    sources += [REPO_ROOT / "cds_service" / "clinical" / n for n in ("record_build.py", "observation_values.py")]
    sources += [
        REPO_ROOT / "cds_service" / "clinical" / n
        for n in ("dosage.py", "fhir_collect.py", "procedure_context.py", "story.py")
    ]
    spelled: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            key = None
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and node.args:
                key = node.args[0]
            elif isinstance(node, ast.Subscript):
                key = node.slice
            elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
                key = node.left
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                spelled.add(key.value)
    assert "effectiveDateTime" in spelled and "coding" in spelled  # the walk sees the readers
    unknown = spelled - decoding.elements - NESTED
    assert not unknown, f"declare these in fhir_elements.ALSO_READ (or NESTED if a sub-element): {sorted(unknown)}"


def test_an_element_of_the_wrong_shape_makes_that_input_unreadable_not_the_call(either, concepts):
    chart = json.loads((DATA_DIR / "record" / "hfs_before_mvd.json").read_text())
    broken = copy.deepcopy(chart)
    for entry in broken["entry"]:
        if entry["resource"]["resourceType"] == "Condition":
            entry["resource"]["verificationStatus"] = "confirmed"  # a string, not a CodeableConcept
            entry["resource"]["onsetDateTime"] = 2019
        if entry["resource"]["resourceType"] == "Observation":
            entry["resource"]["effectiveDateTime"] = "yesterday"
    whole, decoded = _records(_by_type(broken), either, concepts)
    assert decoded == whole
    assert any(u.resource_type == "Condition" for u in decoded.unreadable)
    assert any(u.resource_type == "Observation" for u in decoded.unreadable)


def test_only_the_declared_elements_are_kept(decoding):
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "text": {"div": "<div>" + "x" * 10_000 + "</div>"},
        "meta": {"profile": ["http://example.org/p"]},
        "valueQuantity": {"value": 1},
    }
    decoded = decoding.answer(orjson.dumps({"resourceType": "Bundle", "entry": [{"resource": resource}]}))
    kept = decoded["entry"][0]["resource"]
    assert dict(kept.items()) == {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "valueQuantity": {"value": 1},
    }
    assert "text" not in kept and kept.get("meta") is None and "valueQuantity" in kept


@pytest.mark.parametrize(
    "body",
    [
        b'{"hook": "patient-view", "prefetch": {"p": "a string"}}',
        b'{"hook": "patient-view", "prefetch": {"p": {"resourceType": "Bundle", "entry": ["x"]}}}',
        b'{"hook": "patient-view", "prefetch": {"p": {"resourceType": "Bundle", "entry": {}}}}',
        b'["a list"]',
        b'{"hook": "patient-view", "x": "\xc3\x28"}',
        b"{not json",
    ],
    ids=["prefetch-string", "entry-string", "entry-object", "list", "bad-utf8", "not-json"],
)
def test_what_is_not_of_the_expected_shape_is_left_to_the_generic_parser(decoding, body):
    """None: the route parses it whole and answers exactly as without the decoder."""
    assert decoding.hook_request(body) is None


# -- sifting Observations by code ------------------------------------------------------------
def _observation(rid: str, code: object = None, component: object = None) -> dict:
    resource: dict = {"resourceType": "Observation", "id": rid, "status": "final", "valueInteger": 3}
    if code is not None:
        resource["code"] = code
    if component is not None:
        resource["component"] = component
    return resource


def _read_code(concepts) -> tuple[str, str]:
    system, code = concepts.search_codes("observation")[0]
    return system, code


def test_the_sift_keeps_what_names_a_read_code_and_drops_the_rest(sifting, concepts):
    system, code = _read_code(concepts)
    named = {"coding": [{"system": "http://other.example", "code": "x"}, {"system": system, "code": code}]}
    in_component = [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}}, {"code": named}]
    resources = [
        _observation("named", named),
        _observation("component", {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, in_component),
        _observation("other", {"coding": [{"system": system, "code": code + "0"}], "text": code}),
        _observation("uncoded"),
        {"resourceType": "Condition", "id": "c1", "code": {"text": "anything"}},
    ]
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}
    decoded = sifting.answer(orjson.dumps(bundle))
    kept = [e["resource"] for e in decoded["entry"]]
    assert [r["id"] for r in kept] == ["named", "component", "c1"]
    assert kept[0]["code"] == named and kept[1]["component"] == in_component  # decoded, as sent
    # The hook request path sifts its prefetched searchsets the same way.
    body = _request({"observations": bundle})
    assert [e["resource"]["id"] for e in sifting.hook_request(body)["prefetch"]["observations"]["entry"]] == [
        "named",
        "component",
        "c1",
    ]


@pytest.mark.parametrize(
    "code",
    [
        "a string",
        {"coding": "not a list"},
        {"coding": ["not an object"]},
    ],
    ids=["string", "coding-string", "coding-item-string"],
)
def test_an_observation_whose_code_the_sift_cannot_read_is_kept_for_the_record_to_judge(sifting, code):
    bundle = {"resourceType": "Bundle", "entry": [{"resource": _observation("odd", code)}]}
    decoded = sifting.answer(orjson.dumps(bundle))
    assert [e["resource"]["code"] for e in decoded["entry"]] == [code]


def test_a_coding_whose_code_is_not_a_string_names_nothing(sifting):
    """The record matches string codes only: such an Observation is dropped like any other
    that names no code the record reads."""
    bundle = {"resourceType": "Bundle", "entry": [{"resource": _observation("odd", {"coding": [{"code": [1]}]})}]}
    assert sifting.answer(orjson.dumps(bundle))["entry"] == []


def test_a_code_spelled_with_json_escapes_is_still_found(sifting, concepts):
    system, code = _read_code(concepts)
    escaped = "".join(f"\\u{ord(ch):04x}" for ch in code)
    text = '{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "e", '
    text += f'"code": {{"coding": [{{"system": "{system}", "code": "{escaped}"}}]}}}}}}]}}'
    decoded = sifting.answer(text.encode())
    assert decoded["entry"][0]["resource"]["code"]["coding"][0]["code"] == code


def test_a_single_observation_answer_is_decoded_whole(sifting):
    decoded = sifting.answer(orjson.dumps(_observation("one", {"coding": [{"code": "not read"}]})))
    assert decoded["code"] == {"coding": [{"code": "not read"}]}


def test_no_observation_is_dropped_when_a_concept_is_found_by_text(concepts):
    assert observation_codes(concepts, {}) is not None  # the shipped concepts: by code only

    class ByText:
        def search_codes(self, kind):
            return None

    class Site:
        concepts = ByText()

    assert observation_codes(concepts, {"site-a": Site()}) is None
