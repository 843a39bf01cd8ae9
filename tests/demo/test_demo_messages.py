"""What the demo prints: each source once, an honest last line with --no-wait, and a busy
port that says how to pick another one."""

from __future__ import annotations

import io
import socket

from cds_service.demo.run import format_card, run_demo

SOURCE = {"label": "Pain Physician 2022 (PMID 36375197)", "url": "https://pubmed.ncbi.nlm.nih.gov/36375197/"}


def test_a_card_prints_its_source_once_and_its_other_links():
    card = {
        "summary": "RFA 7 months ago",
        "indicator": "info",
        "detail": "Lead.",
        "source": SOURCE,
        "links": [
            {"label": "Evidence page", "url": "http://127.0.0.1:8080/evidence/abc", "type": "absolute"},
            {"label": "Source: " + SOURCE["label"], "url": SOURCE["url"], "type": "absolute"},
            {"label": "Guideline", "url": "https://example.org/guideline", "type": "absolute"},
        ],
    }
    text = format_card(card, "http://127.0.0.1:8080/evidence/abc")
    assert text.count(SOURCE["url"]) == 1
    assert "Link: Guideline <https://example.org/guideline>" in text


def test_a_busy_port_names_another_port_and_port_0(capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert run_demo(port=port, instance=tmp_path, wait=False, out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port 0" in err


def test_no_wait_does_not_claim_the_pages_stay_open(tmp_path):
    out = io.StringIO()
    assert run_demo(port=0, instance=tmp_path, wait=False, out=out) == 0
    last = out.getvalue().strip().splitlines()[-1]
    assert "cards shown" in last and "stay open" not in last and "close" in last
    assert "Ctrl-C" not in out.getvalue()
