"""A first run with nothing trusted says, in the log and in the README, how to call the
service: the demo, --allow-unsigned for local development, a trust file for an EHR, the
public Sandbox."""

from __future__ import annotations

import logging
from pathlib import Path

from cds_service.config import load_settings
from cds_service.security.trust import trust_from_settings

README = Path(__file__).resolve().parents[2] / "README.md"
WAYS = ("cds-service demo", "--allow-unsigned", "CDS_TRUST_FILE", "CDS_TRUST_SANDBOX")


def test_with_nothing_trusted_the_log_says_how_to_call_the_service(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        trust_from_settings(load_settings({"instance_path": tmp_path}, environ={}))
    [warning] = [r.getMessage() for r in caplog.records if "401" in r.getMessage()]
    for way in WAYS:
        assert way in warning


def test_the_readme_run_section_gives_the_same_ways():
    text = README.read_text(encoding="utf-8")
    run = text[text.index("## Run it") : text.index("## Test it")]
    for way in WAYS:
        assert way in run


def test_allow_unsigned_logs_no_such_warning(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        trust_from_settings(load_settings({"instance_path": tmp_path, "allow_unsigned": True}, environ={}))
    assert not [r for r in caplog.records if "401" in r.getMessage()]
