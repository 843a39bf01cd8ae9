"""The evidence register (evidence/register.toml): complete for the cards, and, when the
clinical specification is beside the checkout, faithful to it.

The first group always runs. The second compares the register with EVIDENCE.md (and the
seed documents beside it): it is skipped, with the reason, in a clone without ../shared.
"""

from __future__ import annotations

import re
import tomllib

import pytest
from support import evidence

from cds_service.config import DEFAULT_CARDS_DIR

REGISTER = evidence.register()
CARD_FILES = {
    tomllib.loads(p.read_text(encoding="utf-8"))["id"]: tomllib.loads(p.read_text(encoding="utf-8"))
    for p in sorted(DEFAULT_CARDS_DIR.glob("*.toml"))
    if p.name not in ("concepts.toml", "services.toml")
}


def _normalised(text: str) -> str:
    return " ".join(text.split())


# -- the register on its own ------------------------------------------------------------------


def test_the_register_names_every_card_and_only_the_cards():
    assert set(REGISTER["cards"]) == set(CARD_FILES)


@pytest.mark.parametrize("card_id", sorted(CARD_FILES))
def test_every_figure_of_the_card_file_is_registered_and_every_registered_figure_is_in_the_card(card_id):
    registered = evidence.figures(card_id)
    assert set(registered) == set(CARD_FILES[card_id]["figures"])
    assert evidence.unregistered(card_id, CARD_FILES[card_id]["figures"]) == {}


def test_each_figure_is_registered_once():
    keys = [(f["card"], f["name"]) for f in REGISTER["figures"]]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("entry", REGISTER["figures"] + REGISTER["text_numbers"], ids=lambda e: f"{e['card']}")
def test_every_entry_has_its_source_where_it_stands_and_the_sources_words(entry):
    assert entry["source"] in REGISTER["sources"]
    assert entry["where"].strip() and entry["quote"].strip()
    if "name" in entry:
        assert "unit" in entry


@pytest.mark.parametrize("source_id", sorted(REGISTER["sources"]))
def test_every_source_has_a_citation_a_section_and_a_seed_or_a_note_why_not(source_id):
    source = REGISTER["sources"][source_id]
    assert source["citation"].strip()
    assert source["evidence_section"] in set(evidence.CARD_SECTION.values())
    assert ("seed" in source) != ("seed_note" in source)


@pytest.mark.parametrize(
    "entry",
    [f for f in REGISTER["figures"] if not isinstance(f["value"], str)],
    ids=lambda e: f"{e['card']}.{e['name']}",
)
def test_a_numeric_figure_is_in_its_quote_unless_it_is_derived(entry):
    """A figure the source states is in the quoted words (as written there: 21.70 or
    21.0 for 21.7 or 21.0); a derived one says how it was derived."""
    if "derived" in entry:
        assert entry["derived"].strip()
        return
    quoted = {float(t) for t in re.findall(r"\d+(?:\.\d+)?", entry["quote"])}
    words = {"Three": 3.0, "Nineteen": 19.0}
    quoted |= {v for w, v in words.items() if w in entry["quote"]}
    assert abs(float(entry["value"])) in quoted, entry


# -- the register against the clinical specification (EVIDENCE.md and its seeds) ---------------

needs_specification = pytest.mark.skipif(
    not evidence.EVIDENCE_MD.is_file(),
    reason=(
        f"the clinical specification is not beside this checkout ({evidence.EVIDENCE_MD} not found; "
        "set HFS_EVIDENCE_MD to its path to compare the evidence register with it)"
    ),
)


@pytest.fixture(scope="module")
def specification() -> str:
    return evidence.EVIDENCE_MD.read_text(encoding="utf-8")


def _section_of(entry: dict) -> str:
    return REGISTER["sources"][entry["source"]]["evidence_section"]


@needs_specification
def test_every_registered_figure_appears_in_its_evidence_md_section(specification):
    missing = []
    for entry in REGISTER["figures"]:
        pool = evidence.numbers_in(evidence.specification_section(specification, _section_of(entry)))
        value = entry["value"]
        tokens = evidence._NUMBER.findall(value) if isinstance(value, str) else [repr(abs(float(value)))]
        if any(t not in pool and repr(float(t)) not in pool for t in tokens):
            missing.append(f"{entry['card']}.{entry['name']} = {value!r} (section {_section_of(entry)})")
    assert missing == []


@needs_specification
def test_every_card_is_registered_under_the_evidence_md_section_of_its_source(specification):
    for card, entry in REGISTER["cards"].items():
        letter = entry["evidence_section"]
        assert REGISTER["sources"][entry["source"]]["evidence_section"] == letter, card
        evidence.specification_section(specification, letter)  # the section exists


@needs_specification
def test_every_registered_text_number_appears_in_its_evidence_md_section(specification):
    missing = [
        f"{entry['card']}: {entry['value']} ({entry['meaning']})"
        for entry in REGISTER["text_numbers"]
        if repr(float(entry["value"]))
        not in evidence.numbers_in(evidence.specification_section(specification, _section_of(entry)))
    ]
    assert missing == []


@needs_specification
def test_every_quote_is_the_sources_own_words_in_its_seed_or_in_evidence_md(specification):
    not_found = []
    for entry in REGISTER["figures"] + REGISTER["text_numbers"]:
        source = REGISTER["sources"][entry["source"]]
        if entry["where"].startswith("EVIDENCE.md") or "seed" not in source:
            where, text = "EVIDENCE.md", specification
        else:
            seed = evidence.SEEDS_DIR / source["seed"]
            if not seed.is_file():
                not_found.append(f"seed {source['seed']} missing beside EVIDENCE.md")
                continue
            where, text = source["seed"], seed.read_text(encoding="utf-8")
        if _normalised(entry["quote"]) not in _normalised(text):
            not_found.append(f"{entry['card']}.{entry.get('name', entry.get('value'))}: quote not in {where}")
    assert not_found == []


@needs_specification
def test_every_source_is_the_one_its_evidence_md_section_names(specification):
    wrong = []
    for source_id, source in REGISTER["sources"].items():
        # its card's section, and any other section that gives its identifiers (`also_in`)
        names = [source["evidence_section"], *source.get("also_in", [])]
        section = "\n".join(evidence.specification_section(specification, n) for n in names).lower()
        for key in ("seed", "doi", "pmid"):
            if key in source and source[key].lower() not in section:
                wrong.append(f"{source_id}.{key}")
    assert wrong == []
