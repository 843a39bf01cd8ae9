"""The CDS services offered, as data (cards/services.toml): what discovery lists, and a
services file that cannot be used stops start-up with the file and the reason."""

from __future__ import annotations

import pytest

from cds_service.config import DEFAULT_CARDS_DIR, ConfigError
from cds_service.content.services import SUPPORTED_HOOKS, PrefetchTemplate, load_services, narrow_prefetch
from cds_service.terminology.concepts_file import load_concepts

SERVICES = load_services(DEFAULT_CARDS_DIR / "services.toml")


def test_one_service_per_supported_hook_each_with_the_same_prefetch():
    assert sorted(s.hook for s in SERVICES.values()) == sorted(SUPPORTED_HOOKS)
    [prefetch] = {s.prefetch for s in SERVICES.values()}
    assert [t.key for t in prefetch] == [
        "patient",
        "conditions",
        "procedures",
        "observations",
        "medicationRequests",
        "medicationStatements",
    ]
    assert {t.key for t in prefetch if t.required} == {"conditions", "procedures"}
    assert all("{{context.patientId}}" in t.query for t in prefetch)


def test_a_discovery_entry_is_the_service_with_its_prefetch_templates():
    service = SERVICES["hfs-outcomes-order-sign"]
    entry = service.discovery_entry()
    assert list(entry) == ["hook", "id", "title", "description", "prefetch", "version", "hookVersion"]
    assert (entry["hook"], entry["id"]) == ("order-sign", "hfs-outcomes-order-sign")
    assert entry["prefetch"] == {t.key: t.query for t in service.prefetch}
    assert entry["title"].strip() and entry["description"].strip()


SERVICE = '[[services]]\nid = "{id}"\nhook = "{hook}"\ntitle = "T"\ndescription = "D"\n'
PREFETCH = '[prefetch.patient]\nquery = "Patient/{{context.patientId}}"\nrequired = true\n'


def write(tmp_path, text: str):
    path = tmp_path / "services.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_services_file_gives_its_services_and_templates(tmp_path):
    services = load_services(write(tmp_path, PREFETCH + SERVICE.format(id="s1", hook="patient-view")))
    assert list(services) == ["s1"]
    assert services["s1"].prefetch == (PrefetchTemplate("patient", "Patient/{{context.patientId}}", True),)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (SERVICE.format(id="s1", hook="encounter-start"), "service s1: unsupported hook encounter-start"),
        (SERVICE.format(id="s1", hook="patient-view") * 2, "service id s1 is listed twice"),
        ("[[services]\n", r"services\.toml"),
    ],
)
def test_a_services_file_that_cannot_be_used_stops_start_up_with_the_reason(tmp_path, text, reason):
    with pytest.raises(ConfigError, match=reason):
        load_services(write(tmp_path, text))


def test_a_missing_services_file_stops_start_up_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"services\.toml"):
        load_services(tmp_path / "services.toml")


def _narrowed(overlay: dict | None = None) -> dict[str, str]:
    services = narrow_prefetch(
        load_services(DEFAULT_CARDS_DIR / "services.toml"), load_concepts(DEFAULT_CARDS_DIR, overlay)
    )
    return {t.key: t.query for t in next(iter(services.values())).prefetch}


def test_searches_that_cannot_match_by_text_ask_only_for_the_codes_read():
    queries = _narrowed()
    assert queries["observations"].startswith("Observation?patient={{context.patientId}}&combo-code=")
    assert "http://loinc.org|72514-3" in queries["observations"].split("combo-code=")[1].split(",")
    assert "|00NM0ZZ" in queries["procedures"] and "&code=" in queries["procedures"]
    # ICD-10 families (conditions) and free-text names (medications) keep the broad search.
    assert queries["conditions"] == "Condition?patient={{context.patientId}}"
    assert queries["medicationRequests"] == "MedicationRequest?patient={{context.patientId}}"


def test_a_site_overlay_code_is_asked_for_too():
    site = "https://hospital.example/fhir/CodeSystem/obs"
    overlay = {"concepts": {"pain_score": {"codes": [{"system": site, "code": "PAIN,10"}]}}}
    queries = _narrowed(overlay)
    assert f"{site}|PAIN\\%2C10" in queries["observations"]  # FHIR escapes the comma; the URL encodes it
