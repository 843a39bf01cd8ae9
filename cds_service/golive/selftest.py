"""`cds-service selftest --against URL [--trust FILE]`: play the EHR against a running
service (this one, or a deployment behind its proxy) and print a conformance report.

Checks (each PASS or FAIL, with the exchange that decided it):
- discovery: 200, every service with hook, id, description, prefetch, `version`, `hookVersion`;
- every hook: a call with the demo patient of that hook, fully prefetched: 200 and cards
  in CDS Hooks shape;
- the FHIR fallback: the same call without prefetch, against a FHIR server this tool starts
  on loopback (the demo patient, one resource per page): 200 and the service read it;
- paging: a prefetched search whose first page names a `next` page on that server;
- a FHIR token the FHIR server refuses: a 412 OperationOutcome or cards that say so;
- signed calls (with `--trust`): a signed call passes; unsigned, wrong `aud`, replayed `jti`,
  expired and year-long tokens are refused with a bare 401 (without `--trust`, a malformed
  token must be refused and the calls go unsigned, so the service must be in development
  mode);
- error bodies: 400 (not JSON), 404 (unknown service), 415 (not JSON media type), 412 (no
  prefetch, no fhirServer) answer FHIR OperationOutcomes, the 412 naming the prefetch key.

`--trust FILE` is a TOML file: `iss = "..."`, `jwks_file = "private-jwks.json"` (a JWK Set
holding the private key to sign with; relative to the file), optional `kid`, `alg`.
Exit status 0 when every check passes, 1 otherwise, 2 when the tool itself cannot run.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from jwt.algorithms import get_default_algorithms

from cds_service.config import ConfigError
from cds_service.demo.patients import DemoCall, load_calls

TIMEOUT_S = 20.0
FHIR_TOKEN = "selftest-fhir-token"
_INDICATORS = {"info", "warning", "critical"}
_EXCERPT = 300


@dataclass
class Check:
    name: str
    passed: bool
    exchange: str
    note: str = ""


@dataclass
class Signer:
    iss: str
    key: Any
    kid: str
    alg: str

    def token(self, aud: str, **claims: int | None) -> str:
        now = int(time.time())
        body: dict[str, str | int | None] = {
            "iss": self.iss,
            "aud": aud,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})


def load_signer(path: Path) -> Signer:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        jwks_path = Path(data["jwks_file"])
        if not jwks_path.is_absolute():
            jwks_path = Path(path).parent / jwks_path
        jwks = json.loads(jwks_path.read_text(encoding="utf-8"))
        jwk = next(k for k in jwks["keys"] if "d" in k and (data.get("kid") in (None, k.get("kid"))))
    except (OSError, KeyError, StopIteration, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"trust file {path}: needs iss and jwks_file with a private key ({type(exc).__name__})"
        ) from None
    alg = data.get("alg") or jwk.get("alg") or ("ES384" if jwk.get("kty") == "EC" else "RS384")
    key = get_default_algorithms()[alg].from_jwk(json.dumps(jwk))
    return Signer(iss=str(data["iss"]), key=key, kid=str(jwk.get("kid", "")), alg=alg)


# ---------------------------------------------------------------------------- FHIR server
class DemoFhirServer:
    """A loopback FHIR server holding the demo patients: reads, `Type?patient=id` searches
    with one resource per page (so paging is exercised), Bearer FHIR_TOKEN required."""

    def __init__(self, calls: list[DemoCall], host: str = "127.0.0.1", port: int = 0) -> None:
        self.resources: dict[str, list[dict[str, Any]]] = {}
        for call in calls:
            self.resources.setdefault(call.patient_id, list(call.chart))
        self.seen: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.seen.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {FHIR_TOKEN}":
                    self._send(
                        401, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}
                    )
                    return
                self._send(*server.answer(self.path))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        segments = parts.path.removeprefix("/fhir/").split("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if len(segments) == 2:  # read
            kind, ident = segments
            for chart in self.resources.values():
                for resource in chart:
                    if resource["resourceType"] == kind and resource.get("id") == ident:
                        return 200, resource
            return 404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
        kind = segments[0]
        patient = query.get("patient", "").removeprefix("Patient/")
        matches = [r for r in self.resources.get(patient, []) if r["resourceType"] == kind]
        return 200, self.page(kind, patient, matches, int(query.get("_page", "0")))

    def page(self, kind: str, patient: str, matches: list[dict[str, Any]], index: int) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"resource": r} for r in matches[index : index + 1]],
        }
        if index + 1 < len(matches):
            bundle["link"] = [
                {"relation": "next", "url": f"{self.base_url}/{kind}?patient={patient}&_page={index + 1}"}
            ]
        return bundle

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------- the run
@dataclass
class SelfTest:
    base_url: str
    signer: Signer | None = None
    verify: bool | str = True
    fhir_host: str = "127.0.0.1"
    checks: list[Check] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False

    # -- HTTP
    def headers(self, path: str, **claims: int | None) -> dict[str, str]:
        if self.signer is None:
            return {}
        return {"Authorization": "Bearer " + self.signer.token(self.base_url + path, **claims)}

    def send(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[requests.Response | None, str]:
        try:
            response = self.session.request(
                method, self.base_url + path, headers=headers, timeout=TIMEOUT_S, verify=self.verify, **kw
            )
        except requests.RequestException as exc:
            return None, f"{method} {path} -> no answer ({type(exc).__name__})"
        body = response.text[:_EXCERPT].replace("\n", " ")
        return response, f"{method} {path} -> {response.status_code} {body}"

    def record(self, name: str, passed: bool, exchange: str, note: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), exchange, note))
        return bool(passed)

    # -- checks
    def run(self) -> list[Check]:
        calls = load_calls(datetime.now(UTC).date())
        services = self.discovery()
        fhir = DemoFhirServer(calls, host=self.fhir_host)
        try:
            for service in services:
                call = next((c for c in calls if c.hook == service.get("hook")), None)
                if call is None:
                    self.record(f"hook {service.get('id')}", False, "", "no demo patient for this hook")
                    continue
                self.hook_call(service["id"], call)
                self.fhir_fallback(service["id"], call, fhir)
            patient_view = next((s["id"] for s in services if s.get("hook") == "patient-view"), None)
            pv_call = next((c for c in calls if c.hook == "patient-view"), None)
            if patient_view and pv_call:
                self.paging(patient_view, pv_call, fhir)
                self.refused_fhir_token(patient_view, pv_call, fhir)
                self.client_tokens(patient_view, pv_call)
                self.error_bodies(patient_view, pv_call)
        finally:
            fhir.close()
        return self.checks

    def discovery(self) -> list[dict[str, Any]]:
        response, exchange = self.send("GET", "/cds-services", headers=self.headers("/cds-services"))
        if response is None or response.status_code != 200:
            self.record("discovery", False, exchange)
            return []
        try:
            services = response.json()["services"]
        except (ValueError, KeyError, TypeError):
            self.record("discovery", False, exchange, "not a discovery response")
            return []
        shaped = bool(
            isinstance(services, list)
            and services
            and all(
                isinstance(s, dict) and all(isinstance(s.get(k), str) and s[k] for k in ("hook", "id", "description"))
                for s in services
            )
        )
        self.record("discovery", shaped, exchange)
        versioned = bool(shaped) and all(s.get("version") and s.get("hookVersion") for s in services)
        self.record("discovery: version and hookVersion (CDS Hooks 3.0.0-ballot)", versioned, exchange)
        return services if shaped else []

    def _call(
        self, service_id: str, body: dict[str, Any], **claims: int | None
    ) -> tuple[requests.Response | None, str]:
        path = f"/cds-services/{service_id}"
        return self.send("POST", path, json=body, headers=self.headers(path, **claims))

    def hook_call(self, service_id: str, call: DemoCall) -> None:
        response, exchange = self._call(service_id, call.request())
        ok, why = _cards_ok(response)
        self.record(f"hook {service_id}: prefetched call answers cards", ok, exchange, why)

    def fhir_fallback(self, service_id: str, call: DemoCall, fhir: DemoFhirServer) -> None:
        body = call.request()
        body.pop("prefetch")
        body["fhirServer"] = fhir.base_url
        body["fhirAuthorization"] = _authorization(FHIR_TOKEN, call.patient_id)
        before = len(fhir.seen)
        response, exchange = self._call(service_id, body)
        ok, why = _cards_ok(response)
        read = len(fhir.seen) > before
        self.record(
            f"hook {service_id}: FHIR fallback (no prefetch)",
            ok and read,
            exchange,
            why or ("" if read else "the service did not read the FHIR server"),
        )

    def paging(self, service_id: str, call: DemoCall, fhir: DemoFhirServer) -> None:
        body = call.request()
        conditions = [r for r in call.chart if r["resourceType"] == "Condition"]
        body["prefetch"]["conditions"] = fhir.page("Condition", call.patient_id, conditions, 0)
        body["fhirServer"] = fhir.base_url
        body["fhirAuthorization"] = _authorization(FHIR_TOKEN, call.patient_id)
        before = len(fhir.seen)
        response, exchange = self._call(service_id, body)
        ok, why = _cards_ok(response)
        followed = any("_page=" in p for p in fhir.seen[before:]) or len(conditions) < 2
        self.record("paging: a prefetched first page's next link is followed", ok and followed, exchange, why)

    def refused_fhir_token(self, service_id: str, call: DemoCall, fhir: DemoFhirServer) -> None:
        body = call.request()
        body.pop("prefetch")
        body["fhirServer"] = fhir.base_url
        body["fhirAuthorization"] = _authorization("not-the-token", call.patient_id)
        response, exchange = self._call(service_id, body)
        ok = response is not None and (
            (response.status_code == 412 and _is_outcome(response))
            or (response.status_code == 200 and "could not be retrieved" in response.text)
        )
        self.record("a FHIR token the FHIR server refuses: 412 OperationOutcome or said on the cards", ok, exchange)

    def client_tokens(self, service_id: str, call: DemoCall) -> None:
        path = f"/cds-services/{service_id}"
        if self.signer is None:
            response, exchange = self.send("POST", path, json=call.request(), headers={"Authorization": "Bearer x.y.z"})
            self.record("a malformed client token is refused (bare 401)", _bare_401(response), exchange)
            return
        response, exchange = self.send("POST", path, json=call.request())
        self.record("an unsigned call is refused (bare 401)", _bare_401(response), exchange)
        wrong = {"Authorization": "Bearer " + self.signer.token(self.base_url + "/cds-services/other")}
        response, exchange = self.send("POST", path, json=call.request(), headers=wrong)
        self.record("a token for another endpoint (aud) is refused", _bare_401(response), exchange)
        headers = self.headers(path)
        first, _ = self.send("POST", path, json=call.request(), headers=headers)
        response, exchange = self.send("POST", path, json=call.request(), headers=headers)
        self.record(
            "a replayed token (same jti) is refused",
            first is not None and first.status_code == 200 and _bare_401(response),
            exchange,
        )
        now = int(time.time())
        expired = self.headers(path, iat=now - 900, exp=now - 600)
        response, exchange = self.send("POST", path, json=call.request(), headers=expired)
        self.record("an expired token is refused", _bare_401(response), exchange)
        year = self.headers(path, exp=now + 365 * 24 * 3600)
        response, exchange = self.send("POST", path, json=call.request(), headers=year)
        self.record("a token valid for a year is refused (maximum lifetime)", _bare_401(response), exchange)

    def error_bodies(self, service_id: str, call: DemoCall) -> None:
        path = f"/cds-services/{service_id}"
        response, exchange = self.send(
            "POST", path, data="{not json", headers={**self.headers(path), "Content-Type": "application/json"}
        )
        self.record("400 for a body that is not JSON, as an OperationOutcome", _outcome(response, 400), exchange)
        unknown = "/cds-services/selftest-no-such-service"
        response, exchange = self.send("POST", unknown, json=call.request(), headers=self.headers(unknown))
        self.record("404 for an unknown service, as an OperationOutcome", _outcome(response, 404), exchange)
        response, exchange = self.send(
            "POST", path, data="hook=patient-view", headers={**self.headers(path), "Content-Type": "text/plain"}
        )
        self.record("415 for a body that is not JSON media, as an OperationOutcome", _outcome(response, 415), exchange)
        body = call.request()
        body.pop("prefetch")
        response, exchange = self._call(service_id, body)
        names_key = False
        if response is not None and _outcome(response, 412):
            issue = response.json()["issue"][0]
            names_key = bool(issue.get("diagnostics")) and any(
                e.startswith("prefetch.") for e in issue.get("expression", [])
            )
        self.record("412 without prefetch or fhirServer names the prefetch key", names_key, exchange)


def _authorization(token: str, patient_id: str) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service-selftest",
        "patient": patient_id,
    }


def _is_outcome(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" and bool(body.get("issue"))


def _outcome(response: requests.Response | None, status: int) -> bool:
    return response is not None and response.status_code == status and _is_outcome(response)


def _bare_401(response: requests.Response | None) -> bool:
    if response is None or response.status_code != 401:
        return False
    try:
        return bool(response.json() == {"error": "unauthorized"})
    except ValueError:
        return False


def _cards_ok(response: requests.Response | None) -> tuple[bool, str]:
    if response is None:
        return False, "no answer"
    if response.status_code != 200:
        return False, f"status {response.status_code}"
    try:
        cards = response.json()["cards"]
    except (ValueError, KeyError, TypeError):
        return False, "not a CDS Hooks response"
    if not isinstance(cards, list) or not cards:
        return False, "no card for the demo patient of this hook"
    for card in cards:
        if not isinstance(card, dict):
            return False, "a card is not an object"
        summary = card.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 140:
            return False, "a card's summary is missing or longer than 140 characters"
        if card.get("indicator") not in _INDICATORS:
            return False, "a card's indicator is not info, warning or critical"
        if not isinstance(card.get("source"), dict) or not card["source"].get("label"):
            return False, "a card has no source label"
        if not isinstance(card.get("uuid"), str):
            return False, "a card has no uuid"
    return True, ""


def report(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'PASS' if check.passed else 'FAIL'}  {check.name}" + (f" ({check.note})" if check.note else ""))
        if check.exchange:
            lines.append(f"      {check.exchange}")
    failed = sum(not c.passed for c in checks)
    lines.append(f"{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)


def run(against: str, trust: Path | None, ca_file: str | None = None, fhir_host: str = "127.0.0.1") -> int:
    signer = load_signer(trust) if trust else None
    test = SelfTest(against, signer=signer, verify=ca_file or True, fhir_host=fhir_host)
    checks = test.run()
    print(report(checks))
    return 0 if checks and all(c.passed for c in checks) else 1
