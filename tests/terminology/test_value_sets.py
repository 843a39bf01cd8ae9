"""EVIDENCE.md "Codes the default mappings must recognise": the real-world codes, their
provenance (published value set, version, expansion date), text matching of displays, and
the concepts file format (pydantic models) with its published JSON Schema."""

from __future__ import annotations

import json
import tomllib
from datetime import date

import jsonschema
import pytest
from support.paths import REPO_ROOT

from cds_service.config import ConfigError
from cds_service.terminology.concepts_file import SCHEMA_FILE, concepts_from_data, load_concepts, schema_json

CARDS = REPO_ROOT / "cards"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ALL_KINDS = ("condition", "procedure", "medication", "observation")

ESSENTIAL_HYPERTENSION = "2.16.840.1.113883.3.464.1003.104.12.1011"
DIAGNOSIS_OF_HYPERTENSION = "2.16.840.1.113883.3.600.263"
DIABETES = "2.16.840.1.113883.3.464.1003.103.12.1001"
CNS_DEPRESSANTS = "2.16.840.1.113762.1.4.1248.134"
PAIN_TOOL = "2.16.840.1.113883.3.526.3.1028"


@pytest.fixture(scope="module")
def concepts():
    return load_concepts(CARDS)


def matched(concepts, cc, kinds=ALL_KINDS) -> set[str]:
    return {m.concept for m in concepts.match_codeable(cc, kinds)}


def coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display is not None:
        c["display"] = display
    return {"coding": [c]}


# ------------------------------------------------------------------ codes of the table
@pytest.mark.parametrize(
    ("system", "code", "concept"),
    [
        # hypertension (systemic): 38341003 and its common problem-list descendants
        (SNOMED, "38341003", "hypertension"),
        (SNOMED, "59621000", "hypertension"),  # essential hypertension
        (SNOMED, "1201005", "hypertension"),
        (SNOMED, "10725009", "hypertension"),
        (SNOMED, "78975002", "hypertension"),
        (SNOMED, "70272006", "hypertension"),
        (SNOMED, "31992008", "hypertension"),
        (SNOMED, "56218007", "hypertension"),
        (SNOMED, "48146000", "hypertension"),
        (SNOMED, "64715009", "hypertension"),
        (SNOMED, "38481006", "hypertension"),
        (SNOMED, "86234004", "hypertension"),
        # diabetes
        (SNOMED, "73211009", "diabetes"),
        (SNOMED, "44054006", "diabetes"),
        (SNOMED, "46635009", "diabetes"),
        (SNOMED, "313436004", "diabetes"),  # from the VSAC Diabetes expansion
        # alcohol use
        (SNOMED, "7200002", "alcohol_use"),
        (SNOMED, "15167005", "alcohol_use"),
        (SNOMED, "66590003", "alcohol_use"),
        # BTX-A (medication) and chemodenervation (procedure): every type A toxin
        (HCPCS, "J0585", "botulinum_toxin_a"),
        (HCPCS, "J0586", "botulinum_toxin_a"),
        (HCPCS, "J0588", "botulinum_toxin_a"),
        (HCPCS, "J0589", "botulinum_toxin_a"),
        (HCPCS, "J0586", "btxa_chemodenervation"),
        # carbamazepine, ingredient and products (no display needed)
        (RXNORM, "2002", "carbamazepine"),
        (RXNORM, "197441", "carbamazepine"),
        (RXNORM, "199378", "carbamazepine"),
        (RXNORM, "200131", "carbamazepine"),
        # pain score 0-10
        (LOINC, "72514-3", "pain_score"),
        (LOINC, "38208-5", "pain_score"),
    ],
)
def test_every_code_of_the_table_names_its_concept(concepts, system, code, concept):
    assert concept in matched(concepts, coding(system, code))


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (SNOMED, "371622005"),  # elevated blood pressure without diagnosis of hypertension
        (SNOMED, "10964002"),  # pulmonary hypertension (in VSAC 600.263)
        (SNOMED, "34742003"),  # portal hypertension
        (SNOMED, "4210003"),  # ocular hypertension
        (SNOMED, "68267002"),  # benign intracranial hypertension
        (SNOMED, "398254007"),  # pre-eclampsia
        (HCPCS, "J0587"),  # rimabotulinumtoxinB: a type B toxin
        (LOINC, "38214-3"),  # a visual analogue score, not a 0-10 rating
    ],
)
def test_look_alike_codes_the_table_excludes_match_nothing(concepts, system, code):
    assert matched(concepts, coding(system, code)) == set()


# ------------------------------------------------------------------ text matching
@pytest.mark.parametrize(
    ("cc", "concept"),
    [
        (coding(RXNORM, "9999991", "Botox 100 unit injection"), "botulinum_toxin_a"),  # an RxNorm display
        ({"text": "Botulinum toxin A 50 units"}, "botulinum_toxin_a"),
        ({"text": "BOTOX 100 unit vial"}, "botulinum_toxin_a"),
        ({"text": "Dysport 500 unit"}, "botulinum_toxin_a"),
        ({"text": "Xeomin 100 unit"}, "botulinum_toxin_a"),
        ({"text": "prabotulinumtoxinA-xvfs (Jeuveau)"}, "botulinum_toxin_a"),
        ({"text": "Daxxify 100 unit"}, "botulinum_toxin_a"),
        ({"text": "letibotulinumtoxinA (Letybo)"}, "botulinum_toxin_a"),
        (coding(RXNORM, "9999992", "Tegretol XR 200 MG"), "carbamazepine"),
        ({"text": "Carbatrol 300 mg"}, "carbamazepine"),
        ({"text": "Epitol 200 mg"}, "carbamazepine"),
        ({"text": "Equetro 100 mg"}, "carbamazepine"),
    ],
)
def test_a_medication_named_by_display_or_text_matches_and_says_it_was_text(concepts, cc, concept):
    [m] = concepts.match_codeable(cc, ["medication"])
    assert (m.concept, m.by_text) == (concept, True)


@pytest.mark.parametrize(
    "text", ["rimabotulinumtoxinB (Myobloc)", "botulinum toxin type B", "Botoxin", "oxcarbazepine (Trileptal)"]
)
def test_other_toxins_and_drugs_do_not_match_by_text(concepts, text):
    assert matched(concepts, {"text": text}, ["medication"]) == set()


def test_text_matching_applies_only_to_concepts_that_allow_it(concepts):
    assert matched(concepts, coding(SNOMED, "999999", "Essential hypertension"), ["condition"]) == set()
    assert matched(concepts, {"text": "hypertension"}, ["condition"]) == set()


def test_an_rxnorm_product_code_without_display_is_a_code_match(concepts):
    [m] = concepts.match_codeable(coding(RXNORM, "197441"), ["medication"])
    assert (m.concept, m.by_text, m.code) == ("carbamazepine", False, "197441")


# ------------------------------------------------------------------ provenance
@pytest.mark.parametrize(
    ("concept", "oid", "version"),
    [
        ("hypertension", DIAGNOSIS_OF_HYPERTENSION, "20240206"),
        ("hypertension", ESSENTIAL_HYPERTENSION, "20240106"),
        ("diabetes", DIABETES, "20220924"),
        ("carbamazepine", CNS_DEPRESSANTS, "20240119"),
        ("pain_score", PAIN_TOOL, "20170504"),
    ],
)
def test_a_value_set_names_its_oid_version_expansion_date_and_where_it_was_read(concepts, concept, oid, version):
    [vs] = [v for v in concepts.concept(concept).value_sets if v.oid == oid]
    assert vs.version == version and vs.expansion_date == date(2025, 1, 10)
    assert vs.url == f"http://cts.nlm.nih.gov/fhir/ValueSet/{oid}"
    assert "cqframework/ecqm-content-qicore-2024" in vs.source and oid in vs.source
    assert any(c.value_set == oid for c in concepts.concept(concept).codes)


def test_essential_hypertension_is_traced_to_its_value_sets(concepts):
    [code] = [c for c in concepts.concept("hypertension").codes if c.code == "59621000"]
    assert code.value_set in (DIAGNOSIS_OF_HYPERTENSION, ESSENTIAL_HYPERTENSION)
    assert code.display == "Essential hypertension (disorder)"


def test_every_code_that_names_a_value_set_names_one_its_concept_lists(concepts):
    for concept in concepts.concepts.values():
        listed = {v.oid for v in concept.value_sets} | {v.url for v in concept.value_sets}
        for code in concept.codes:
            assert code.value_set is None or code.value_set in listed


def default_data() -> dict:
    return tomllib.loads((CARDS / "concepts.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["concepts"]["diabetes"]["codes"][1].update(value_set="1.2.3"), "which value_sets does not list"),
        (lambda d: [d["concepts"]["diabetes"]["value_sets"][0].pop(k) for k in ("oid", "url")], "oid or its url"),
        (lambda d: d["concepts"]["diabetes"]["value_sets"][0].pop("url"), None),  # oid alone is enough
        (lambda d: d["concepts"]["diabetes"]["value_sets"][0].update(expansion_date="last year"), "must be a date"),
        (lambda d: d["concepts"]["diabetes"]["value_sets"][0].pop("source"), "missing source"),
        (lambda d: d["concepts"]["diabetes"]["value_sets"][0].update(oid="VSAC diabetes"), "oid must be dotted"),
    ],
)
def test_a_mistake_in_a_value_set_stops_start_up_naming_the_concept_and_field(mutate, message):
    data = default_data()
    mutate(data)
    if message is None:
        concepts_from_data(data)
        return
    with pytest.raises(ConfigError, match=message) as caught:
        concepts_from_data(data, source="cards/concepts.toml")
    assert "cards/concepts.toml [concepts.diabetes]" in str(caught.value)


def test_a_site_extends_a_value_set_with_its_own_expansion():
    overlay = {
        "concepts": {
            "hypertension": {
                "value_sets": [
                    {
                        "name": "Hospital hypertension",
                        "url": "https://hospital.example/fhir/ValueSet/htn",
                        "version": "3",
                        "expansion_date": date(2025, 6, 1),
                        "source": "hospital terminology server",
                    }
                ],
                "codes": [
                    {
                        "system": "https://hospital.example/cs",
                        "code": "HTN-9",
                        "value_set": "https://hospital.example/fhir/ValueSet/htn",
                    }
                ],
            }
        }
    }
    concepts = load_concepts(CARDS, overlay)
    assert matched(concepts, coding("https://hospital.example/cs", "HTN-9")) == {"hypertension"}
    assert concepts.concept("hypertension").value_sets[-1].name == "Hospital hypertension"
    overlay["concepts"]["hypertension"]["codes"][0]["value_set"] = "https://hospital.example/fhir/ValueSet/other"
    with pytest.raises(ConfigError, match=r"neither value_sets nor concepts\.toml lists"):
        load_concepts(CARDS, overlay)


# ------------------------------------------------------------------ the published JSON Schema
def test_the_published_json_schema_is_the_one_the_models_declare():
    published = (CARDS / SCHEMA_FILE).read_text(encoding="utf-8")
    assert json.loads(published) == json.loads(schema_json()), (
        "cards/schema/concepts.schema.json is out of date: "
        ".venv/bin/python -m cds_service.terminology.concepts_file > cards/schema/concepts.schema.json"
    )


def test_the_shipped_concepts_file_is_valid_against_the_published_schema():
    schema = json.loads((CARDS / SCHEMA_FILE).read_text(encoding="utf-8"))
    data = json.loads(json.dumps(default_data(), default=str))  # TOML dates as ISO text, as in JSON
    jsonschema.validate(data, schema, format_checker=jsonschema.FormatChecker())
    data["concepts"]["diabetes"]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
