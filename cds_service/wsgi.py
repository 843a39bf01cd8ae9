"""WSGI entry for any WSGI server: `gunicorn 'cds_service.wsgi:app'`.

Settings come from the environment / CDS_CONFIG file (see config.py). The console command
`cds-service serve` is the usual way to run the service; this module is for deployments
that bring their own server configuration.
"""

from cds_service.http.app import create_app
from cds_service.worker_gc import freeze_startup_objects

app = create_app()
freeze_startup_objects()
