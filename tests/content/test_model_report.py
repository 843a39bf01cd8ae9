"""Issue 20: one report format, declared once (content/model_report.py). The writer (learn,
monitor, approve) and the readers (the service, the HTML report) use the same model, so a
written report is read, and a report the reader refuses is refused by the writer too."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError
from support.learned_reports import learned_overlay, rfa_report

from cds_service.cli import main
from cds_service.config import DEFAULT_CARDS_DIR, ConfigError
from cds_service.content.cards import load_cards
from cds_service.content.errors import ContentError
from cds_service.content.model_report import ModelReport
from cds_service.content.site_models import check_learned_models
from cds_service.learning.report import report_html, report_json


def _rfa(overlay: dict):
    return {c.id: c for c in load_cards(DEFAULT_CARDS_DIR, overlay)}["rfa-recurrence"]


def test_a_written_report_is_read_back_unchanged_by_the_service_and_the_html(tmp_path):
    written = report_json(rfa_report())
    again = ModelReport.model_validate_json(written)
    assert again.to_json() == written  # round trip, byte for byte
    site = _rfa(learned_overlay(tmp_path, json.loads(written))).site_model
    assert site.learned.approved_by == "Dr A. Reviewer" and site.learned.deployable
    page = report_html(again, None)
    for item in ("Intended use", "Intended users", "Data source", "Outcome", "Missing inputs", "Updating policy"):
        assert f"<td>{item}</td>" in page
    assert "by Dr A. Reviewer on 2026-11-27T09:00:00Z" in page


def _without(report: dict, key: str) -> dict:
    report = copy.deepcopy(report)
    del report[key]
    return report


BROKEN = {
    "no model card": lambda r: _without(r, "model_card"),
    "an undeclared field": lambda r: {**r, "extra_field": 1},
    "an unknown status": lambda r: {**r, "status": "maybe"},
    "a passed report without coefficients": lambda r: {**r, "coefficients": []},
    "a prevalence above 1": lambda r: {
        **r,
        "predictor_ranges": {"x": {"n": 3, "prevalence": 2.0}},
    },
    "an approval without a name": lambda r: {**r, "approval": {"approved_by": "", "approved_at": "now"}},
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_report_the_reader_refuses_is_refused_by_the_writer_too(tmp_path, what):
    bad = BROKEN[what](rfa_report())
    with pytest.raises(ContentError):
        _rfa(learned_overlay(tmp_path, bad))
    with pytest.raises(ValidationError):
        report_json(bad)


def test_nan_is_written_as_null_and_read(tmp_path):
    report = rfa_report()
    report["performance"] = {**report["performance"], "calibration_slope_apparent": float("nan")}
    written = json.loads(report_json(report))
    assert written["performance"]["calibration_slope_apparent"] is None
    _rfa(learned_overlay(tmp_path, written))


def test_an_unapproved_model_stops_start_up_and_approve_records_the_person(tmp_path, capsys):
    report = rfa_report()
    report["approval"] = None
    overlay = learned_overlay(tmp_path, report)
    with pytest.raises(ConfigError, match=r"rfa-recurrence.*not been approved by a person.*cds-service approve"):
        check_learned_models([_rfa(overlay)], allow_unvalidated=False)
    path = overlay["models"]["rfa-recurrence"]["report"]
    assert main(["approve", path, "--by", "Dr B. Neurosurgeon, clinical lead", "--note", "reviewed 2026-12"]) == 0
    approved = ModelReport.model_validate_json((tmp_path / "rfa-recurrence.report.json").read_text(encoding="utf-8"))
    assert approved.approval.approved_by == "Dr B. Neurosurgeon, clinical lead"
    assert approved.approval.note == "reviewed 2026-12"
    assert (tmp_path / "rfa-recurrence.report.html").read_text(encoding="utf-8").count("Dr B. Neurosurgeon") == 1
    assert check_learned_models([_rfa(overlay)], allow_unvalidated=False) == []


def test_approve_refuses_a_failed_report_and_an_unreadable_one_in_one_line(tmp_path, capsys):
    failed = tmp_path / "failed.report.json"
    failed.write_text(json.dumps(rfa_report("failed")), encoding="utf-8")
    assert main(["approve", str(failed), "--by", "Dr C"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only a model whose report passed its minimums can be approved" in err
    old = tmp_path / "old.report.json"
    old.write_text(json.dumps({**rfa_report(), "format": "hfs-cds-learned-model-report/1"}), encoding="utf-8")
    assert main(["approve", str(old), "--by", "Dr C"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a model report of this version (format" in err
