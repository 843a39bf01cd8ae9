"""WSGI entry for any WSGI server: `gunicorn 'cds_service.wsgi:app'`.

Settings come from the environment / CDS_CONFIG file (see config.py). The console command
`cds-service serve` is the usual way to run the service; this module is for deployments
that bring their own server configuration. To keep what `serve` adds, run gunicorn with
`-k cds_service.http.gunicorn_worker.AdmissionWorker --no-control-socket` (admission
control, budget from acceptance; one control socket per host otherwise) and set
PROMETHEUS_MULTIPROC_DIR to an empty folder for /metrics across workers.
"""

from cds_service.http.app import create_app
from cds_service.worker_gc import freeze_startup_objects

app = create_app()
freeze_startup_objects()
