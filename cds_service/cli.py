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

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
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
    if getattr(args, "threads", None):
        overrides["http_threads"] = args.threads
    return overrides


def _serve(args: argparse.Namespace) -> int:
    import math
    import os
    import shutil
    import time

    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    settings = load_settings(_overrides(args))
    instance = settings.instance_path.resolve()
    try:
        instance.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"instance folder {instance}: {exc.strerror or type(exc).__name__}") from None
    # Prometheus multiprocess mode: every worker writes its samples here; the folder is
    # emptied at start (old files would add a previous run's counts). Must be set before
    # prometheus_client is imported (by the app below).
    metrics_dir = instance / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from cds_service import metrics
    from cds_service.http import lifecycle
    from cds_service.http.app import create_app
    from cds_service.worker_gc import freeze_startup_objects

    lifecycle.clear_markers(instance)
    create_app(settings).extensions["cds_service"].store.close()  # fail fast on bad config

    def _worker_ready(worker) -> None:
        freeze_startup_objects()
        worker.log.info("worker ready (pid: %s)", worker.pid)

    class DrainingArbiter(Arbiter):
        """SIGTERM: readiness off (marker), keep serving `drain_delay_s`, then stop gracefully."""

        def handle_term(self):
            self.log.info("SIGTERM: /readyz now answers 503; draining in %.1f s", settings.drain_delay_s)
            lifecycle.mark_draining(instance, os.getpid())
            deadline = time.monotonic() + settings.drain_delay_s
            while time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            raise StopIteration

        def halt(self, reason=None, exit_status=0):
            try:
                super().halt(reason, exit_status)
            finally:
                lifecycle.clear_markers(instance)

    class Server(BaseApplication):
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
            self.cfg.set("post_worker_init", _worker_ready)
            self.cfg.set("child_exit", lambda server, worker: metrics.mark_process_dead(worker.pid))

        def load(self):
            return create_app(settings)

        def run(self):
            try:
                DrainingArbiter(self).run()
            except RuntimeError as exc:
                print(f"cds-service: {exc}", file=sys.stderr)
                sys.exit(1)

    Server().run()
    return 0


def _report(args: argparse.Namespace) -> int:
    from cds_service.storage.report import run_report

    settings = load_settings(_overrides(args))
    print(run_report(args.database_url or settings.resolved_database_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
