"""Console entry point: `cds-service serve` (gunicorn) and `cds-service report`."""

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

    demo = commands.add_parser("demo", help="run the service with demo patients and print their cards")
    demo.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    demo.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port, 0 for any free one (default {DEFAULT_PORT})"
    )
    demo.add_argument("--instance", help="instance folder (default: a temporary folder, removed at the end)")
    demo.add_argument("--no-wait", action="store_true", help="stop after printing the cards (no Ctrl-C needed)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            return _demo(args)
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
    from gunicorn.glogging import Logger

    from cds_service.http.app import create_app
    from cds_service.http.evidence_page import redact_path
    from cds_service.worker_gc import freeze_startup_objects

    settings = load_settings(_overrides(args))
    create_app(settings).extensions["cds_service"].store.close()  # fail fast on bad config

    class AccessLogger(Logger):
        def atoms(self, resp, req, environ, request_time):
            atoms = super().atoms(resp, req, environ, request_time)
            atoms["U"] = redact_path(atoms.get("U", ""))  # no evidence page token in the log
            return atoms

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
            self.cfg.set("logger_class", AccessLogger)
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


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cds_service.demo.run import run_demo

    instance = Path(args.instance) if args.instance else None
    return run_demo(host=args.host, port=args.port, instance=instance, wait=not args.no_wait)


if __name__ == "__main__":
    sys.exit(main())
