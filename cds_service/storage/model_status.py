"""The monitoring verdicts the service honours: `cds-service monitor` writes
`<instance>/monitoring/<card>.json` (atomically); the service reads it when it changes.

A verdict applies to the model it names (label and version): a retired model's estimate is
withheld and the card shows the evidence only, with the verdict's one-line reason, until a
different model is deployed in the site overlay. A file that cannot be read is treated as
no verdict (logged once per change), never as a failed hook call. Every read is a local
stat (and, on change, a small JSON file): bounded.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from cds_service import metrics

log = logging.getLogger(__name__)
FOLDER = "monitoring"


class ModelStatus:
    def __init__(self, instance_dir: Path) -> None:
        self.folder = Path(instance_dir) / FOLDER
        self._cache: dict[str, tuple[tuple[int, int] | None, dict | None]] = {}
        self._lock = threading.Lock()

    def verdict(self, card_id: str, site: str | None = None) -> dict | None:
        path = verdict_path(self.folder.parent, card_id, site)
        try:
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None
        slot = f"{site or ''}/{card_id}"
        cached = self._cache.get(slot)
        if cached is not None and cached[0] == key:
            return cached[1]
        body = None
        if key is not None:
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(body, dict) or not isinstance(body.get("model"), dict):
                    raise ValueError("not a verdict")
            except (OSError, ValueError):
                log.warning("monitoring verdict %s cannot be read; ignored", path.name)
                body = None
        with self._lock:
            self._cache[slot] = (key, body)
        return body

    def retired(self, card_id: str, label: str, version: str, site: str | None = None) -> str | None:
        """The one-line reason when monitoring retired this very model (of this site); else None."""
        body = self.verdict(card_id, site)
        model = body["model"] if body else {}
        if model.get("label") != label or str(model.get("version")) != str(version):
            body = None  # no verdict, or one about a model no longer deployed
        _export(card_id, body, site)
        if not body or body.get("status") != "retired":
            return None
        reason = body.get("reason")
        return reason if isinstance(reason, str) and reason else "The site model was retired by monitoring."


def verdict_path(instance_dir: Path, card_id: str, site: str | None = None) -> Path:
    """`<instance>/monitoring/<card>.json`, or `<instance>/monitoring/<site>/<card>.json`."""
    folder = Path(instance_dir) / FOLDER
    return (folder / site if site else folder) / f"{card_id}.json"


def _export(card_id: str, body: dict | None, site: str | None) -> None:
    """The deployed model's verdict as gauges (0 when no verdict applies to it)."""
    retired = 1.0 if body and body.get("status") == "retired" else 0.0
    metrics.SITE_MODEL_RETIRED.labels(card=card_id, site=site or "").set(retired)
    for gauge, key in (
        (metrics.SITE_MODEL_OBSERVED_EXPECTED, "observed_expected"),
        (metrics.SITE_MODEL_DRIFT, "drift_statistic"),
    ):
        value = body.get(key) if body else None
        if isinstance(value, (int, float)):
            gauge.labels(card=card_id, site=site or "").set(float(value))
