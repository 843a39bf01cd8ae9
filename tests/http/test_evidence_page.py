"""GET /evidence/<token>: the page of a saved card, a clear 404 / 410 otherwise, never a
cache or a referrer that could leak the token."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from support.chart import Chart

from cds_service.clinical.evidence import page_data
from cds_service.storage.evidence_pages import evidence_pages


@pytest.fixture
def app(make_app):
    return make_app(evidence_page_ttl_h=1)


def rfa_page(app, today: str = "2025-08-01", **chart_kw) -> str:
    setup = app.extensions["evidence_pages"]
    chart = Chart(**chart_kw).hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    result = chart.result("rfa-recurrence", "patient-view", today=today)
    return setup.pages.save(page_data(result, setup.chart_specs, summary="RFA 6 months ago: follow up"))


def test_a_saved_page_shows_its_charts_inputs_caveats_and_sources(app):
    token = rfa_page(app)
    response = app.test_client().get(f"/evidence/{token}")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert html.count("<svg") == 4  # two charts, each laid out for a desktop and for a phone
    assert html.count('class="chart-wide"') == 2 and html.count('class="chart-narrow"') == 2
    assert 'class="patient-marker"' in html and "This patient: 6 months" in html
    assert "<title id=" in html and "<desc id=" in html and "The numbers in this chart" in html
    for text in ("20.2 %", "36.4 %", "71.9 %", "0.538", "0.075"):
        assert text in html
    assert "Operation time of the RFA (X1)" in html and "45 min" in html and "performed 2025-01-10" in html
    assert "Single-centre, retrospective observational study of 99 patients" in html
    assert 'href="https://pubmed.ncbi.nlm.nih.gov/36375197/"' in html
    assert "RFA 6 months ago: follow up" in html


def test_the_page_is_responsive_printable_and_leaks_no_token(app):
    response = app.test_client().get(f"/evidence/{rfa_page(app)}")
    html = response.get_data(as_text=True)
    assert 'name="viewport"' in html and "@media (max-width" in html and "@media print" in html
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "<script" not in html


def test_an_unknown_token_gets_a_404_page(app):
    response = app.test_client().get("/evidence/" + "x" * 43)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "Evidence page not found" in response.get_data(as_text=True)


def test_a_malformed_token_gets_the_same_404_page(app):
    response = app.test_client().get("/evidence/%3Cscript%3E")
    assert response.status_code == 404
    assert "<script>" not in response.get_data(as_text=True)


def test_an_expired_page_gets_a_410_page_and_its_data_is_gone(app):
    token = rfa_page(app)
    engine = app.extensions["cds_service"].store.engine
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(evidence_pages.update().values(expires_at=past))
    app.extensions["evidence_pages"].pages.purge_expired()
    response = app.test_client().get(f"/evidence/{token}")
    assert response.status_code == 410
    html = response.get_data(as_text=True)
    assert "expired" in html and "71.9" not in html


def test_the_lifetime_setting_sets_the_expiry(app):
    token = rfa_page(app)
    found = app.extensions["evidence_pages"].pages.get(token)
    lifetime = found.expires_at - datetime.now(UTC)
    assert timedelta(minutes=59) < lifetime <= timedelta(hours=1)


def test_record_text_on_the_page_is_escaped(app):
    setup = app.extensions["evidence_pages"]
    data = {
        "title": "<b>t</b>",
        "summary": '"><script>alert(1)</script>',
        "charts": [],
        "inputs": [{"label": "<img src=x>", "status": "used", "value": "<i>", "how": "", "note": ""}],
        "caveats": [],
        "sources": [{"label": "javascript", "url": "javascript:alert(1)"}],
    }
    html = app.test_client().get(f"/evidence/{setup.pages.save(data)}").get_data(as_text=True)
    assert "<script>" not in html and "<img src=x>" not in html and 'href="javascript' not in html


def test_a_card_rendered_for_the_page_keeps_its_token_out_of_every_link_it_gives(app):
    html = app.test_client().get(f"/evidence/{rfa_page(app)}").get_data(as_text=True)
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert hrefs and all(h.startswith("https://") for h in hrefs)
    assert all('rel="noreferrer noopener"' in a for a in re.findall(r"<a [^>]+>", html))


def test_the_access_log_path_of_an_evidence_page_hides_its_token():
    from cds_service.http.evidence_page import redact_path

    assert redact_path("/evidence/abcDEF123_-xyz") == "/evidence/<token>"
    assert redact_path("/cds-services/hfs-outcomes-patient-view") == "/cds-services/hfs-outcomes-patient-view"
