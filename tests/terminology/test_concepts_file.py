"""The concepts file (cards/concepts.toml) and a site's overlay become one ConceptIndex;
a mistake stops start-up naming the file and the place; an overlay only adds codes."""

from __future__ import annotations

import pytest

from cds_service.config import DEFAULT_CARDS_DIR, ConfigError
from cds_service.terminology.concepts_file import CONCEPTS_FILE, concepts_from_data, load_concepts

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SITE = "https://site.example/fhir/CodeSystem/local"


def minimal(**concept) -> dict:
    entry = {
        "label": "Hemifacial spasm",
        "kind": "condition",
        "codes": [{"system": "icd10cm", "code": "G51.31", "display": "Hemifacial spasm, right", "checked": True}],
    }
    entry.update(concept)
    return {
        "code_systems": {"icd10cm": {"uri": ICD10CM, "name": "ICD-10-CM"}},
        "concepts": {"hemifacial_spasm": entry},
    }


def test_the_shipped_concepts_file_loads_and_knows_the_codes_of_the_specification():
    index = load_concepts(DEFAULT_CARDS_DIR)
    assert "hemifacial_spasm" in index and "carbamazepine" in index
    assert "hemifacial_spasm" in index.lookup(ICD10CM, "G51.31")
    assert index.concept("carbamazepine").kind == "medication"


def test_a_minimal_file_gives_its_concepts_by_code():
    index = concepts_from_data(minimal())
    assert index.lookup(ICD10CM, "G51.31") == ("hemifacial_spasm",)
    assert index.lookup(ICD10CM, "I10") == ()
    assert index.concept("hemifacial_spasm").label == "Hemifacial spasm"


def test_a_site_overlay_adds_its_local_codes_to_an_existing_concept():
    overlay = {
        "code_systems": {"site": {"uri": SITE, "name": "Site codes", "local": True}},
        "concepts": {"hemifacial_spasm": {"codes": [{"system": "site", "code": "HFS-1"}]}},
    }
    index = concepts_from_data(minimal(), overlay)
    assert index.lookup(SITE, "HFS-1") == ("hemifacial_spasm",)
    assert index.lookup(ICD10CM, "G51.31") == ("hemifacial_spasm",)  # the default code stays


def test_a_site_overlay_cannot_invent_a_concept():
    overlay = {"concepts": {"migraine": {"codes": [{"system": "icd10cm", "code": "G43.9"}]}}}
    with pytest.raises(ConfigError, match=r"site overlay \[concepts.migraine\]: no concept with this id"):
        concepts_from_data(minimal(), overlay)


@pytest.mark.parametrize(
    ("concept", "message"),
    [
        ({"kind": "feeling"}, r"\[concepts.hemifacial_spasm\] kind: kind must be one of"),
        ({"colour": "red"}, r"\[concepts.hemifacial_spasm\]: unknown key 'colour'"),
        ({"text": ["spasm"]}, "text patterns are allowed for medications and body sites only"),
        ({"unit": "mm"}, "unit apply to observations only"),
    ],
)
def test_a_mistake_in_a_concept_names_the_file_and_the_concept(concept, message):
    with pytest.raises(ConfigError, match=message) as refused:
        concepts_from_data(minimal(**concept), source="cards/concepts.toml")
    assert str(refused.value).startswith("cards/concepts.toml [concepts.hemifacial_spasm]")


def test_a_concepts_file_that_cannot_be_read_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the concepts file"):
        load_concepts(tmp_path)
    (tmp_path / CONCEPTS_FILE).write_text("[concepts.a]\n[concepts.a]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_concepts(tmp_path)
