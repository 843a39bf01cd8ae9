"""Console entry point: `cds-service serve` (gunicorn), `cds-service report` and `cds-service learn`."""

from __future__ import annotations

import argparse
import logging
import sys

from cds_service.config import ConfigError, load_settings
from cds_service.storage.store import StoreError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the CDS Hooks service with gunicorn")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    serve.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
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

    _add_learn_parser(commands)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "learn":
            return _learn(args)
        return _report(args)
    except (ConfigError, StoreError) as exc:
        print(f"cds-service: {exc}", file=sys.stderr)
        return 2


def _overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {"config": args.config}
    if args.instance:
        overrides["instance_path"] = args.instance
    if getattr(args, "allow_unsigned", False):
        overrides["allow_unsigned"] = True
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from cds_service.http.app import create_app
    from cds_service.worker_gc import freeze_startup_objects

    settings = load_settings(_overrides(args))
    create_app(settings).extensions["cds_service"].store.close()  # fail fast on bad config

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 30)
            self.cfg.set("accesslog", "-")
            # The access log shows method, path, status and timing; never headers or queries.
            self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms')
            self.cfg.set("post_worker_init", lambda worker: freeze_startup_objects())

        def load(self):
            return create_app(settings)

    Server().run()
    return 0


def _report(args: argparse.Namespace) -> int:
    from cds_service.storage.report import run_report

    settings = load_settings(_overrides(args))
    print(run_report(args.database_url or settings.resolved_database_url))
    return 0


# ------------------------------------------------------------------------------ learn
LEARN_EXIT = {"passed": 0, "refused": 3, "failed": 4}


def _add_learn_parser(commands) -> None:
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
    auth = learn.add_argument_group("authentication (SMART Backend Services, or a bearer token)")
    auth.add_argument("--client-id", help="SMART Backend Services client id")
    auth.add_argument("--private-key", help="PEM file of the client's private key (RSA for RS384, P-384 for ES384)")
    auth.add_argument("--alg", default="RS384", choices=["RS384", "ES384"], help="assertion signing algorithm")
    auth.add_argument("--kid", help="key id of the client's registered public key")
    auth.add_argument("--scope", default="system/*.read", help="scopes requested (default system/*.read)")
    auth.add_argument("--token-url", help="token endpoint (default: from .well-known/smart-configuration)")
    auth.add_argument(
        "--token-env", help="name of an environment variable holding a bearer token (never on the command line)"
    )


def _learn(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from cds_service.learning.run import LearnError, LearnOptions, learn
    from cds_service.security.smart_backend import BackendAuthError, BackendClient, BackendTokenSource, StaticBearer

    settings = load_settings({"config": args.config})
    try:
        auth = None
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
            auth = BackendTokenSource(client, args.fhir_base)
        elif args.token_env:
            auth = StaticBearer(os.environ.get(args.token_env, ""))
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


if __name__ == "__main__":
    sys.exit(main())
