"""The clinical specification (EVIDENCE.md) as test data.

Card tests compare the figures a card shows with the numbers EVIDENCE.md gives for that
card's section, so a figure typed wrong in a card file, or a number no source published,
fails a test. The file is read from $HFS_EVIDENCE_MD, else /work/shared/EVIDENCE.md; the
seeds (source documents) from the `seeds/` folder beside it.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import pytest

from support.paths import SHARED_DIR

EVIDENCE_MD = Path(os.environ.get("HFS_EVIDENCE_MD", SHARED_DIR / "EVIDENCE.md"))
SEEDS_DIR = EVIDENCE_MD.parent / "seeds"

# Which EVIDENCE.md section each card implements.
CARD_SECTION = {
    "rfa-recurrence": "A",
    "amr-persistence": "B",
    "btxa-response": "C",
    "spinal-metastasis-mwa": "D",
    "mvd-recurrence": "E",
}

# A number standing on its own: not part of a word or code such as "X1", "h0", "E4", "3D".
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])\d+(?:\.\d+)?(?![A-Za-z0-9]|\.\d)")
_URL = re.compile(r"<?https?://[^\s>)]+>?")


@lru_cache(maxsize=1)
def text() -> str:
    if not EVIDENCE_MD.exists():
        pytest.fail(f"{EVIDENCE_MD} not available (set HFS_EVIDENCE_MD)", pytrace=False)
    return EVIDENCE_MD.read_text(encoding="utf-8")


@lru_cache(maxsize=8)
def section(letter: str) -> str:
    """The text of '## <letter>. ...' up to the next '## ' heading."""
    match = re.search(rf"^## {letter}\. .*?(?=^## )", text(), re.S | re.M)
    if match is None:
        raise KeyError(f"EVIDENCE.md has no section {letter}")
    return match.group(0)


def numbers_in(fragment: str) -> set[str]:
    """Every stand-alone number in a text, normalised ('21.0' and '21' both kept as written,
    plus their float value as a repr) so that 1.0 in a card matches '1.0 %' in the text."""
    found = set()
    for token in _NUMBER.findall(fragment):
        found.add(token)
        found.add(repr(float(token)))
    return found


@lru_cache(maxsize=8)
def numbers(letter: str) -> frozenset[str]:
    """Every number of a card's section of EVIDENCE.md."""
    return frozenset(numbers_in(section(letter)))


def published(letter: str, value: float | int | str) -> bool:
    """Is this figure (as written in a card file) a number EVIDENCE.md gives in the section?"""
    pool = numbers(letter)
    if isinstance(value, str):
        return all(t in pool for t in _NUMBER.findall(value))
    token = repr(float(value))
    return token in pool or repr(abs(float(value))) in pool


def unpublished_numbers(letter: str, shown: str, allowed: set[str] = frozenset()) -> set[str]:
    """Numbers in a card's text that the section does not give (URLs are left out: their
    identifiers are checked against the specification and seeds separately)."""
    pool = numbers(letter) | {repr(float(a)) for a in allowed} | set(allowed)
    found = _NUMBER.findall(_URL.sub(" ", shown))
    return {t for t in found if t not in pool and repr(float(t)) not in pool}


@lru_cache(maxsize=1)
def seeds_text() -> str:
    if not SEEDS_DIR.is_dir():
        return ""
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(SEEDS_DIR.glob("*.txt")))


def identifier_is_cited(url: str) -> bool:
    """A source URL's DOI or PubMed id (or the whole URL) appears in EVIDENCE.md or a seed."""
    corpus = text() + "\n" + seeds_text()
    doi = re.match(r"https://doi\.org/(.+)$", url)
    if doi:
        return doi.group(1).lower() in corpus.lower()
    pmid = re.match(r"https://pubmed\.ncbi\.nlm\.nih\.gov/(\d+)/?$", url)
    if pmid:
        return re.search(rf"(PMID:?\s*|^){pmid.group(1)}\b", corpus, re.M) is not None
    return url in corpus
