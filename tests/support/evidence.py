"""The project's evidence register (evidence/register.toml) as test data.

Card tests compare the figures a card shows with the register: each figure of a card file
must be the registered value, and a number in a card's text must be one the register
gives for that card (a figure, a published time point or P value, or a number of a cited
source's citation), so a figure typed wrong, or a number no source published, fails a test.

The register is checked against the project's clinical specification (EVIDENCE.md, beside
a developer's checkout) by tests/evidence/test_register.py when that file is there.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path

from support.paths import EVIDENCE_REGISTER, SHARED_DIR

# A number standing on its own: not part of a word or code such as "X1", "h0", "E4", "3D".
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])\d+(?:\.\d+)?(?![A-Za-z0-9]|\.\d)")
_URL = re.compile(r"<?https?://[^\s>)]+>?")


@lru_cache(maxsize=1)
def register() -> dict:
    with EVIDENCE_REGISTER.open("rb") as f:
        return tomllib.load(f)


def _card_section() -> dict[str, str]:
    return {card: entry["evidence_section"] for card, entry in register()["cards"].items()}


# Which EVIDENCE.md section (letter) each card implements, as the register says.
CARD_SECTION = _card_section()


def card_of(key: str) -> str:
    """A card id, given the card id or its EVIDENCE.md section letter."""
    if key in CARD_SECTION:
        return key
    [card] = [c for c, letter in CARD_SECTION.items() if letter == key]
    return card


def figures(card: str) -> dict[str, object]:
    """The registered figures of a card: name -> value."""
    return {f["name"]: f["value"] for f in register()["figures"] if f["card"] == card}


def unregistered(card: str, card_figures: dict[str, object]) -> dict[str, object]:
    """The figures of a card file that the register does not give with that value."""
    known = figures(card)
    return {name: value for name, value in card_figures.items() if not _same(known.get(name, _MISSING), value)}


_MISSING = object()


def _same(registered, value) -> bool:
    if isinstance(registered, str) or isinstance(value, str):
        return registered == value
    if registered is _MISSING or isinstance(registered, bool) or isinstance(value, bool):
        return False
    return math.isclose(float(registered), float(value), rel_tol=0, abs_tol=1e-12)


def numbers_in(fragment: str) -> set[str]:
    """Every stand-alone number in a text, as written and as a float repr (so that 1.0 in a
    card matches '1' or '1.0' in the register)."""
    found = set()
    for token in _NUMBER.findall(fragment):
        found.add(token)
        found.add(repr(float(token)))
    return found


def _value_numbers(value) -> set[str]:
    if isinstance(value, str):
        return numbers_in(value)
    return {repr(float(value)), repr(abs(float(value)))}


def sources_of(card: str) -> list[dict]:
    """The register's sources a card draws on: its main source and those of its figures."""
    reg = register()
    ids = {reg["cards"][card]["source"]}
    ids |= {f["source"] for f in reg["figures"] if f["card"] == card}
    ids |= {n["source"] for n in reg.get("text_numbers", []) if n["card"] == card}
    return [reg["sources"][i] for i in sorted(ids)]


@lru_cache(maxsize=16)
def numbers(key: str) -> frozenset[str]:
    """Every number the register gives for a card (by card id or section letter): its
    figures, its text numbers, and the numbers of its sources' citations and identifiers."""
    card = card_of(key)
    pool: set[str] = set()
    for value in figures(card).values():
        pool |= _value_numbers(value)
    for entry in register().get("text_numbers", []):
        if entry["card"] == card:
            pool |= _value_numbers(entry["value"])
    for source in sources_of(card):
        pool |= numbers_in(" ".join(str(source.get(k, "")) for k in ("citation", "pmid")))
    return frozenset(pool)


def published(key: str, value: float | int | str) -> bool:
    """Is this figure (as written in a card file or on a card) a number the register gives
    for the card (by card id or EVIDENCE.md section letter)?"""
    pool = numbers(key)
    if isinstance(value, str):
        return all(t in pool or repr(float(t)) in pool for t in _NUMBER.findall(value))
    return repr(float(value)) in pool or repr(abs(float(value))) in pool


def unpublished_numbers(key: str, shown: str, allowed: set[str] = frozenset()) -> set[str]:
    """Numbers in a card's text that the register does not give for the card (URLs are
    left out: their identifiers are checked with `identifier_is_cited`)."""
    pool = numbers(key) | {repr(float(a)) for a in allowed} | set(allowed)
    found = _NUMBER.findall(_URL.sub(" ", shown))
    return {t for t in found if t not in pool and repr(float(t)) not in pool}


def identifier_is_cited(url: str) -> bool:
    """A source URL is a registered source's URL, or its DOI / PubMed id is a registered one."""
    sources = register()["sources"].values()
    if any(s.get("url") == url for s in sources):
        return True
    doi = re.match(r"https://doi\.org/(.+)$", url)
    if doi:
        return any(s.get("doi", "").lower() == doi.group(1).lower() for s in sources)
    pmid = re.match(r"https://pubmed\.ncbi\.nlm\.nih\.gov/(\d+)/?$", url)
    if pmid:
        return any(s.get("pmid") == pmid.group(1) for s in sources)
    return False


# -- the clinical specification beside a developer's checkout (optional) ------------------

EVIDENCE_MD = Path(os.environ.get("HFS_EVIDENCE_MD") or SHARED_DIR / "EVIDENCE.md")
SEEDS_DIR = EVIDENCE_MD.parent / "seeds"


def specification_section(text: str, letter: str) -> str:
    """The text of '## <letter>. ...' up to the next '## ' heading of EVIDENCE.md; a longer
    name is a section by its title ("The patient's story")."""
    head = rf"{letter}\. " if len(letter) == 1 else re.escape(letter)
    match = re.search(rf"^## {head}.*?(?=^## |\Z)", text, re.S | re.M)
    if match is None:
        raise KeyError(f"EVIDENCE.md has no section {letter}")
    return match.group(0)
