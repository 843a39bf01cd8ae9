"""The evidence page of each card type, served by the real app on loopback and loaded in a
real headless Chromium (DevTools protocol): the charts are drawn with the patient's
marker, the inputs are listed, the page fits a phone and prints. Screenshots are kept
as test artifacts (CDS_BROWSER_ARTIFACTS, else the pytest tmp folder)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support.browser import Browser, chromium_path
from support.chart import BONE_METASTASIS, CHEMODENERVATION, HYPERTENSION, Chart
from werkzeug.serving import make_server

from cds_service.clinical.evidence import page_data
from cds_service.http.app import create_app

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="no chromium (scripts/test installs it)")

TODAY = "2025-08-01"


def scenarios() -> dict:
    rfa = Chart().hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    amr = Chart().hfs(onset="2018-01-01").mvd("2025-06-01T08:00:00Z", "2025-06-01T11:00:00Z")
    amr.local_observation("amr-intraop-result", "2025-06-01T10:30:00Z", valueString="persisted")
    mvd = Chart().hfs(onset="2015-01-01").mvd("2022-08-01T08:00:00Z").condition(HYPERTENSION, onset="2010-01-01")
    btxa = Chart().hfs().condition(HYPERTENSION, onset="2015-06-01").order(CHEMODENERVATION)
    mwa = Chart().condition(BONE_METASTASIS, onset="2025-01-01").pain("2025-07-20T09:00:00Z", 7)
    return {
        # card id: (chart, hook, number of charts, text the patient marker shows, an input value shown)
        "rfa-recurrence": (rfa, "patient-view", 2, "This patient: 6 months", "45 min"),
        "amr-persistence": (amr, "patient-view", 1, "This patient: 2 months", "persisted"),
        "mvd-recurrence": (mvd, "patient-view", 1, "This patient: 3.0 years", "yes (active)"),
        "btxa-response": (btxa, "order-select", 1, "yes (active)", "yes (active)"),
        "spinal-metastasis-mwa": (mwa, "patient-view", 2, "latest pain score: 7/10", "7/10"),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    app = create_app(instance_path=tmp_path_factory.mktemp("instance"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    app.extensions["cds_service"].store.close()


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("CDS_BROWSER_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("browser-screenshots")


def page_url(served, card_id: str) -> str:
    app, base = served
    chart, hook, *_ = scenarios()[card_id]
    result = chart.result(card_id, hook, today=TODAY)
    assert result is not None
    setup = app.extensions["evidence_pages"]
    return f"{base}/evidence/{setup.pages.save(page_data(result, setup.chart_specs))}"


@pytest.mark.parametrize("card_id", list(scenarios()))
def test_the_evidence_page_of_each_card_type_draws_its_charts_with_the_patient_marked(
    card_id, served, browser, artifacts
):
    _chart, _hook, charts, marker_text, input_value = scenarios()[card_id]
    browser.open(page_url(served, card_id), width=1000, height=900)
    svgs = browser.evaluate(
        """[...document.querySelectorAll('svg.chart')].map(s => ({
            width: s.getBoundingClientRect().width,
            title: s.querySelector('title') && s.querySelector('title').textContent,
            desc: s.querySelector('desc') && s.querySelector('desc').textContent,
            drawn: s.querySelectorAll('circle.point, g.ratio').length}))"""
    )
    assert len(svgs) == charts
    for svg in svgs:
        assert svg["width"] > 300 and svg["title"] and svg["desc"] and svg["drawn"] >= 1
    markers = browser.evaluate(
        """[...document.querySelectorAll('svg .patient-marker')].map(m => ({
            text: m.textContent, area: m.getBoundingClientRect().width * m.getBoundingClientRect().height}))"""
    )
    assert any(marker_text in m["text"] and m["area"] > 0 for m in markers), markers
    if card_id == "amr-persistence":  # and the series of the patient's recorded AMR result stands out
        highlighted = browser.evaluate(
            "[...document.querySelectorAll('g.series[data-highlight=true]')].map(g => g.dataset.label)"
        )
        assert highlighted == ["AMR persisted"]
    inputs = browser.evaluate("document.querySelector('#inputs').innerText")
    assert input_value in inputs
    tables = browser.evaluate("document.querySelectorAll('.data-table table').length")
    assert tables == charts
    shot = browser.screenshot(artifacts / f"{card_id}-desktop.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.parametrize("card_id", ["rfa-recurrence", "spinal-metastasis-mwa"])
def test_the_page_fits_a_phone_screen_without_sideways_scrolling(card_id, served, browser, artifacts):
    browser.open(page_url(served, card_id), width=390, height=844, mobile=True)
    assert browser.evaluate("document.documentElement.scrollWidth") <= 390
    widths = browser.evaluate("[...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().width)")
    assert widths and all(0 < w <= 390 for w in widths)
    # the inputs table turns into one block per input on a phone
    assert browser.evaluate("getComputedStyle(document.querySelector('table.inputs thead')).display") == "none"
    browser.screenshot(artifacts / f"{card_id}-phone.png")


def test_the_page_prints_with_the_source_addresses_written_out(served, browser, artifacts):
    browser.open(page_url(served, "amr-persistence"))
    browser.send("Emulation.setEmulatedMedia", {"media": "print"}, browser.session)
    assert browser.evaluate("getComputedStyle(document.querySelector('.url')).display") != "none"
    pdf = browser.pdf(artifacts / "amr-persistence.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_an_unknown_link_shows_a_clear_not_found_page(served, browser):
    _app, base = served
    browser.open(f"{base}/evidence/{'Q' * 43}")
    assert browser.evaluate("document.querySelector('h1').textContent") == "Evidence page not found"
