"""`cds-service demo` end to end: a subprocess on loopback signs its own calls, prints a
card of every type with its evidence page URL, keeps the pages open, stops on Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import date, timedelta

import requests
from support.served import free_port

from cds_service.demo.patients import load_calls, shift_dates

DEADLINE_S = 90


def read_lines(process: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def output_until(lines: queue.Queue, marker: str, deadline: float) -> str:
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError("the demo did not get to " + repr(marker) + ":\n" + "".join(seen))


def test_the_demo_shows_a_card_of_every_type_with_an_open_evidence_page_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "DATABASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "demo", "--port", str(port), "--instance", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        text = output_until(read_lines(process), "Press Ctrl-C to stop.", time.monotonic() + DEADLINE_S)
        assert "allow_unsigned" not in text and "DEVELOPMENT MODE" not in text  # signed calls only
        assert (tmp_path / "demo" / "demo-trust.toml").exists()
        urls = re.findall(r"Evidence page: (http://127\.0\.0\.1:\d+/evidence/[A-Za-z0-9_-]+)", text)
        summaries = re.findall(r"\[(?:INFO|WARNING|CRITICAL)\] (.+)", text)
        assert len(urls) == len(summaries) >= 11
        # card E's situations: after MVD (patient-view) and a revision MVD being signed
        # demo-mvd-revision has two MVDs before the order: a third MVD, for which Park's figures
        # are for first revisions (EVIDENCE.md "The patient's story", revision orders)
        assert any(x.startswith("Third or later MVD ordered: Park 2019's figures") for x in summaries)
        sources = " ".join(re.findall(r"Source: (.+)", text))
        for source in ("36375197", "FOCUS25327", "38312606", "ajnr.A7415", "wneu.2019.07.191"):
            assert source in sources or source in text
        titles = set()
        for url in urls:
            page = requests.get(url, timeout=10)
            assert page.status_code == 200
            assert "<svg" in page.text
            titles.add(re.search(r"<h1>(.+?)</h1>", page.text).group(1))
        assert len(titles) == 5  # every card type
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_demo_patients_are_moved_to_today_so_they_never_go_stale():
    today = date.today()
    calls = {c.patient_id: c for c in load_calls(today)}
    rfa = next(r for r in calls["demo-rfa-followup"].chart if r["resourceType"] == "Procedure")
    performed = date.fromisoformat(rfa["performedPeriod"]["start"][:10])
    assert timedelta(days=200) < today - performed < timedelta(days=240)
    assert rfa["performedPeriod"]["start"].endswith("T08:00:00Z")  # the time of day is kept


def test_order_calls_carry_their_draft_orders_and_selections():
    calls = load_calls(date.today())
    select = next(c for c in calls if c.hook == "order-select")
    request = select.request()
    drafts = request["context"]["draftOrders"]["entry"]
    assert drafts and request["context"]["selections"] == [
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in drafts
    ]
    assert all(r.get("status") != "draft" for r in select.chart)
    view = next(c for c in calls if c.hook == "patient-view").request()
    assert "draftOrders" not in view["context"]


def test_shifting_moves_dates_and_datetimes_and_nothing_else():
    moved = shift_dates(
        {"a": "2025-01-31", "b": "2025-01-31T10:00:00+02:00", "c": "G51.31", "d": ["2024-12-31"], "e": 5},
        timedelta(days=1),
    )
    assert moved == {"a": "2025-02-01", "b": "2025-02-01T10:00:00+02:00", "c": "G51.31", "d": ["2025-01-01"], "e": 5}
