"""The floor for benchmarks/floor.py: a minimal Flask app under the same gunicorn settings
as `cds-service serve` that only parses the JSON body with orjson and answers {"cards": []}.

    python benchmarks/floor_app.py PORT WORKERS
"""

from __future__ import annotations

import sys

import orjson
from flask import Flask, Response, request
from gunicorn.app.base import BaseApplication

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def call(service_id: str) -> Response:
    orjson.loads(request.get_data(cache=False))
    return Response(orjson.dumps({"cards": []}), mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response(b'{"status":"alive"}', mimetype="application/json")


def worker_ready(worker) -> None:
    worker.log.info("worker ready (pid: %s)", worker.pid)


class Floor(BaseApplication):
    def __init__(self, port: int, workers: int) -> None:
        self.port, self.workers = port, workers
        super().__init__()

    def load_config(self) -> None:  # the settings of cds_service/cli.py `_serve`
        self.cfg.set("bind", f"127.0.0.1:{self.port}")
        self.cfg.set("workers", self.workers)
        self.cfg.set("threads", 4)
        self.cfg.set("worker_class", "cds_service.http.gunicorn_worker.AdmissionWorker")
        self.cfg.set("timeout", 30)
        self.cfg.set("graceful_timeout", 30)
        self.cfg.set("control_socket_disable", True)
        self.cfg.set("accesslog", "-")
        self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms')
        self.cfg.set("post_worker_init", worker_ready)

    def load(self):
        return app


if __name__ == "__main__":
    Floor(int(sys.argv[1]), int(sys.argv[2])).run()
