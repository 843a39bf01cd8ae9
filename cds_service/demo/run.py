"""`cds-service demo`: the service on loopback, called as an EHR would call it.

On a fresh machine, with no other set-up: make an instance folder, generate an ES384 key
pair there and trust its public key for this run only (a trust file in the instance
folder), start the service on loopback (in this process, threaded), send signed
patient-view / order-select / order-sign calls for the bundled demo patients, print each
card readably with its evidence page URL, and keep serving until Ctrl-C so the pages stay
open.

Evidence pages: when the service's cards carry their evidence link (the render step
adds it), the demo prints that link. Until then the demo evaluates the same call itself
and saves each card's page data with the service's page store, so every card still has
its page.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from werkzeug.serving import make_server

from cds_service import hook_call
from cds_service.clinical.evaluate import CardResult, evaluate
from cds_service.clinical.evidence import page_data
from cds_service.clinical.record_build import build_record
from cds_service.clinical.render import render
from cds_service.config import load_settings
from cds_service.demo.patients import DemoCall, load_calls
from cds_service.http.app import create_app
from cds_service.http.base_url import LOOPBACK_HOSTS

ISSUER = "https://demo-ehr.cds-service.invalid"
KID = "cds-service-demo"
SERVICE_FOR_HOOK = {
    "patient-view": "hfs-outcomes-patient-view",
    "order-select": "hfs-outcomes-order-select",
    "order-sign": "hfs-outcomes-order-sign",
}
CALL_TIMEOUT_S = 30
WIDTH = 96


@dataclass
class DemoClient:
    """A CDS client (the 'EHR') with its own ES384 key."""

    private_key: ec.EllipticCurvePrivateKey

    def token(self, audience: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 120, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.private_key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


def make_trust(instance: Path) -> tuple[DemoClient, Path]:
    """A new ES384 key pair in the instance folder, and a trust file trusting its public key."""
    instance.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path = instance / "demo-ehr-key.pem"
    key_path.write_bytes(pem)
    os.chmod(key_path, 0o600)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
    (instance / "demo-ehr-jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    trust = instance / "demo-trust.toml"
    trust.write_text(
        "# Trusts the demo's own key, for `cds-service demo` only.\n"
        f'[[issuers]]\niss = "{ISSUER}"\njwks_file = "demo-ehr-jwks.json"\nalgorithms = ["ES384"]\n',
        encoding="utf-8",
    )
    return DemoClient(key), trust


def run_demo(
    host: str = "127.0.0.1",
    port: int = 8080,
    instance: Path | None = None,
    wait: bool = True,
    out: TextIO = sys.stdout,
) -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the cards, not a request log
    temporary = instance is None
    folder = Path(tempfile.mkdtemp(prefix="cds-demo-")) if instance is None else Path(instance)
    try:
        client, trust_file = make_trust(folder)
        # The environment is ignored: the demo brings everything it needs.
        # The links name the address it listens on (and loopback): see http/base_url.py.
        trusted_hosts = (host, *LOOPBACK_HOSTS)
        settings = load_settings(
            {"instance_path": folder, "trust_file": trust_file, "trusted_hosts": trusted_hosts}, environ={}
        )
        app = create_app(settings)
        try:
            server = make_server(host, port, app, threaded=True)
        except (OSError, SystemExit) as exc:  # werkzeug reports a busy port by exiting
            reason = getattr(exc, "strerror", None) or "address already in use or not available"
            print(
                f"cds-service demo: cannot listen on {host}:{port} ({reason}); "
                "another port: --port 9000, or --port 0 for any free port",
                file=sys.stderr,
            )
            return 2
        base_url = f"http://{host}:{server.server_port}"
        thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
        thread.start()
        out.write(f"CDS Hooks service running at {base_url} (instance folder {folder})\n")
        out.write(f"Discovery: {base_url}/cds-services\n\n")
        try:
            shown = 0
            for call in load_calls(hook_call.today()):
                shown += _show_call(app, base_url, client, call, out)
            if wait:
                out.write(f"{shown} cards shown. Evidence pages stay open while the demo runs.\n")
                out.write("Press Ctrl-C to stop.\n")
                out.flush()
                _wait_for_interrupt()
            else:
                out.write(f"{shown} cards shown. The demo stops now (--no-wait): its evidence pages close with it.\n")
            out.flush()
        finally:
            server.shutdown()
            app.extensions["cds_service"].store.close()
        return 0
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _show_call(app: Flask, base_url: str, client: DemoClient, call: DemoCall, out: TextIO) -> int:
    service = SERVICE_FOR_HOOK[call.hook]
    url = f"{base_url}/cds-services/{service}"
    response = requests.post(
        url,
        json=call.request(),
        headers={"Authorization": f"Bearer {client.token(url)}"},
        timeout=CALL_TIMEOUT_S,
    )
    out.write("=" * WIDTH + "\n")
    out.write(f"{call.patient_name} · {call.hook}: {call.what}\n")
    if response.status_code != 200:
        out.write(f"  the service answered {response.status_code}: {response.text[:300]}\n\n")
        return 0
    cards = response.json().get("cards", [])
    if not cards:
        out.write("  (no card)\n\n")
        return 0
    pages = _evidence_urls(app, base_url, call, cards)
    for card, page_url in zip(cards, pages):
        out.write(format_card(card, page_url))
    out.write("\n")
    out.flush()
    return len(cards)


def _evidence_urls(app: Flask, base_url: str, call: DemoCall, cards: list[dict[str, Any]]) -> list[str]:
    """Each card's evidence page: its own link when it has one, else a page made here."""
    urls = [
        next((link["url"] for link in c.get("links", []) if "/evidence/" in link.get("url", "")), "") for c in cards
    ]
    if all(urls):
        return urls
    rt = app.extensions["cds_service"]
    setup = app.extensions["evidence_pages"]
    request = call.request()
    context = request["context"]
    record = build_record(
        request["prefetch"],
        draft_orders=context.get("draftOrders"),
        selections=context.get("selections"),
        concepts=rt.concepts,
        today=hook_call.today(),
    )
    results = [r for r in (evaluate(card, record, call.hook) for card in rt.cards_for(call.hook)) if r is not None]
    by_summary: dict[str, CardResult] = {}
    for result in results:
        summary = render(result)["summary"]
        by_summary.setdefault(summary, result)
    for i, card in enumerate(cards):
        if urls[i]:
            continue
        found = by_summary.get(card["summary"]) or (results[i] if i < len(results) else None)
        if found is not None:
            token = setup.pages.save(page_data(found, setup.chart_specs, summary=card["summary"]))
            urls[i] = f"{base_url}/evidence/{token}"
    return urls


def format_card(card: dict[str, Any], page_url: str) -> str:
    """One card as plain terminal text: indicator, summary, lead, sections, links."""
    lines = [f"\n  [{card.get('indicator', 'info').upper()}] {card.get('summary', '')}"]
    detail = card.get("detail", "")
    paragraphs = [p.strip() for p in detail.split("\n\n") if p.strip()]
    lead = paragraphs[0] if paragraphs and not paragraphs[0].startswith("#") else ""
    if lead:
        lines += textwrap.wrap(_plain(lead), WIDTH - 4, initial_indent="    ", subsequent_indent="    ")
    headings = [p.splitlines()[0].lstrip("#").strip() for p in paragraphs if p.startswith("#")]
    if headings:
        lines += textwrap.wrap(
            "More in the card: " + "; ".join(headings), WIDTH - 4, initial_indent="    ", subsequent_indent="      "
        )
    source = card.get("source", {})
    if source.get("label"):
        lines.append(f"    Source: {source['label']}" + (f" <{source['url']}>" if source.get("url") else ""))
    for suggestion in card.get("suggestions", []):
        lines.append(f"    Suggestion: {suggestion.get('label', '')}")
    for link in card.get("links", []):
        # The source is printed once: its link (the same address) is not repeated.
        if "/evidence/" not in link.get("url", "") and link.get("url") != source.get("url"):
            lines.append(f"    Link: {link.get('label', '')} <{link.get('url', '')}>")
    if page_url:
        lines.append(f"    Evidence page: {page_url}")
    return "\n".join(lines) + "\n"


def _plain(markdown: str) -> str:
    text = markdown.replace("**", "").replace("\\", "")
    return " ".join(text.split())
