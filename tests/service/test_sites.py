"""Issue 20: one service, several hospitals. Each site overlay (local codes, models) is bound
to a trusted client's issuer (trust file `site`); a call is evaluated with its own site's
overlay only, and a monitoring verdict about one site's model never touches another's. The
site is kept in each audit row and feedback row, so reports are per site whichever issuer or
tenant is bound to it, and a site's client cannot send feedback about another site's card."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from support.chart import CHEMODENERVATION, HYPERTENSION, Chart
from support.learned_reports import MODEL_CARD

from cds_service.cli import main
from cds_service.config import ConfigError
from cds_service.content.model_report import build_report
from cds_service.storage.feedback import FeedbackEntry

ISS_A, ISS_B = "https://ehr.hospital-a.example/", "https://ehr.hospital-b.example/"
# One EHR vendor's cloud serving both hospitals: bound per tenant.
ISS_CLOUD, TENANT_A, TENANT_B = "https://ehr-cloud.example/", "tenant-a", "tenant-b"
KID = {ISS_A: "hospital-a", ISS_B: "hospital-b", ISS_CLOUD: "cloud"}
LOCAL_A = ("https://hospital-a.example/fhir/CodeSystem/problems", "HFS-A")
PATH = "/cds-services/hfs-outcomes-order-select"
COEFFICIENTS = {"hypertension": 1.766, "male_sex": 0.4, "drinking": 0.6, "diabetes": 0.5}


@pytest.fixture(scope="module")
def keys():
    return {iss: ec.generate_private_key(ec.SECP384R1()) for iss in (ISS_A, ISS_B, ISS_CLOUD)}


def _site_a(folder) -> str:
    """Hospital A: a local HFS code and an approved BTX-A model."""
    folder.mkdir(parents=True, exist_ok=True)
    report = build_report(
        {
            "status": "passed",
            "card": {"id": "btxa-response"},
            "model": {"kind": "logistic", "outcome": "poor response", "label": "Hospital A BTX-A", "version": "a1"},
            "model_card": MODEL_CARD,
            "counts": {"included": 500, "events": 120},
            "provenance": {"fhir_server": "https://fhir.hospital-a.example/fhir", "generated_at": "2026-01-01"},
            "coefficients": [{"predictor": k, "estimate": v} for k, v in COEFFICIENTS.items()],
            "intercept": {"estimate": -2.3},
            "performance": {"c_statistic_optimism_corrected": 0.7, "calibration_slope_optimism_corrected": 1.0},
            "approval": {"approved_by": "Dr A", "approved_at": "2026-01-02T00:00:00Z"},
        }
    )
    (folder / "btxa.report.json").write_text(report.to_json(), encoding="utf-8")
    coefficients = ", ".join(f"{k} = {v}" for k, v in COEFFICIENTS.items())
    (folder / "site.toml").write_text(
        f'[concepts.hemifacial_spasm]\ncodes = [ {{ system = "{LOCAL_A[0]}", code = "{LOCAL_A[1]}" }} ]\n\n'
        '[models.btxa-response]\nlabel = "Hospital A BTX-A"\nversion = "a1"\nreport = "btxa.report.json"\n'
        f"coefficients = {{ {coefficients} }}\nintercept = -2.3\n",
        encoding="utf-8",
    )
    return str(folder / "site.toml")


def _site_b(folder) -> str:
    """Hospital B: no local codes, no model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.toml").write_text("# hospital B uses the shipped content only\n", encoding="utf-8")
    return str(folder / "site.toml")


@pytest.fixture
def served(tmp_path, keys, make_app):
    entries = []
    by_tenant = f'{{ "{TENANT_A}" = "hospital-a", "{TENANT_B}" = "hospital-b" }}'
    for iss, site in ((ISS_A, '"hospital-a"'), (ISS_B, '"hospital-b"'), (ISS_CLOUD, by_tenant)):
        kid = KID[iss]
        jwk = {**json.loads(ECAlgorithm.to_jwk(keys[iss].public_key())), "kid": kid, "alg": "ES384", "use": "sig"}
        (tmp_path / f"{kid}.jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        entries.append(f'[[issuers]]\niss = "{iss}"\njwks_file = "{kid}.jwks.json"\nsite = {site}\n')
    trust = tmp_path / "trust.toml"
    trust.write_text("\n".join(entries), encoding="utf-8")
    sites = {"hospital-a": _site_a(tmp_path / "a"), "hospital-b": _site_b(tmp_path / "b")}
    instance = tmp_path / "instance"
    app = make_app(trust_file=trust, allow_unsigned=False, site_overlays=sites, instance_path=instance)
    return app, instance


def _auth(keys, iss: str, tenant: str | None = None) -> dict:
    now = int(time.time())
    claims = {"iss": iss, "aud": f"http://localhost{PATH}", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    if tenant is not None:
        claims["tenant"] = tenant
    token = jwt.encode(claims, keys[iss], algorithm="ES384", headers={"kid": KID[iss]})
    return {"Authorization": f"Bearer {token}"}


def _call(app, keys, iss: str, chart: Chart, tenant: str | None = None):
    response = app.test_client().post(PATH, json=chart.hook_request("order-select"), headers=_auth(keys, iss, tenant))
    assert response.status_code == 200, response.get_data(as_text=True)
    return [c for c in response.get_json()["cards"] if c["summary"].startswith("Botulinum")]


def test_each_hospital_sees_its_own_model_and_local_codes_only(served, keys):
    app, _ = served
    shipped = Chart().hfs().hypertension().order(CHEMODENERVATION)
    (a,) = _call(app, keys, ISS_A, shipped)
    (b,) = _call(app, keys, ISS_B, shipped)
    assert "site model" in a["summary"] and "site model" not in b["summary"]
    # hospital A's local HFS code means HFS for hospital A only
    local = Chart().condition(LOCAL_A, onset="2019-03-01").condition(HYPERTENSION, onset="2015-06-01")
    local = local.order(CHEMODENERVATION)
    assert len(_call(app, keys, ISS_A, local)) == 1
    assert _call(app, keys, ISS_B, local) == []


def test_a_verdict_on_one_hospitals_model_retires_it_there_only(served, keys):
    app, instance = served
    folder = instance / "monitoring" / "hospital-a"
    folder.mkdir(parents=True)
    verdict = {
        "model": {"label": "Hospital A BTX-A", "version": "a1"},
        "status": "retired",
        "reason": "Hospital A BTX-A a1 retired by monitoring: drift.",
    }
    (folder / "btxa-response.json").write_text(json.dumps(verdict), encoding="utf-8")
    (a,) = _call(app, keys, ISS_A, Chart().hfs().hypertension().order(CHEMODENERVATION))
    assert "site model" not in a["summary"] and verdict["reason"] in a["detail"]
    # the same verdict file name at the top level (the shared content's) is not hospital A's
    assert not (instance / "monitoring" / "btxa-response.json").exists()


def test_a_client_bound_to_an_unconfigured_site_stops_start_up(tmp_path, keys, make_app):
    trust = tmp_path / "trust.toml"
    jwk = {**json.loads(ECAlgorithm.to_jwk(keys[ISS_A].public_key())), "kid": "k", "alg": "ES384"}
    trust.write_text(f'[[issuers]]\niss = "{ISS_A}"\njwks = \'{json.dumps({"keys": [jwk]})}\'\nsite = "nowhere"\n')
    with pytest.raises(ConfigError, match="bound to site 'nowhere', which is not in site_overlays"):
        make_app(trust_file=trust, allow_unsigned=False)


def test_the_usage_report_of_a_site_counts_its_own_calls_whichever_client_or_tenant_made_them(
    served, keys, tmp_path, capsys
):
    from cds_service.storage.report import run_report
    from cds_service.storage.usage import clinician_usage

    app, _ = served
    chart = Chart().hfs().hypertension().order(CHEMODENERVATION)
    for iss, tenant in ((ISS_A, None), (ISS_A, None), (ISS_CLOUD, TENANT_A), (ISS_B, None), (ISS_CLOUD, TENANT_B)):
        _call(app, keys, iss, chart, tenant)
    rt = app.extensions["cds_service"]
    assert rt.store.flush_audit(5)
    with rt.store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT client_iss, site FROM service_calls ORDER BY id").all()
    # the site of each call is in its audit row: the cloud's calls went to the tenant's site
    assert [site for _iss, site in stored] == ["hospital-a"] * 3 + ["hospital-b"] * 2
    rows, _alarms = clinician_usage(rt.store, site="hospital-a")
    assert {(r.client, r.fired) for r in rows if r.card_id == "btxa-response"} == {(ISS_A, 2), (ISS_CLOUD, 1)}
    url = rt.settings.resolved_database_url
    rt.close()

    def shown(site) -> str:
        text = run_report(url, site=site)
        assert text.startswith(f"Site: {site}\n") and "Hook calls: " in text
        return next(line.split()[1] for line in text.splitlines() if line.startswith("btxa-response"))

    assert shown("hospital-a") == "3"
    assert shown("hospital-b") == "2"
    assert "btxa-response" not in run_report(url, site="hospital-c")  # a site with no calls

    # the command line: the site is checked against site_overlays, no trust file needed
    config = tmp_path / "settings.toml"
    overlays = rt.settings.site_overlays
    config.write_text(
        "[site_overlays]\n" + "".join(f'{name} = "{path}"\n' for name, path in overlays.items()), encoding="utf-8"
    )
    assert main(["report", "--config", str(config), "--database-url", url, "--site", "hospital-b", "--monthly"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Site: hospital-b\n") and ISS_CLOUD in out and ISS_A not in out
    assert main(["report", "--config", str(config), "--database-url", url, "--site", "hospital-c"]) == 2


def _feedback(app, keys, iss: str, card_uuid: str, tenant: str | None = None):
    entry = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-01-15T10:05:31Z"}
    return app.test_client().post(f"{PATH}/feedback", json={"feedback": [entry]}, headers=_auth(keys, iss, tenant))


def test_feedback_on_a_card_returned_at_another_site_is_refused_as_if_it_had_never_been_returned(served, keys):
    app, _ = served
    chart = Chart().hfs().hypertension().order(CHEMODENERVATION)
    (card_a,) = _call(app, keys, ISS_A, chart)
    rt = app.extensions["cds_service"]
    assert rt.store.flush_audit(5)

    elsewhere = _feedback(app, keys, ISS_B, card_a["uuid"])
    never = _feedback(app, keys, ISS_B, str(uuid.uuid4()))
    assert elsewhere.status_code == never.status_code == 400
    assert elsewhere.get_json()["resourceType"] == "OperationOutcome"
    assert elsewhere.get_json() == never.get_json()  # nothing says the card exists at hospital A
    assert "hospital-a" not in elsewhere.get_data(as_text=True)
    # the same for the other tenant of the cloud issuer; its hospital A tenant may
    assert _feedback(app, keys, ISS_CLOUD, card_a["uuid"], TENANT_B).get_json() == never.get_json()
    assert rt.store.feedback_for(card_a["uuid"]) == []

    assert _feedback(app, keys, ISS_CLOUD, card_a["uuid"], TENANT_A).get_json() == {"accepted": 1}
    assert _feedback(app, keys, ISS_A, card_a["uuid"]).get_json() == {"accepted": 1}
    assert [f.site for f in rt.store.feedback_for(card_a["uuid"])] == ["hospital-a", "hospital-a"]
    [card] = [c for c in rt.store.usage_report(site="hospital-a").cards if c.card_id == "btxa-response"]
    assert (card.shown, card.overridden) == (1, 2)
    assert not [c for c in rt.store.usage_report(site="hospital-b").cards if c.card_id == "btxa-response"]


def test_feedback_from_another_site_never_counts_for_a_card_even_if_stored(served, keys):
    """A client of the shared content (no site) may still send feedback about any uuid (kept
    as unlinked feedback, the single-site contract); about a site's card it is not counted."""
    app, _ = served
    (card_a,) = _call(app, keys, ISS_A, Chart().hfs().hypertension().order(CHEMODENERVATION))
    rt = app.extensions["cds_service"]
    assert rt.store.flush_audit(5)
    shared = FeedbackEntry(card_a["uuid"], "overridden", (), None, None, datetime.now(UTC))
    rt.store.record_feedback("hfs-outcomes-order-select", [shared], site=None)
    for site in ("hospital-a", None):
        report = rt.store.usage_report(site=site)
        assert [c.overridden for c in report.cards if c.card_id == "btxa-response"] == [0]
    assert rt.store.usage_report().unlinked_feedback == 1
