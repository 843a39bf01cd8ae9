"""Draining: SIGTERM turns readiness off first, then the workers drain.

`cds-service serve`'s master process, on SIGTERM, creates a marker file named after its
own pid in the instance folder (`run/draining.<pid>`), keeps serving for `drain_delay_s`
while /readyz answers 503 (a load balancer stops sending new calls), then stops gunicorn
gracefully (in-flight calls finish within `graceful_timeout_s`). Workers see the marker
of their parent. A process can also be marked draining directly (`set_draining`).
"""

from __future__ import annotations

import os
from pathlib import Path

_draining_here = False


def run_folder(instance_path: Path) -> Path:
    return Path(instance_path) / "run"


def marker(instance_path: Path, master_pid: int) -> Path:
    return run_folder(instance_path) / f"draining.{master_pid}"


def mark_draining(instance_path: Path, master_pid: int) -> None:
    folder = run_folder(instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    marker(instance_path, master_pid).touch()


def clear_markers(instance_path: Path) -> None:
    folder = run_folder(instance_path)
    if folder.is_dir():
        for path in folder.glob("draining.*"):
            path.unlink(missing_ok=True)


def set_draining(value: bool = True) -> None:
    global _draining_here
    _draining_here = value


def is_draining(instance_path: Path) -> bool:
    if _draining_here:
        return True
    return marker(instance_path, os.getppid()).exists()
