"""Packaging detail pyproject.toml cannot say: the clinical content is kept at the repository
root (cards/, the source of truth that clinicians review) and ships inside the package as
cds_service/cards, so a non-editable install (pip install ., a wheel) serves the same cards.
Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["cds_service*"]), "cds_service.cards", "cds_service.cards.schema"],
    package_dir={"cds_service.cards": "cards"},
)
