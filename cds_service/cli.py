"""Console entry point: `cds-service serve` (gunicorn), `report`, `db upgrade`, `audit prune`,
`demo` and `learn`.

Every mistake an operator can make at start-up (settings, trust file, instance folder,
database URL, database unreachable or missing) ends with one line on stderr
(`cds-service: ...`) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds_service.config import ConfigError, check_instance_folder, load_settings
from cds_service.storage.engine import StoreError

if TYPE_CHECKING:
    from flask import Flask

    from cds_service.config import Settings
    from cds_service.learning.monitor import MonitorOptions
    from cds_service.security.smart_backend import BackendTokenSource, StaticBearer
    from cds_service.storage.store import Store

# What argparse's add_subparsers() returns (typeshed names it with a leading underscore).
_Commands = argparse._SubParsersAction

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the CDS Hooks service with gunicorn")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    serve.add_argument(
        "--threads", type=int, default=None, help="threads per worker (default: setting http_threads, 4)"
    )
    serve.add_argument("--instance", help="instance folder for local state (default ./instance)")
    serve.add_argument("--config", help="TOML settings file (else CDS_CONFIG)")
    serve.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="DEVELOPMENT ONLY: accept CDS calls without a signed JWT",
    )

    report = commands.add_parser("report", help="per-card usage, acceptance and override rates")
    report.add_argument("--database-url", help="store URL (default: the configured store)")
    report.add_argument("--instance", help="instance folder (default ./instance)")
    report.add_argument("--config", help="TOML settings file (else CDS_CONFIG)")
    report.add_argument("--site", help="a multi-site deployment: this site's clients only (trust file `site`)")
    report.add_argument(
        "--monthly",
        action="store_true",
        help="also per card x situation x client x month: firing per 100 hook calls, acceptance, override (by "
        "reason) and evidence-page open rates, and an alarm when a firing or override rate jumps",
    )

    demo = commands.add_parser("demo", help="run the service with demo patients and print their cards")
    demo.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    demo.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port, 0 for any free one (default {DEFAULT_PORT})"
    )
    demo.add_argument("--instance", help="instance folder (default: a temporary folder, removed at the end)")
    demo.add_argument("--no-wait", action="store_true", help="stop after printing the cards (no Ctrl-C needed)")
    db = commands.add_parser("db", help="the store's schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the store's schema to this version (Alembic)")
    _store_arguments(upgrade)

    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    prune = audit_commands.add_parser("prune", help="delete audit rows older than audit_retention_days")
    _store_arguments(prune)
    prune.add_argument("--days", type=int, help="retention in days (default: the setting audit_retention_days)")
    _add_learn_parser(commands)
    _add_monitor_parser(commands)
    approve = commands.add_parser(
        "approve",
        help="record that you reviewed a site model's report and approve its deployment",
        description="Sets the report's approval (who, when, an optional note) and rewrites its HTML. The service "
        "does not start with a learned model whose report nobody approved.",
    )
    approve.add_argument("report", help="the model's <card>.report.json")
    approve.add_argument("--by", required=True, help="your name and role, as it should stand in the model card")
    approve.add_argument("--note", help="a note kept with the approval")
    cover = commands.add_parser(
        "coverage",
        help="list the site's codes the concepts miss (patients with HFS or a bone metastasis) and draft an overlay",
    )
    cover.add_argument("--fhir-server", required=True, help="FHIR base URL of the site's server")
    cover.add_argument("--group", help="read one Group's patients (Group/<id>/$export) instead of the system")
    cover.add_argument("--out", default=".", help="folder for coverage.txt and coverage.overlay.toml (default .)")
    cover.add_argument("--site-overlay", help="site overlay whose local codes already count (default: configured)")
    cover.add_argument("--config", help="TOML settings file (else CDS_CONFIG)")
    cover.add_argument("--max-wait", type=float, default=3600.0, help="bound on the export wait, seconds")
    cover.add_argument("--no-bulk", action="store_true", help="use paged searches even if $export is offered")
    _add_fhir_auth_arguments(cover)
    selftest_parser = commands.add_parser(
        "selftest", help="play the EHR against a running service and print a conformance report"
    )
    selftest_parser.add_argument("--against", required=True, help="the service's base URL (or its proxy's)")
    selftest_parser.add_argument("--trust", help="TOML: iss and jwks_file (a private JWK Set) to sign the calls with")
    selftest_parser.add_argument("--ca-file", help="CA bundle for an https service with a private certificate")
    selftest_parser.add_argument(
        "--fhir-host", default="127.0.0.1", help="address of the FHIR server selftest starts (default 127.0.0.1)"
    )

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "db":
            return _db_upgrade(args)
        if args.command == "audit":
            return _audit_prune(args)
        if args.command == "learn":
            return _learn(args)
        if args.command == "approve":
            return _approve(args)
        if args.command == "monitor":
            return _monitor(args)
        if args.command == "coverage":
            return _coverage(args)
        if args.command == "selftest":
            from cds_service.golive import selftest

            trust = Path(args.trust) if args.trust else None
            return selftest.run(args.against, trust, args.ca_file, args.fhir_host)
        return _report(args)
    except (ConfigError, StoreError) as exc:
        print(f"cds-service: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # anything the checks above did not foresee, still without a traceback
        print(f"cds-service: {exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="store URL (default: the configured store)")
    parser.add_argument("--instance", help="instance folder (default ./instance)")
    parser.add_argument("--config", help="TOML settings file (else CDS_CONFIG)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"config": args.config}
    if args.instance:
        overrides["instance_path"] = args.instance
    if getattr(args, "allow_unsigned", False):
        overrides["allow_unsigned"] = True
    if getattr(args, "threads", None):
        overrides["http_threads"] = args.threads
    return overrides


def _serve(args: argparse.Namespace) -> int:
    import contextlib
    import math
    import os
    import shutil
    import time

    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter
    from gunicorn.glogging import Logger

    settings = load_settings(_overrides(args))
    instance = check_instance_folder(settings.instance_path).resolve()
    # Prometheus multiprocess mode: every worker writes its samples here; the folder is
    # emptied at start (old files would add a previous run's counts). Must be set before
    # prometheus_client is imported (by the app below: keep cds_service.startup and
    # cds_service.metrics imports after this).
    metrics_dir = instance / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from cds_service import metrics
    from cds_service.http import lifecycle
    from cds_service.http.app import create_app
    from cds_service.http.evidence_page import redact_path
    from cds_service.worker_gc import freeze_startup_objects, return_large_buffers

    lifecycle.clear_markers(instance)
    create_app(settings).extensions["cds_service"].store.close()  # fail fast on bad config
    problem = _cannot_listen(args.host, args.port)
    if problem:
        print(f"cds-service: {problem}", file=sys.stderr)
        return 1

    # gunicorn ships no type information: its classes are Any to mypy (so subclassing one
    # needs an ignore of [misc] below), and its objects are passed through as object.
    class AccessLogger(Logger):  # type: ignore[misc]  # gunicorn's Logger is untyped
        def atoms(self, resp: object, req: object, environ: dict[str, Any], request_time: timedelta) -> dict[str, Any]:
            atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
            atoms["U"] = redact_path(atoms.get("U", ""))  # no evidence page token in the log
            return atoms

    def worker_exit(_arbiter: object, worker: object) -> None:
        # Write (or spool) the audit rows still queued in this worker before it goes.
        app = getattr(worker, "wsgi", None)
        runtime = getattr(app, "extensions", {}).get("cds_service") if app is not None else None
        if runtime is not None:
            runtime.store.close()

    def _worker_ready(worker: Any) -> None:  # gunicorn's Worker (untyped): its log and pid
        freeze_startup_objects()
        return_large_buffers()
        worker.log.info("worker ready (pid: %s)", worker.pid)

    class DrainingArbiter(Arbiter):  # type: ignore[misc]  # gunicorn's Arbiter is untyped
        """SIGTERM: readiness off (marker), keep serving `drain_delay_s`, then stop gracefully."""

        def handle_term(self) -> None:
            try:
                lifecycle.mark_draining(instance, os.getpid())
                self.log.info("SIGTERM: /readyz now answers 503; draining in %.1f s", settings.drain_delay_s)
            except OSError as exc:  # a full or read-only instance folder: still drain
                self.log.warning(
                    "SIGTERM: cannot write the draining marker in %s (%s), so /readyz still answers;"
                    " draining in %.1f s",
                    lifecycle.run_folder(instance),
                    exc.strerror or type(exc).__name__,
                    settings.drain_delay_s,
                )
            deadline = time.monotonic() + settings.drain_delay_s
            while time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            raise StopIteration

        def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
            try:
                super().halt(reason, exit_status)
            finally:
                with contextlib.suppress(OSError):  # a read-only folder: nothing was written
                    lifecycle.clear_markers(instance)

    class Server(BaseApplication):  # type: ignore[misc]  # gunicorn's BaseApplication is untyped
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", settings.http_threads)
            # gunicorn's threaded worker plus admission stamps (see http/gunicorn_worker.py).
            self.cfg.set("worker_class", "cds_service.http.gunicorn_worker.AdmissionWorker")
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", max(1, math.ceil(settings.graceful_timeout_s)))
            # No control socket: by default gunicorn puts it at ~/.gunicorn/gunicorn.ctl, one
            # path for every instance of the same user, so two instances on one host would
            # answer each other's control commands.
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("accesslog", "-")
            # The access log shows method, path, status and timing; never headers or queries.
            self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms')
            self.cfg.set("logger_class", AccessLogger)
            self.cfg.set("post_worker_init", _worker_ready)
            self.cfg.set("worker_exit", worker_exit)
            self.cfg.set("child_exit", lambda server, worker: metrics.mark_process_dead(worker.pid))

        def load(self) -> Flask:
            return create_app(settings)

        def run(self) -> None:
            try:
                DrainingArbiter(self).run()
            except RuntimeError as exc:
                print(f"cds-service: {exc}", file=sys.stderr)
                sys.exit(1)

    Server().run()
    return 0


def _reason_texts(settings: Settings) -> dict[tuple[str, str], str]:
    """(system, code) -> text of every override reason the card files offer."""
    from cds_service.content.cards import load_cards

    cards = load_cards(settings.cards_dir)
    return {(r.system, r.code): r.display for card in cards for r in card.override_reasons}


def _cannot_listen(host: str, port: int) -> str | None:
    """Why gunicorn could not listen on host:port, in one line (None: it can). Checked
    before start: gunicorn itself retries five times and logs a dozen lines."""
    import errno
    import socket

    try:
        socket.create_server((host, port)).close()  # SO_REUSEADDR, as gunicorn binds
    except OSError as exc:
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            return f"{where} is already in use (another instance?); choose another port with --port"
        if exc.errno == errno.EACCES:
            return f"no permission to listen on {where} (ports below 1024 need privileges); use --port"
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            return f"cannot listen on {where}: no such local address; check --host"
        return f"cannot listen on {where} ({exc.strerror or type(exc).__name__})"
    return None


def _report(args: argparse.Namespace) -> int:
    from cds_service.startup import store_options
    from cds_service.storage.report import run_report

    settings = load_settings(_overrides(args))
    options = dataclasses.replace(store_options(settings), spool_dir=None)
    # The site is stored in each audit row (whichever issuer or tenant is bound to it).
    if args.site and args.site not in settings.site_overlays:
        raise ConfigError(f"--site {args.site!r} is not in site_overlays (sites: {sorted(settings.site_overlays)})")
    site = args.site or None
    url = args.database_url or settings.resolved_database_url
    print(run_report(url, options=options, reason_texts=_reason_texts(settings), site=site, monthly=args.monthly))
    return 0


def _open_store(args: argparse.Namespace, **changes: Any) -> tuple[Settings, Store]:
    from cds_service.startup import store_options
    from cds_service.storage.store import Store

    overrides = _overrides(args)
    if args.database_url:
        overrides["database_url"] = args.database_url
    settings = load_settings(overrides)
    options = dataclasses.replace(store_options(settings), spool_dir=None, **changes)
    if not settings.database_url:
        check_instance_folder(settings.instance_path)
    return settings, Store(settings.resolved_database_url, options)


def _db_upgrade(args: argparse.Namespace) -> int:
    from cds_service.storage import migrate

    # Open without migrating, then migrate here so the command can say what it did.
    _settings, store = _open_store(args, migrations="none")
    try:
        before, after = store.upgrade_schema()
    finally:
        store.close()
    if before == after:
        print(f"the store is at revision {after} (current); nothing to do")
    else:
        print(f"the store was migrated from revision {before or 'none (empty)'} to {after}")
    return 0 if after == migrate.head_revision() else 2


def _audit_prune(args: argparse.Namespace) -> int:
    settings, store = _open_store(args)
    days = settings.audit_retention_days if args.days is None else args.days
    if days < 0:
        print("cds-service: --days must be 0 or more", file=sys.stderr)
        store.close()
        return 2
    if days == 0:
        store.close()
        print("audit_retention_days is 0: audit rows are kept forever; nothing pruned")
        return 0
    cutoff = datetime.now(UTC) - timedelta(days=days)
    try:
        removed = store.prune_audit(cutoff)
    finally:
        store.close()
    print(f"audit rows older than {days} days (before {cutoff:%Y-%m-%d %H:%M} UTC) deleted: {removed}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cds_service.demo.run import run_demo

    instance = Path(args.instance) if args.instance else None
    return run_demo(host=args.host, port=args.port, instance=instance, wait=not args.no_wait)


# ------------------------------------------------------------------------------ learn
LEARN_EXIT = {"passed": 0, "refused": 3, "failed": 4}


def _add_learn_parser(commands: _Commands[argparse.ArgumentParser]) -> None:
    learn = commands.add_parser(
        "learn",
        help="learn a card's model from the site's FHIR server (Bulk Data) and write its report and overlay entry",
        description="Extract the cohort a card's learning definition (cards/learning/<card>.toml) describes, fit "
        "and validate the model, and write <card>.report.json, <card>.report.html and <card>.overlay.toml. "
        "Exit status: 0 passed, 3 refused (minimum sample size), 4 fitted but failing the validation minimums, "
        "2 configuration or extraction error.",
    )
    learn.add_argument("card", help="card id: rfa-recurrence, amr-persistence or btxa-response")
    learn.add_argument("--fhir-base", required=True, help="FHIR base URL of the site's server")
    learn.add_argument("--group", help="export one Group's patients (Group/<id>/$export) instead of the system")
    learn.add_argument("--out", default=".", help="folder for the report and overlay entry (default .)")
    learn.add_argument("--cards-dir", help="cards folder (default: the configured one)")
    learn.add_argument("--site-overlay", help="site overlay TOML whose local codes apply (default: the configured one)")
    learn.add_argument("--config", help="TOML settings file (else CDS_CONFIG)")
    learn.add_argument("--label", help="model label shown on the card (default 'Site-learned <card> model')")
    learn.add_argument("--model-version", help="model version (default: today's date)")
    learn.add_argument("--bootstrap", type=int, help="bootstrap resamples (default: the definition's)")
    learn.add_argument("--seed", type=int, default=20251126, help="random seed of the bootstrap")
    learn.add_argument("--max-wait", type=float, default=3600.0, help="bound on the export wait, seconds")
    learn.add_argument("--no-bulk", action="store_true", help="use paged searches even if $export is offered")
    learn.add_argument(
        "--recalibrate",
        action="store_true",
        help="propose a recalibration (intercept or baseline, and slope) of the deployed site model from the "
        "patients it scored since its deployment: writes <card>.recalibrated.overlay.toml and its report; "
        "deploy it only after review and `cds-service approve`",
    )
    learn.add_argument("--since", help="with --recalibrate: deployment date YYYY-MM-DD (default: the approval date)")
    _add_fhir_auth_arguments(learn)


def _add_fhir_auth_arguments(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("authentication (SMART Backend Services, or a bearer token)")
    auth.add_argument("--client-id", help="SMART Backend Services client id")
    auth.add_argument("--private-key", help="PEM file of the client's private key (RSA for RS384, P-384 for ES384)")
    auth.add_argument("--alg", default="RS384", choices=["RS384", "ES384"], help="assertion signing algorithm")
    auth.add_argument("--kid", help="key id of the client's registered public key")
    auth.add_argument("--scope", default="system/*.read", help="scopes requested (default system/*.read)")
    auth.add_argument("--token-url", help="token endpoint (default: from .well-known/smart-configuration)")
    auth.add_argument(
        "--token-env", help="name of an environment variable holding a bearer token (never on the command line)"
    )


def _fhir_auth(args: argparse.Namespace, fhir_base: str) -> BackendTokenSource | StaticBearer | None:
    """SMART Backend Services (client id + private key), a bearer token from the
    environment, or None, as `learn` and `coverage` take them."""
    import os

    from cds_service.security.smart_backend import BackendClient, BackendTokenSource, StaticBearer

    if args.client_id or args.private_key:
        if not (args.client_id and args.private_key):
            raise ConfigError("SMART Backend Services needs both --client-id and --private-key")
        client = BackendClient.from_key_file(
            args.client_id,
            Path(args.private_key),
            algorithm=args.alg,
            kid=args.kid,
            scope=args.scope,
            token_url=args.token_url,
        )
        return BackendTokenSource(client, fhir_base)
    if args.token_env:
        return StaticBearer(os.environ.get(args.token_env, ""))
    return None


def _learn(args: argparse.Namespace) -> int:
    from cds_service.learning.run import LearnError, LearnOptions, learn
    from cds_service.security.smart_backend import BackendAuthError

    settings = load_settings({"config": args.config})
    if args.recalibrate:
        return _recalibrate(args, settings)
    try:
        auth = _fhir_auth(args, args.fhir_base)
        overlay = args.site_overlay or settings.site_overlay
        result = learn(
            LearnOptions(
                card_id=args.card,
                cards_dir=Path(args.cards_dir) if args.cards_dir else settings.cards_dir,
                fhir_base=args.fhir_base,
                out_dir=Path(args.out),
                group=args.group,
                site_overlay=Path(overlay) if overlay else None,
                model_label=args.label,
                model_version=args.model_version,
                bootstrap=args.bootstrap,
                seed=args.seed,
                max_wait_s=args.max_wait,
                prefer_bulk=not args.no_bulk,
            ),
            auth,
        )
    except (LearnError, BackendAuthError) as exc:
        print(f"cds-service learn: {exc.reason}", file=sys.stderr)
        return 2
    print(result.message)
    print(f"report: {result.report_json} and {result.report_html}")
    if result.overlay is not None:
        print(f"overlay entry: {result.overlay}")
    return LEARN_EXIT[result.status]


def _coverage(args: argparse.Namespace) -> int:
    import tomllib

    from cds_service.golive.coverage import CoverageError, coverage
    from cds_service.security.smart_backend import BackendAuthError
    from cds_service.terminology.concepts_file import load_concepts

    settings = load_settings({"config": args.config})
    overlay_path = args.site_overlay or settings.site_overlay
    overlay = tomllib.loads(Path(overlay_path).read_text(encoding="utf-8")) if overlay_path else None
    concepts = load_concepts(settings.cards_dir, overlay)
    try:
        auth = _fhir_auth(args, args.fhir_server)
        _result, report, draft = coverage(
            args.fhir_server,
            concepts,
            Path(args.out),
            auth,
            group=args.group,
            prefer_bulk=not args.no_bulk,
            max_wait_s=args.max_wait,
        )
    except (CoverageError, BackendAuthError) as exc:
        print(f"cds-service coverage: {exc.reason}", file=sys.stderr)
        return 2
    print(report.read_text(encoding="utf-8"), end="")
    print(f"report: {report}; draft overlay (review before use): {draft}")
    return 0


def _recalibrate(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from cds_service.learning.recalibrate import recalibrate
    from cds_service.learning.run import LearnError
    from cds_service.security.smart_backend import BackendAuthError

    overlay = args.site_overlay or settings.site_overlay
    if not overlay:
        raise ConfigError("--recalibrate needs the site overlay with the deployed model (--site-overlay)")
    options = _monitor_options(args, settings, overlay, settings.instance_path)
    try:
        result = recalibrate(
            options,
            Path(args.out),
            _fhir_auth(args, args.fhir_base),
        )
    except (LearnError, BackendAuthError) as exc:
        print(f"cds-service learn: {exc.reason}", file=sys.stderr)
        return 2
    print(result.message)
    print(f"report: {result.report_json}")
    if result.overlay is not None:
        print(f"proposed overlay entry: {result.overlay}")
    return LEARN_EXIT[result.status]


# ------------------------------------------------------------------------------ monitor
MONITOR_EXIT = {"ok": 0, "insufficient": 0, "retired": 5}


def _add_monitor_parser(commands: _Commands[argparse.ArgumentParser]) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="check the deployed site model of a card against the outcomes observed since its deployment",
        description="Extract the outcomes of the patients scored since the card's site model was deployed "
        "(Bulk Data, _since), score the model on them, report calibration (observed/expected, slope), "
        "discrimination and the sequential drift test, append the run to the model's report, and record the "
        "verdict in the instance folder, which the service honours (a retired model's estimate is withheld). "
        "Exit status: 0 ok or not enough events yet, 5 retired, 2 configuration or extraction error.",
    )
    monitor.add_argument("card", help="card id: rfa-recurrence, amr-persistence or btxa-response")
    monitor.add_argument("--fhir-base", required=True, help="FHIR base URL of the site's server")
    monitor.add_argument("--group", help="export one Group's patients (Group/<id>/$export) instead of the system")
    monitor.add_argument("--since", help="deployment date YYYY-MM-DD (default: the report's approval date)")
    monitor.add_argument("--site-overlay", help="site overlay TOML with the deployed model (default: the configured)")
    monitor.add_argument(
        "--site", help="a multi-site deployment: the site (setting site_overlays) whose model to monitor"
    )
    monitor.add_argument("--cards-dir", help="cards folder (default: the configured one)")
    monitor.add_argument("--instance", help="the service's instance folder (default: the configured one)")
    monitor.add_argument("--config", help="TOML settings file (else CDS_CONFIG)")
    monitor.add_argument("--max-wait", type=float, default=3600.0, help="bound on the export wait, seconds")
    monitor.add_argument("--no-bulk", action="store_true", help="use paged searches even if $export is offered")
    _add_fhir_auth_arguments(monitor)


def _monitor(args: argparse.Namespace) -> int:

    from cds_service.learning.monitor import monitor
    from cds_service.learning.run import LearnError
    from cds_service.security.smart_backend import BackendAuthError

    settings = load_settings(_overrides(args))
    if args.site and args.site not in settings.site_overlays:
        raise ConfigError(f"--site {args.site!r} is not in site_overlays (sites: {sorted(settings.site_overlays)})")
    overlay = args.site_overlay or (settings.site_overlays[args.site] if args.site else settings.site_overlay)
    if not overlay:
        raise ConfigError("monitor needs the site overlay with the deployed model (--site-overlay or site_overlay)")
    options = _monitor_options(args, settings, overlay, check_instance_folder(settings.instance_path), args.site)
    try:
        result = monitor(
            options,
            _fhir_auth(args, args.fhir_base),
        )
    except (LearnError, BackendAuthError) as exc:
        print(f"cds-service monitor: {exc.reason}", file=sys.stderr)
        return 2
    print(f"{result.status}: {result.reason}")
    print(f"report: {result.report_json}; verdict for the service: {result.status_file}")
    return MONITOR_EXIT[result.status]


def _monitor_options(
    args: argparse.Namespace, settings: Settings, overlay: str | Path, instance_dir: Path, site_name: str | None = None
) -> MonitorOptions:
    """The deployed model's monitoring options from `monitor` or `learn --recalibrate`."""
    from datetime import date
    from pathlib import Path

    from cds_service.learning.monitor import MonitorOptions

    try:
        since = date.fromisoformat(args.since) if args.since else None
    except ValueError:
        raise ConfigError(f"--since {args.since!r} is not a date (YYYY-MM-DD)") from None
    return MonitorOptions(
        card_id=args.card,
        cards_dir=Path(args.cards_dir) if args.cards_dir else settings.cards_dir,
        fhir_base=args.fhir_base,
        site_overlay=Path(overlay),
        instance_dir=instance_dir,
        group=args.group,
        since=since,
        max_wait_s=args.max_wait,
        prefer_bulk=not args.no_bulk,
        site_name=site_name,
    )


def _approve(args: argparse.Namespace) -> int:
    from cds_service.learning.report import ReportFileError, approve

    try:
        report = approve(args.report, args.by, args.note, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    except ReportFileError as exc:
        print(f"cds-service approve: {exc.reason}", file=sys.stderr)
        return 2
    approval = report.approval  # approve() always sets it, to args.by
    print(f"approved by {approval.approved_by if approval is not None else args.by}: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
