"""Every card links its evidence page (type absolute) at the service's public URL, and the
primary source; the page opens with the card's sections. The as-of date (development and
demos) judges the record as of that date."""

from __future__ import annotations

import logging

import pytest
from support import error_body
from support.scenario_requests import hfs_after_mvd_patient_view

from cds_service.config import ConfigError, load_settings

SERVICE = "/cds-services/hfs-outcomes-patient-view"


def first_card(client, body: dict) -> dict:
    response = client.post(SERVICE, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"][0]


def test_a_card_links_its_evidence_page_at_the_requests_root_and_its_source(make_app):
    client = make_app().test_client()
    card = first_card(client, hfs_after_mvd_patient_view("links-1"))
    evidence, source = card["links"]
    assert evidence["type"] == "absolute" and evidence["url"].startswith("http://localhost/evidence/")
    assert source == {"label": f"Source: {card['source']['label']}", "url": card["source"]["url"], "type": "absolute"}
    page = client.get(evidence["url"].removeprefix("http://localhost"))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert card["summary"] in html and 'class="evidence-section"' in html


def test_the_public_base_url_setting_names_the_evidence_page_host(make_app):
    app = make_app(public_base_url="https://cds.example.org/base")
    card = first_card(app.test_client(), hfs_after_mvd_patient_view("links-2"))
    assert card["links"][0]["url"].startswith("https://cds.example.org/base/evidence/")


def test_an_as_of_date_judges_the_record_as_of_that_date_and_is_logged_loudly(make_app, caplog):
    with caplog.at_level(logging.WARNING):
        app = make_app(as_of_date="2025-08-10")
    assert any("AS-OF DATE" in r.getMessage() and "2025-08-10" in r.getMessage() for r in caplog.records)
    card = first_card(app.test_client(), hfs_after_mvd_patient_view("links-3"))
    # the MVD of 2025-06-10 is 2 months before the as-of date (about 17 months before today)
    assert "MVD 2 months ago" in card["summary"]


def test_an_as_of_date_that_is_not_a_date_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="as_of_date"):
        load_settings({"as_of_date": "last tuesday"}, environ={})
    assert load_settings({}, environ={}).as_of is None


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:80", "localhost.evil.example", "127.0.0.1@evil.example"]
)
def test_without_public_base_url_an_untrusted_host_gets_no_links_but_a_400(make_app, host):
    client = make_app().test_client()
    response = client.post(SERVICE, json=hfs_after_mvd_patient_view("links-host"), headers={"Host": host})
    assert response.status_code == 400
    assert error_body.code(response.get_json()) == "untrusted_host"
    assert "evil.example" not in response.get_data(as_text=True)
    assert client.get("/cds-services", headers={"Host": host}).status_code == 400


@pytest.mark.parametrize("host", ["localhost:8080", "127.0.0.1", "[::1]:9000"])
def test_without_public_base_url_loopback_hosts_are_trusted_by_default(make_app, host):
    card = first_card_with_host(make_app().test_client(), host)
    assert card["links"][0]["url"].startswith(f"http://{host}/evidence/")


def test_trusted_hosts_names_the_hosts_links_may_be_built_for(make_app):
    client = make_app(trusted_hosts="cds.example.org, .cds.example.net").test_client()
    assert first_card_with_host(client, "cds.example.org:8443")["links"][0]["url"].startswith(
        "http://cds.example.org:8443/evidence/"
    )
    assert first_card_with_host(client, "a.cds.example.net")["links"][0]["url"].startswith("http://a.cds.example.net/")
    for host in ("localhost", "evil.example", "cds.example.org.evil.example"):
        body = hfs_after_mvd_patient_view("links-host")
        assert client.post(SERVICE, json=body, headers={"Host": host}).status_code == 400


def test_with_public_base_url_the_host_header_is_never_used(make_app):
    client = make_app(public_base_url="https://cds.example.org").test_client()
    card = first_card_with_host(client, "evil.example")
    assert card["links"][0]["url"].startswith("https://cds.example.org/evidence/")


def first_card_with_host(client, host: str) -> dict:
    response = client.post(SERVICE, json=hfs_after_mvd_patient_view("links-host"), headers={"Host": host})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"][0]
