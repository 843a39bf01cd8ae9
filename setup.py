"""Packaging detail pyproject.toml cannot say: the clinical content is kept at the repository
root (cards/, the source of truth that clinicians review) and ships inside the package as
cds_service/cards, so a non-editable install (pip install ., a wheel) serves the same cards.
Every folder under cards/ ships with its data files (*.toml, *.json). Package data is
declared here only (a [tool.setuptools.package-data] table in pyproject.toml would replace
this one). Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

CARDS = Path(__file__).resolve().parent / "cards"
card_dirs = [CARDS, *sorted(p for p in CARDS.rglob("*") if p.is_dir() and "__pycache__" not in p.parts)]
card_packages = {
    ".".join(["cds_service", "cards", *d.relative_to(CARDS).parts]): d.relative_to(CARDS.parent).as_posix()
    for d in card_dirs
}

setup(
    packages=[*find_namespace_packages(include=["cds_service*"]), *card_packages],
    package_dir={"cds_service.cards": "cards"},
    package_data={
        "cds_service.security": ["trust_sandbox_jwks.json"],
        "cds_service.templates": ["*.j2"],
        "cds_service.demo": ["patients/*.json", "patients/*.toml"],
        "cds_service.storage.migrations": ["script.py.mako"],
        **{name: ["*.toml", "*.json"] for name in card_packages},
    },
)
