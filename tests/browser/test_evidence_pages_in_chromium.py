"""The evidence page of every card type and situation, served by the real app on loopback
and loaded in a real headless Chromium (DevTools protocol), on a desktop (1000 px) and a
phone (390 px): formatted text (no Markdown markers left, Markdown tables as tables),
charts whose labels neither overlap nor get cut (bounding boxes from the browser), no chart
text under 11 px on the phone, text colours that pass WCAG AA, the patient marked where
the figure applies. One browser and one tab for the module. Screenshots are kept as test
artifacts (CDS_BROWSER_ARTIFACTS, else tests/browser/artifacts, ignored by git); the
desktop screenshot of the RFA page is docs/evidence-page.png (regenerated here)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from support.browser import Browser, chromium_path
from support.chart import Chart, all_cards
from support.evidence_scenarios import scenarios
from support.learned_reports import learned_overlay, rfa_report
from werkzeug.serving import make_server

from cds_service.clinical.evidence import page_data
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.chart_specs import load_chart_specs
from cds_service.http.app import create_app

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="no chromium (scripts/test installs it)")

HERE = Path(__file__).resolve().parent
SCREENSHOT = HERE.parents[1] / "docs" / "evidence-page.png"
SCENARIOS = scenarios()
SIZES = {"desktop": (1000, 900, False), "phone": (390, 844, True)}

# What the patient marker shows on each page where the figure applies.
MARKERS = {
    "rfa-after": "This patient: 6 months",
    "rfa-past-last-point": "past the last published point",
    "amr-after-mvd": "This patient: 2 months",
    "mvd-spasm-free": "This patient: 3.0 years",
    "btxa-order": "This patient: yes",
    "mwa-pain": "latest pain score: 7/10",
}

# One pass over the page in the browser: everything the tests check, measured at once.
MEASURE = r"""
(() => {
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const svgs = [...document.querySelectorAll('svg.chart')].filter(visible);
  const charts = svgs.map(svg => {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim());
    return {
      title: svg.querySelector('title').textContent,
      width: box.width,
      drawn: svg.querySelectorAll('circle.point, g.ratio, g.count').length,
      labels: texts.map(t => {
        const r = t.getBoundingClientRect();
        return {text: t.textContent, x0: r.left, y0: r.top, x1: r.right, y1: r.bottom,
                px: parseFloat(getComputedStyle(t).fontSize) * Math.hypot(t.getScreenCTM().a, t.getScreenCTM().b),
                fill: t.getAttribute('fill') || getComputedStyle(t).fill};
      }),
      box: {x0: box.left, y0: box.top, x1: box.right, y1: box.bottom},
      markers: [...svg.querySelectorAll('.patient-marker')].map(m => m.textContent),
    };
  });
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll('svg, style').forEach(e => e.remove());
  // colours of the page's own text (not the charts') against their backgrounds
  const colours = [];
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
    }
    return 'rgb(255, 255, 255)';
  };
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('svg') || !visible(el)) continue;
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    colours.push({tag: el.tagName, color: getComputedStyle(el).color, background: background(el)});
  }
  return {
    charts, colours,
    text: document.querySelector('main').innerText,
    mdTables: document.querySelectorAll('.md table').length,
    mdPipes: [...document.querySelectorAll('.md')].some(e => /\|\s*-{3}/.test(e.innerText)),
    scrollWidth: document.documentElement.scrollWidth,
    inputs: document.querySelector('#inputs').innerText,
  };
})()
"""


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
def artifacts() -> Path:
    folder = Path(os.environ.get("CDS_BROWSER_ARTIFACTS") or HERE / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def urls(served) -> dict[str, tuple[str, dict]]:
    """Every scenario's page, saved once: name -> (url, page data)."""
    app, base = served
    setup = app.extensions["evidence_pages"]
    out = {}
    for name, scenario in SCENARIOS.items():
        data = page_data(scenario.result(), setup.chart_specs)
        out[name] = (f"{base}/evidence/{setup.pages.save(data)}", data)
    return out


def contrast(foreground: str, background: str) -> float:
    def channels(colour: str) -> list[float]:
        if colour.startswith("#"):
            return [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        return [int(float(c)) / 255 for c in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]]

    def luminance(colour: str) -> float:
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels(colour)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def overlapping(labels: list[dict]) -> list[tuple[str, str]]:
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            if (
                min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > 0.5
                and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > 0.5
            ):
                pairs.append((a["text"], b["text"]))
    return pairs


def check_page(page: dict, data: dict, width: int, size: str) -> None:
    """What every page must be, measured by MEASURE."""
    # formatted text: no Markdown markers left, Markdown tables as tables
    for marker in ("**", "|---", "| ---"):
        assert marker not in page["text"], marker
    assert not any(line.lstrip().startswith(("- ", "# ", "## ", "### ")) for line in page["text"].splitlines())
    if any("|" in s["body"] for s in data["sections"]):
        assert page["mdTables"] > 0 and not page["mdPipes"]
    assert page["scrollWidth"] <= width  # no sideways scrolling

    # the charts: one visible drawing each, titled, labels inside and apart
    assert len(page["charts"]) == len(data["charts"]) >= 1
    for chart in page["charts"]:
        assert chart["title"] and chart["drawn"] >= 1 and 0 < chart["width"] <= width
        assert overlapping(chart["labels"]) == [], chart["title"]
        box = chart["box"]
        cut = [
            t["text"]
            for t in chart["labels"]
            if t["x0"] < box["x0"] - 0.5
            or t["x1"] > box["x1"] + 0.5
            or t["y0"] < box["y0"] - 0.5
            or t["y1"] > box["y1"] + 0.5
        ]
        assert cut == [], chart["title"]
        for label in chart["labels"]:
            assert contrast(label["fill"], "#ffffff") >= 4.5, label
        if size == "phone":
            small = [(t["text"], round(t["px"], 1)) for t in chart["labels"] if t["px"] < 11]
            assert small == [], chart["title"]
    for item in page["colours"]:
        assert contrast(item["color"], item["background"]) >= 4.5, item


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_page_reads_cleanly_and_its_charts_fit_on_a_desktop_and_a_phone(name, size, urls, browser, artifacts):
    url, data = urls[name]
    width, height, mobile = SIZES[size]
    browser.open(url, width=width, height=height, mobile=mobile)
    page = browser.evaluate(MEASURE)
    check_page(page, data, width, size)

    # the patient, marked where the figure applies
    markers = " ".join(m for c in page["charts"] for m in c["markers"])
    if name in MARKERS:
        assert MARKERS[name] in markers, markers
    if name in ("mvd-spasm-back", "mvd-revision-ordered", "mvd-after-revision", "amr-order"):
        assert "No patient mark" in page["text"]
    if name == "mvd-spasm-back":
        assert "Outcomes of revision MVD" in page["text"] and markers == ""

    shot = browser.screenshot(artifacts / f"{name}-{size}.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if name == "rfa-after" and size == "desktop":
        shutil.copyfile(shot, SCREENSHOT)  # the README's picture is what the service shows


@pytest.mark.parametrize("size", list(SIZES))
def test_a_site_models_calibration_chart_fits_too(size, served, browser, artifacts, tmp_path):
    app, base = served
    overlay = learned_overlay(tmp_path, rfa_report())
    result = Chart.from_bundle("hfs_after_rfa.json").result(
        "rfa-recurrence", "patient-view", "2025-06-01", overlay=overlay
    )
    data = page_data(result, load_chart_specs(DEFAULT_CARDS_DIR, all_cards(overlay)))
    assert any(c["kind"] == "calibration" for c in data["charts"])
    width, height, mobile = SIZES[size]
    browser.open(f"{base}/evidence/{app.extensions['evidence_pages'].pages.save(data)}", width, height, mobile)
    check_page(browser.evaluate(MEASURE), data, width, size)
    browser.screenshot(artifacts / f"rfa-site-model-{size}.png")


def test_the_page_prints_with_the_source_addresses_written_out(urls, browser, artifacts):
    browser.open(urls["amr-after-mvd"][0])
    browser.send("Emulation.setEmulatedMedia", {"media": "print"}, browser.session)
    assert browser.evaluate("getComputedStyle(document.querySelector('.url')).display") != "none"
    pdf = browser.pdf(artifacts / "amr-persistence.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_an_unknown_link_shows_a_clear_not_found_page(served, browser):
    _app, base = served
    browser.open(f"{base}/evidence/{'Q' * 43}")
    assert browser.evaluate("document.querySelector('h1').textContent") == "Evidence page not found"
