"""Issue 11: a site model learned by `cds-service learn` names its report; the loader reads
the report's summary, and start-up refuses a learned model whose report did not pass."""

from __future__ import annotations

import json
import logging

import pytest
from support.learned_reports import RFA_LEARNED, learned_overlay, rfa_report
from support.site_overlays import RFA_SITE

from cds_service.config import DEFAULT_CARDS_DIR, ConfigError, load_settings
from cds_service.content.cards import load_cards
from cds_service.content.errors import ContentError
from cds_service.content.site_models import check_learned_models
from cds_service.startup import build_runtime


def _rfa(overlay: dict, overlay_dir=None):
    return {c.id: c for c in load_cards(DEFAULT_CARDS_DIR, overlay, overlay_dir=overlay_dir)}["rfa-recurrence"]


def test_a_learned_model_carries_its_reports_summary_with_the_server_host_only(tmp_path):
    site = _rfa(learned_overlay(tmp_path, rfa_report())).site_model
    assert site.origin == "learned"
    learned = site.learned
    assert (learned.status, learned.patients, learned.events) == ("passed", 412, 187)
    assert (learned.c_statistic, learned.calibration_slope) == (0.74, 0.96)
    assert learned.generated_at == "2026-11-26T10:00:00Z"
    assert learned.fhir_host == "fhir.example-hospital.org"  # no user, secret, port, path or query
    assert learned.ranges["operation_time"].min == 20.0 and learned.ranges["operation_time"].max == 60.0
    assert [g.observed for g in learned.calibration_groups] == [0.40, 0.63]


def test_a_hand_typed_model_without_a_report_is_site_configured_as_before():
    site = _rfa(RFA_SITE).site_model
    assert site.origin == "site-configured" and site.learned is None
    assert check_learned_models([_rfa(RFA_SITE)], allow_unvalidated=False) == []


def test_the_report_path_is_read_relative_to_the_overlay_files_folder(tmp_path):
    overlay = learned_overlay(tmp_path, rfa_report())
    overlay["models"]["rfa-recurrence"]["report"] = "rfa-recurrence.report.json"
    assert _rfa(overlay, overlay_dir=tmp_path).site_model.learned.patients == 412


def test_a_missing_report_is_a_content_error_naming_the_card_and_the_file(tmp_path):
    overlay = learned_overlay(tmp_path, rfa_report())
    overlay["models"]["rfa-recurrence"]["report"] = str(tmp_path / "gone.json")
    with pytest.raises(ContentError, match=r"\[models.rfa-recurrence\] report .*gone.json: cannot read it"):
        _rfa(overlay)


def test_a_report_about_another_card_is_refused(tmp_path):
    with pytest.raises(ContentError, match="the report is about card 'btxa-response', not 'rfa-recurrence'"):
        _rfa(learned_overlay(tmp_path, rfa_report(card={"id": "btxa-response"})))


def test_an_overlay_whose_coefficients_differ_from_the_report_is_refused(tmp_path):
    entry = {**RFA_LEARNED, "coefficients": {"operation_time": -0.619, "paralysis_grade_after": -0.9}}
    with pytest.raises(ContentError, match=r"coefficient 'operation_time' of the overlay .* is not the report's"):
        _rfa(learned_overlay(tmp_path, rfa_report(), entry))


def test_a_refused_report_cannot_back_a_model(tmp_path):
    with pytest.raises(ContentError, match="the report says no model was fitted"):
        _rfa(learned_overlay(tmp_path, rfa_report("refused")))


def test_a_report_with_an_unknown_status_names_the_field(tmp_path):
    with pytest.raises(ContentError, match="status"):
        _rfa(learned_overlay(tmp_path, rfa_report("maybe")))


def test_a_failed_report_stops_start_up_naming_the_card_and_the_minimum(tmp_path):
    card = _rfa(learned_overlay(tmp_path, rfa_report("failed")))
    with pytest.raises(ConfigError) as caught:
        check_learned_models([card], allow_unvalidated=False)
    message = str(caught.value)
    assert "[models.rfa-recurrence]" in message and "status 'failed'" in message
    assert "C-statistic (optimism-corrected) = 0.53, needs >= 0.6" in message
    assert "allow_unvalidated_site_models" in message


def test_the_setting_allows_a_failed_model_with_a_loud_warning(tmp_path):
    card = _rfa(learned_overlay(tmp_path, rfa_report("failed")))
    warnings = check_learned_models([card], allow_unvalidated=True)
    assert len(warnings) == 1 and warnings[0].startswith("UNVALIDATED SITE MODEL IN USE")
    assert "C-statistic (optimism-corrected) = 0.53" in warnings[0]


def _site_file(tmp_path, status: str):
    report = tmp_path / "rfa-recurrence.report.json"
    report.write_text(json.dumps(rfa_report(status)), encoding="utf-8")
    entry = RFA_LEARNED
    lines = [
        "[models.rfa-recurrence]",
        f'label = "{entry["label"]}"',
        f'version = "{entry["version"]}"',
        'report = "rfa-recurrence.report.json"',
        f'reference_label = "{entry["reference_label"]}"',
        "coefficients = { operation_time = -0.55, paralysis_grade_after = -0.9 }",
        "[models.rfa-recurrence.coding.operation_time]",
        "scale = 10",
        "[models.rfa-recurrence.coding.paralysis_grade_after]",
        "scale = 1",
        "offset = 1",
        "[models.rfa-recurrence.reference]",
        "operation_time = 4.0",
        "paralysis_grade_after = 1.0",
        "[models.rfa-recurrence.baseline_survival]",
        '"12" = 0.35',
    ]
    site = tmp_path / "site.toml"
    site.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return site


def test_the_service_refuses_to_start_with_a_failed_learned_model(tmp_path):
    settings = load_settings(
        {"site_overlay": str(_site_file(tmp_path, "failed")), "instance_path": str(tmp_path)}, environ={}
    )
    with pytest.raises(ConfigError, match=r"rfa-recurrence.*status 'failed'"):
        build_runtime(settings)


def test_the_service_starts_with_a_failed_learned_model_when_allowed_and_logs_a_warning(tmp_path, caplog):
    settings = load_settings(
        {
            "site_overlay": str(_site_file(tmp_path, "failed")),
            "instance_path": str(tmp_path),
            "allow_unvalidated_site_models": "true",
        },
        environ={},
    )
    with caplog.at_level(logging.WARNING, logger="cds_service.startup"):
        runtime = build_runtime(settings)
    try:
        assert any("UNVALIDATED SITE MODEL IN USE" in r.getMessage() for r in caplog.records)
        assert next(c for c in runtime.cards if c.id == "rfa-recurrence").site_model.learned.status == "failed"
    finally:
        runtime.fhir.close()
        runtime.store.close()


def test_the_setting_defaults_to_false():
    assert load_settings({}, environ={}).allow_unvalidated_site_models is False


def test_an_estimate_text_that_uses_the_placeholder_it_fills_is_refused(tmp_path):
    import shutil

    for name in ("concepts.toml", "btxa_response.toml"):
        shutil.copy(DEFAULT_CARDS_DIR / name, tmp_path / name)
    path = tmp_path / "btxa_response.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace('estimate_by_configured = "site model"', 'estimate_by_configured = "site model {estimate_by}"'),
        encoding="utf-8",
    )
    with pytest.raises(ContentError, match=r"\[texts\] estimate_by_configured: unknown placeholder \{estimate_by\}"):
        load_cards(tmp_path)
