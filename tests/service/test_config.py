"""Settings: embedded defaults < the TOML file named by CDS_CONFIG < CDS_* environment <
explicit overrides; a setting that cannot be used stops start-up with its name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cds_service.config import DEFAULT_CARDS_DIR, ConfigError, Settings, load_settings


def test_without_file_environment_or_overrides_the_defaults_apply():
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.fhir_time_budget_s == 2.0 and settings.fhir_max_pages == 10
    assert settings.allow_unsigned is False and settings.trust_sandbox is False
    assert settings.cards_dir == DEFAULT_CARDS_DIR and (DEFAULT_CARDS_DIR / "services.toml").is_file()


def test_the_store_defaults_to_a_sqlite_file_in_the_instance_folder(tmp_path):
    settings = load_settings({"instance_path": tmp_path / "inst"}, environ={})
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'inst' / 'cds-service.sqlite3').resolve()}"
    assert load_settings({"database_url": "postgresql://db/x"}, environ={}).resolved_database_url == (
        "postgresql://db/x"
    )


def test_file_then_environment_then_overrides_each_win_over_the_one_before(tmp_path):
    config = tmp_path / "cds.toml"
    config.write_text("fhir_time_budget_s = 3.5\nfhir_max_pages = 4\njwt_leeway_s = 5\n", encoding="utf-8")
    environ = {"CDS_CONFIG": str(config), "CDS_FHIR_MAX_PAGES": "7", "CDS_JWT_LEEWAY_S": "9"}
    settings = load_settings({"jwt_leeway_s": 11}, environ=environ)
    assert (settings.fhir_time_budget_s, settings.fhir_max_pages, settings.jwt_leeway_s) == (3.5, 7, 11)


def test_an_override_of_none_leaves_the_setting_as_it_was():
    assert load_settings({"fhir_max_pages": None}, environ={"CDS_FHIR_MAX_PAGES": "3"}).fhir_max_pages == 3


@pytest.mark.parametrize(("raw", "expected"), [("yes", True), ("ON", True), ("1", True), ("off", False), ("", False)])
def test_a_switch_in_the_environment_reads_the_usual_words(raw, expected):
    assert load_settings(environ={"CDS_ALLOW_UNSIGNED": raw}).allow_unsigned is expected


def test_a_list_in_the_environment_is_comma_separated_and_a_list_in_the_file_is_a_toml_array(tmp_path):
    environ = {"CDS_CORS_ORIGINS": " https://a.example , https://b.example ,"}
    assert load_settings(environ=environ).cors_origins == ("https://a.example", "https://b.example")
    config = tmp_path / "cds.toml"
    config.write_text('fhir_server_allowlist = ["https://ehr.example/fhir"]\n', encoding="utf-8")
    assert load_settings(environ={"CDS_CONFIG": str(config)}).fhir_server_allowlist == ("https://ehr.example/fhir",)


def test_paths_are_paths_and_an_empty_optional_path_is_none():
    settings = load_settings(environ={"CDS_TRUST_FILE": "", "CDS_SITE_OVERLAY": "site.toml"})
    assert settings.trust_file is None
    assert settings.site_overlay == Path("site.toml")


def test_database_url_is_honoured_and_the_cds_name_wins_over_it():
    assert load_settings(environ={"DATABASE_URL": "postgresql://a/x"}).database_url == "postgresql://a/x"
    environ = {"DATABASE_URL": "postgresql://a/x", "CDS_DATABASE_URL": "postgresql://b/y"}
    assert load_settings(environ=environ).database_url == "postgresql://b/y"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CDS_ALLOW_UNSIGNED": "perhaps"}, "setting allow_unsigned: cannot read 'perhaps'"),
        ({"CDS_FHIR_MAX_PAGES": "ten"}, "setting fhir_max_pages: cannot read 'ten'"),
        ({"CDS_FHIR_TIME_BUDGET_S": "0"}, "fhir_time_budget_s must be positive"),
        ({"CDS_FHIR_MAX_PAGES": "0"}, "fhir_max_pages must be at least 1"),
    ],
)
def test_a_setting_that_cannot_be_used_is_a_start_up_error_naming_it(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_an_unknown_setting_in_the_file_is_refused_by_name(tmp_path):
    config = tmp_path / "cds.toml"
    config.write_text("fhir_time_budget = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown settings \['fhir_time_budget'\]"):
        load_settings(environ={"CDS_CONFIG": str(config)})


@pytest.mark.parametrize("content", [None, "fhir_max_pages = = 3"])
def test_a_config_file_that_cannot_be_read_is_a_start_up_error_naming_it(tmp_path, content):
    config = tmp_path / "cds.toml"
    if content is not None:
        config.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"config file {config}")):
        load_settings({"config": str(config)}, environ={})


def test_settings_cannot_be_changed_once_loaded():
    settings = load_settings(environ={})
    with pytest.raises(ValidationError, match="frozen"):
        settings.allow_unsigned = True  # type: ignore[misc]
