"""Concept matching and the concepts file: the codes the specification names, and only them."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

from cds_service.config import ConfigError
from cds_service.terminology.concepts_file import load_concepts

CARDS = REPO_ROOT / "cards"

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"

ALL_KINDS = ("condition", "procedure", "medication", "observation")

# EVIDENCE.md, "Codes the default mappings must recognise" (plus the shared concept list):
# (concept, system, a code that must match, checked in EVIDENCE.md)
SPECIFIED = [
    ("hemifacial_spasm", ICD10CM, "G51.3", True),
    ("hemifacial_spasm", ICD10CM, "G51.31", True),
    ("hemifacial_spasm", ICD10CM, "G51.32", True),
    ("hemifacial_spasm", ICD10CM, "G51.33", True),
    ("hemifacial_spasm", ICD10CM, "G51.39", True),
    ("hemifacial_spasm", SNOMED, "13753008", False),
    ("hypertension", ICD10CM, "I10", True),
    ("hypertension", ICD10CM, "I11.9", False),
    ("hypertension", ICD10CM, "I12.0", False),
    ("hypertension", ICD10CM, "I13.10", False),
    ("hypertension", ICD10CM, "I15.0", False),
    ("hypertension", SNOMED, "38341003", False),
    ("diabetes", ICD10CM, "E10.9", True),
    ("diabetes", ICD10CM, "E11.65", True),
    ("diabetes", SNOMED, "73211009", False),
    ("diabetes", SNOMED, "44054006", False),
    ("alcohol_use", ICD10CM, "F10.20", True),
    ("vertebral_metastasis", ICD10CM, "C79.51", True),
    ("mvd_facial_nerve", ICD10PCS, "00NM0ZZ", True),
    ("mvd_facial_nerve", CPT, "61458", False),
    ("rfa_facial_nerve", ICD10PCS, "005M3ZZ", True),
    ("btxa_chemodenervation", CPT, "64612", False),
    ("btxa_chemodenervation", HCPCS, "J0585", False),
    ("botulinum_toxin_a", HCPCS, "J0585", False),
    ("carbamazepine", RXNORM, "2002", False),
    ("vertebral_microwave_ablation", ICD10PCS, "0P543ZZ", True),
    ("vertebral_microwave_ablation", ICD10PCS, "0Q503ZZ", True),
    ("vertebral_augmentation", ICD10PCS, "0PU33JZ", True),
    ("vertebral_augmentation", ICD10PCS, "0PU43JZ", True),
    ("vertebral_augmentation", ICD10PCS, "0QU03JZ", True),
    ("vertebral_augmentation", CPT, "22513", False),
    ("vertebral_augmentation", CPT, "22514", False),
    ("vertebral_augmentation", CPT, "22515", False),
    ("pain_score", LOINC, "72514-3", False),
    ("pain_score", LOINC, "38208-5", False),
    ("house_brackmann_grade", LOCAL, "house-brackmann-grade", None),
    ("cohen_spasm_grade", LOCAL, "cohen-spasm-grade", None),
    ("amr_amplitude_preop", LOCAL, "amr-amplitude-preop", None),
    ("amr_intraop_result", LOCAL, "amr-intraop-result", None),
    ("responsible_vessel_count", LOCAL, "responsible-vessel-count", None),
    ("mri_neurovascular_contact", LOCAL, "mri-neurovascular-contact", None),
    ("daily_morphine_dose", LOCAL, "daily-morphine-dose", None),
    ("operation_time", LOCAL, "operation-time", None),
    ("cohen_response", LOCAL, "cohen-response", None),
]

SHARED_IDS = {
    "condition": {
        "hemifacial_spasm",
        "hypertension",
        "diabetes",
        "alcohol_use",
        "vertebral_metastasis",
        "vertebral_lesion_not_metastatic",
    },
    "body_site": {"spinal_structure"},
    "procedure": {
        "rfa_facial_nerve",
        "mvd_facial_nerve",
        "btxa_chemodenervation",
        "vertebral_microwave_ablation",
        "vertebral_augmentation",
    },
    "medication": {"botulinum_toxin_a", "carbamazepine", "morphine", "opioid_other"},
    "observation": {
        "pain_score",
        "house_brackmann_grade",
        "cohen_spasm_grade",
        "amr_amplitude_preop",
        "amr_intraop_result",
        "responsible_vessel_count",
        "mri_neurovascular_contact",
        "daily_morphine_dose",
        "operation_time",
        "cohen_response",
    },
}


@pytest.fixture(scope="module")
def concepts():
    return load_concepts(CARDS)


def codeable(system, code, display=None, text=None):
    coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    cc = {"coding": [coding]}
    if text is not None:
        cc["text"] = text
    return cc


def matched(concepts, cc, kinds=ALL_KINDS):
    return {m.concept for m in concepts.match_codeable(cc, kinds)}


def test_the_concepts_file_defines_exactly_the_shared_concept_ids_by_kind(concepts):
    for kind, ids in SHARED_IDS.items():
        assert set(concepts.ids(kind)) == ids


@pytest.mark.parametrize(("concept", "system", "code", "checked"), SPECIFIED)
def test_every_code_the_specification_names_matches_its_concept(concepts, concept, system, code, checked):
    kind = concepts.concept(concept).kind
    assert concept in matched(concepts, codeable(system, code), [kind])


@pytest.mark.parametrize(("concept", "system", "code", "checked"), SPECIFIED)
def test_the_checked_note_reproduces_the_specification(concepts, concept, system, code, checked):
    entries = [
        c
        for c in concepts.concept(concept).codes
        if c.system == system
        and (c.code == code or (c.prefix and code.replace(".", "").startswith(c.code.replace(".", ""))))
    ]
    assert entries, "the code is listed in the concept"
    assert entries[0].checked is checked


@pytest.mark.parametrize("code", ["G51.3", "g51.3", "G513", "g513", " G51.31", "G51.39", "g5139"])
def test_icd10_codes_match_without_dots_and_regardless_of_case(concepts, code):
    assert matched(concepts, codeable(ICD10CM, code)) == {"hemifacial_spasm"}


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (ICD10CM, "G51"),  # the parent of the family is not the family
        (ICD10CM, "G51.4"),  # facial myokymia
        (ICD10CM, "G51.0"),  # Bell's palsy
        (ICD10CM, "I1"),
        (ICD10CM, "E13.9"),  # other specified diabetes: not in the value set
        (ICD10CM, "C79.5"),
        (ICD10CM, "C79.52"),  # C79.51 is an exact code, not a family
        (SNOMED, "G51.3"),  # right code, wrong system
        ("http://hl7.org/fhir/sid/icd-10", "X99"),
        (LOINC, "8480-6"),
        (RXNORM, "20020"),
        (CPT, "6145"),
        (ICD10PCS, "00NM0Z"),
    ],
)
def test_unrelated_codes_match_nothing(concepts, system, code):
    assert matched(concepts, codeable(system, code)) == set()


def test_code_system_oids_count_as_the_system(concepts):
    assert matched(concepts, codeable("urn:oid:2.16.840.1.113883.6.90", "G51.3")) == {"hemifacial_spasm"}
    assert matched(concepts, codeable("urn:oid:2.16.840.1.113883.6.96", "38341003")) == {"hypertension"}


def test_a_match_reports_the_canonical_system_and_the_code_as_sent(concepts):
    [m] = concepts.match_codeable(codeable("urn:oid:2.16.840.1.113883.6.90", "g51.31", "HFS right"), ["condition"])
    assert (m.concept, m.system, m.code, m.display, m.by_text) == (
        "hemifacial_spasm",
        ICD10CM,
        "g51.31",
        "HFS right",
        False,
    )
    assert concepts.format_code(m.system, "G51.31") == "ICD-10-CM G51.31"


def test_kinds_filter_the_matches(concepts):
    cc = codeable(HCPCS, "J0585")
    assert matched(concepts, cc, ["procedure"]) == {"btxa_chemodenervation"}
    assert matched(concepts, cc, ["medication"]) == {"botulinum_toxin_a"}
    assert matched(concepts, codeable(ICD10CM, "G51.3"), ["procedure", "observation"]) == set()


@pytest.mark.parametrize(
    ("text", "concept"),
    [
        ("Carbamazepine 200 MG Oral Tablet", "carbamazepine"),
        ("carbamazepine ER", "carbamazepine"),
        ("Tegretol (CARBAMAZEPINE) 100mg", "carbamazepine"),
        ("OnabotulinumtoxinA 100 unit injection", "botulinum_toxin_a"),
        ("abobotulinumtoxinA (Dysport)", "botulinum_toxin_a"),
        ("incobotulinumtoxinA", "botulinum_toxin_a"),
        ("Botulinum  toxin\ttype A 50 units", "botulinum_toxin_a"),
    ],
)
def test_allowed_medication_text_matches_and_is_marked(concepts, text, concept):
    for cc in ({"text": text}, {"coding": [{"display": text}]}):
        [m] = concepts.match_codeable(cc, ["medication"])
        assert (m.concept, m.by_text, m.system, m.code) == (concept, True, None, None)


@pytest.mark.parametrize(
    "text",
    [
        "oxcarbazepine 300 mg",
        "carbamazepines",
        "rimabotulinumtoxinB",
        "botulinum toxin type B",
        "botulinum toxin type AB",
        "xonabotulinumtoxinA",
        "hemifacial spasm",
        "",
    ],
)
def test_text_matching_is_word_bounded(concepts, text):
    assert matched(concepts, {"text": text}, ["medication"]) == set()


def test_text_never_matches_conditions_procedures_or_observations(concepts):
    cc = {"text": "hemifacial spasm treated with carbamazepine; pain score; MVD"}
    assert matched(concepts, cc, ["condition", "procedure", "observation"]) == set()


def test_a_code_match_is_preferred_to_a_text_match(concepts):
    [m] = concepts.match_codeable(codeable(RXNORM, "2002", "carbamazepine"), ["medication"])
    assert m.by_text is False and m.code == "2002"


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "G51.3",
        42,
        [],
        {"coding": "G51.3"},
        {"coding": [None, 3, "x"]},
        {"coding": [{"system": ICD10CM, "code": 513}]},
        {"text": ["carbamazepine"]},
    ],
)
def test_junk_codeable_concepts_match_nothing(concepts, junk):
    assert concepts.match_codeable(junk, ALL_KINDS) == []


def test_oversized_text_is_searched_only_at_its_start(concepts):
    assert matched(concepts, {"text": "carbamazepine " + "x" * 1_000_000}, ["medication"]) == {"carbamazepine"}
    assert matched(concepts, {"text": "x " * 500_000 + "carbamazepine"}, ["medication"]) == set()


class TestAnswers:
    def test_amr_result_by_local_code_or_whole_text(self, concepts):
        persisted = {"coding": [{"system": LOCAL, "code": "amr-persisted"}]}
        assert concepts.match_answer("amr_intraop_result", persisted).value == "persisted"
        assert concepts.match_answer("amr_intraop_result", "Resolved").value == "resolved"
        assert concepts.match_answer("amr_intraop_result", {"text": " persisted. "}).value == "persisted"

    def test_text_answers_are_whole_text_so_a_negation_is_not_read_as_the_answer(self, concepts):
        assert concepts.match_answer("amr_intraop_result", "not resolved") is None
        assert concepts.match_answer("amr_intraop_result", "AMR persisted? resolved?") is None

    def test_mri_contact_by_snomed_yes_no(self, concepts):
        yes = {"coding": [{"system": SNOMED, "code": "373066001"}]}
        no = {"coding": [{"system": SNOMED, "code": "373067005"}]}
        assert concepts.match_answer("mri_neurovascular_contact", yes).value is True
        assert concepts.match_answer("mri_neurovascular_contact", no).value is False
        assert concepts.match_answer("mri_neurovascular_contact", {"coding": [{"system": SNOMED, "code": "1"}]}) is None


def test_observation_value_specs_are_content(concepts):
    pain = concepts.concept("pain_score").value
    assert (pain.kind, pain.unit, pain.low, pain.high) == ("quantity", "{score}", 0, 10)
    hb = concepts.concept("house_brackmann_grade").value
    assert (hb.kind, hb.low, hb.high) == ("ordinal", 1, 6)
    cohen = concepts.concept("cohen_spasm_grade").value
    assert (cohen.kind, cohen.low, cohen.high) == ("ordinal", 0, 4)
    assert concepts.concept("amr_amplitude_preop").value.unit == "uV"
    assert concepts.concept("daily_morphine_dose").value.unit == "mg/d"
    assert concepts.concept("operation_time").value.unit == "min"
    assert concepts.concept("responsible_vessel_count").value.kind == "count"
    assert concepts.concept("mri_neurovascular_contact").value.kind == "boolean"
    assert {a.value for a in concepts.concept("amr_intraop_result").value.answers} == {"persisted", "resolved"}


def test_code_system_short_names_for_cards(concepts):
    names = {concepts.system_name(uri) for uri in (SNOMED, LOINC, ICD10CM, ICD10PCS, CPT, HCPCS, RXNORM)}
    assert names == {"SNOMED CT", "LOINC", "ICD-10-CM", "ICD-10-PCS", "CPT", "HCPCS", "RxNorm"}
    assert concepts.local_system == LOCAL
    assert concepts.system_name("urn:example:unknown") == "urn:example:unknown"


# ------------------------------------------------------------------ site overlay
class TestSiteOverlay:
    def test_a_site_adds_local_codes_to_a_concept(self):
        overlay = {
            "concepts": {
                "hemifacial_spasm": {
                    "codes": [
                        {
                            "system": "https://hospital.example/fhir/CodeSystem/problems",
                            "code": "HFS-1",
                            "display": "HFS",
                        },
                    ]
                }
            }
        }
        concepts = load_concepts(CARDS, overlay)
        assert matched(concepts, codeable("https://hospital.example/fhir/CodeSystem/problems", "HFS-1")) == {
            "hemifacial_spasm"
        }
        # the defaults are still there
        assert matched(concepts, codeable(ICD10CM, "G51.3")) == {"hemifacial_spasm"}
        added = [c for c in concepts.concept("hemifacial_spasm").codes if c.site]
        assert [(c.code, c.checked) for c in added] == [("HFS-1", None)]

    def test_a_site_can_name_a_known_system_by_its_key_and_add_a_family(self):
        overlay = {"concepts": {"diabetes": {"codes": [{"system": "icd10cm", "code": "E13", "match": "prefix"}]}}}
        concepts = load_concepts(CARDS, overlay)
        assert matched(concepts, codeable(ICD10CM, "E13.9")) == {"diabetes"}

    def test_a_site_can_add_a_code_system_with_a_short_name(self):
        overlay = {
            "code_systems": {"hosp": {"uri": "https://hospital.example/cs", "name": "Hospital"}},
            "concepts": {"carbamazepine": {"codes": [{"system": "hosp", "code": "CBZ"}]}},
        }
        concepts = load_concepts(CARDS, overlay)
        assert concepts.format_code("https://hospital.example/cs", "CBZ") == "Hospital CBZ"
        assert matched(concepts, codeable("https://hospital.example/cs", "CBZ")) == {"carbamazepine"}

    @pytest.mark.parametrize(
        ("overlay", "message"),
        [
            ({"concepts": {"trigeminal_neuralgia": {"codes": []}}}, "no concept with this id"),
            ({"concepts": {"hypertension": {"codes": [], "text": ["high blood"]}}}, "unknown key"),
            ({"concepts": {"hypertension": {"codes": [{"system": "snowmed", "code": "1"}]}}}, "unknown code system"),
            ({"concepts": {"hypertension": {"codes": [{"system": "not a uri", "code": "1"}]}}}, "unknown code system"),
            ({"concepts": {"hypertension": {"codes": [{"system": "snomed"}]}}}, "missing code"),
            ({"concepts": {"hypertension": {"codes": [{"system": "snomed", "code": " 1"}]}}}, "surrounding blanks"),
            (
                {"concepts": {"hypertension": {"codes": [{"system": "snomed", "code": "1", "match": "prefix"}]}}},
                "ICD-10",
            ),
            ({"concepts": {"hypertension": {"codes": "I10"}}}, "must be a list"),
            ({"concepts": {"hypertension": ["I10"]}}, "must be a table"),
            ({"concepts": ["hypertension"]}, "must be a table"),
            ({"code_systems": {"snomed": {"uri": "http://x.example", "name": "X"}}}, "already defined"),
            ({"code_systems": {"x": {"uri": "http://snomed.info/sct", "name": "X"}}}, "already used"),
            ("not a table", "not a TOML table"),
        ],
    )
    def test_a_bad_overlay_stops_start_up_with_a_clear_reason(self, overlay, message):
        with pytest.raises(ConfigError, match=message):
            load_concepts(CARDS, overlay)


# ------------------------------------------------------------------ validation of the file
def write_concepts(tmp_path: Path, text: str) -> Path:
    (tmp_path / "concepts.toml").write_text(text, encoding="utf-8")
    return tmp_path


def mutated_default(tmp_path: Path, old: str, new: str) -> Path:
    text = (CARDS / "concepts.toml").read_text(encoding="utf-8")
    assert old in text
    return write_concepts(tmp_path, text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('kind = "condition"', 'kind = "diagnosis"', "kind must be one of"),
        ('label = "Hemifacial spasm"', 'label = "Hemifacial spasm"\ncolour = "red"', "unknown key"),
        ('system = "icd10cm", code = "G51.3"', 'system = "icd10", code = "G51.3"', "unknown code system"),
        (", checked = true }", " }", "checked = true/false is required"),
        ('value = "ordinal"', 'value = "grade"', "value must be one of"),
        ('unit = "min"', 'unit = "minutes of surgery"', "not a UCUM unit"),
        ("range = [1, 6]", "range = [6, 1]", "low <= high"),
        ("range = [0, 4]", "range = [0, 4.5]", "whole numbers"),
        ("[concepts.alcohol_use]", '[concepts.alcohol_use]\ntext = ["beer"]', "medications and body sites only"),
        ('uri = "http://loinc.org"', 'uri = "loinc"', "absolute URI"),
        ("[concepts.operation_time]", "[concepts.Operation-Time]", "concept id"),
        ('name = "RxNorm"', 'name = "RxNorm"\nextra = 1', "unknown key"),
    ],
)
def test_a_mistake_in_the_concepts_file_stops_start_up(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_concepts(mutated_default(tmp_path, old, new))


def test_a_concept_defined_twice_stops_start_up(tmp_path):
    text = (CARDS / "concepts.toml").read_text(encoding="utf-8")
    duplicate = text[text.index("[concepts.alcohol_use]") : text.index("[concepts.vertebral_metastasis]")]
    with pytest.raises(ConfigError, match="defined twice"):
        load_concepts(write_concepts(tmp_path, text + "\n" + duplicate))


def test_a_missing_concepts_file_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_concepts(tmp_path)


def test_the_shipped_file_is_valid_toml_a_reviewer_can_read():
    data = tomllib.loads((CARDS / "concepts.toml").read_text(encoding="utf-8"))
    for concept in data["concepts"].values():
        assert concept["label"]
        for code in concept["codes"]:
            assert code.get("display"), "every code carries the display a reviewer checks it against"


def test_a_copy_of_the_cards_folder_loads_the_same(tmp_path):
    shutil.copy(CARDS / "concepts.toml", tmp_path / "concepts.toml")
    assert set(load_concepts(tmp_path).concepts) == set(load_concepts(CARDS).concepts)
