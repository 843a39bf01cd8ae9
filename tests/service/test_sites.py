"""Issue 20: one service, several hospitals. Each site overlay (local codes, models) is bound
to a trusted client's issuer (trust file `site`); a call is evaluated with its own site's
overlay only, and a monitoring verdict about one site's model never touches another's."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from support.chart import CHEMODENERVATION, HYPERTENSION, Chart
from support.learned_reports import MODEL_CARD

from cds_service.config import ConfigError
from cds_service.content.model_report import build_report

ISS_A, ISS_B = "https://ehr.hospital-a.example/", "https://ehr.hospital-b.example/"
LOCAL_A = ("https://hospital-a.example/fhir/CodeSystem/problems", "HFS-A")
PATH = "/cds-services/hfs-outcomes-order-select"
COEFFICIENTS = {"hypertension": 1.766, "male_sex": 0.4, "drinking": 0.6, "diabetes": 0.5}


@pytest.fixture(scope="module")
def keys():
    return {iss: ec.generate_private_key(ec.SECP384R1()) for iss in (ISS_A, ISS_B)}


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
    for iss, site in ((ISS_A, "hospital-a"), (ISS_B, "hospital-b")):
        jwk = {**json.loads(ECAlgorithm.to_jwk(keys[iss].public_key())), "kid": site, "alg": "ES384", "use": "sig"}
        (tmp_path / f"{site}.jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
        entries.append(f'[[issuers]]\niss = "{iss}"\njwks_file = "{site}.jwks.json"\nsite = "{site}"\n')
    trust = tmp_path / "trust.toml"
    trust.write_text("\n".join(entries), encoding="utf-8")
    sites = {"hospital-a": _site_a(tmp_path / "a"), "hospital-b": _site_b(tmp_path / "b")}
    instance = tmp_path / "instance"
    app = make_app(trust_file=trust, allow_unsigned=False, site_overlays=sites, instance_path=instance)
    return app, instance


def _call(app, keys, iss: str, chart: Chart):
    now = int(time.time())
    claims = {"iss": iss, "aud": f"http://localhost{PATH}", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    kid = "hospital-a" if iss == ISS_A else "hospital-b"
    token = jwt.encode(claims, keys[iss], algorithm="ES384", headers={"kid": kid})
    response = app.test_client().post(
        PATH, json=chart.hook_request("order-select"), headers={"Authorization": f"Bearer {token}"}
    )
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


def test_the_usage_report_of_a_site_counts_its_own_clients_calls_only(served, keys):
    from cds_service.storage.report import run_report

    app, _ = served
    chart = Chart().hfs().hypertension().order(CHEMODENERVATION)
    for iss in (ISS_A, ISS_A, ISS_B):
        _call(app, keys, iss, chart)
    rt = app.extensions["cds_service"]
    url = rt.settings.resolved_database_url
    rt.close()  # the audit rows are written

    def shown(site, issuers) -> str:
        text = run_report(url, site=(site, issuers))
        return next(line.split()[1] for line in text.splitlines() if line.startswith("btxa-response"))

    assert shown("hospital-a", (ISS_A,)) == "2"
    assert shown("hospital-b", (ISS_B,)) == "1"
