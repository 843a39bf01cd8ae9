"""Service configuration: embedded defaults, then an optional TOML file, then the environment.

Every setting has one name. In the TOML file (path in `CDS_CONFIG`) it is the lower-case
key (`fhir_time_budget_s = 2.0`); in the environment it is `CDS_` + the upper-case key
(`CDS_FHIR_TIME_BUDGET_S=2.0`). `DATABASE_URL` is also honoured for the store.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CARDS_DIR = PACKAGE_ROOT / "cards"


class ConfigError(ValueError):
    """A setting that cannot be used; raised at start-up, never during a request."""


@dataclass(frozen=True)
class Settings:
    instance_path: Path = Path("instance")
    # Store: SQLite file in the instance folder unless DATABASE_URL says otherwise.
    database_url: str = ""
    # Public base URL of this service as the CDS client calls it (JWT `aud` is checked
    # against it), e.g. "https://cds.example.org". Empty: derived from the request.
    public_base_url: str = ""
    # FHIR access during one hook call.
    fhir_time_budget_s: float = 2.0
    fhir_max_pages: int = 10
    fhir_max_workers: int = 6
    # Allowed fhirServer base URLs (prefixes). Empty: any http(s) URL.
    fhir_server_allowlist: tuple[str, ...] = ()
    # Request limits.
    max_body_bytes: int = 16 * 1024 * 1024
    # Clinical content.
    cards_dir: Path = DEFAULT_CARDS_DIR
    site_overlay: Path | None = None
    # Client authentication (CDS Hooks JWT). Trust file: TOML with [[issuers]].
    trust_file: Path | None = None
    trust_sandbox: bool = False
    allow_unsigned: bool = False  # development only; loud in the logs
    jwt_leeway_s: int = 30
    # Audit: key for the keyed hash of patient ids. Empty: a random key per instance folder.
    audit_hash_key: str = ""
    # CORS for browser-based CDS clients.
    cors_origins: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    # -- Operations (httpops): threads, admission, health, drain, metrics --------------
    # Request threads per worker (`cds-service serve --threads` sets it). The FHIR pool is
    # sized for this many concurrent calls, each fetching all its prefetch keys at once.
    http_threads: int = 4
    # Admission control: a hook call that waited longer than this in the worker's queue
    # before a thread took it, or that arrives while more calls wait than there are
    # threads, is answered 503 + Retry-After at once instead of queueing past the budget.
    admission_max_wait_s: float = 0.5
    # /readyz: how long the store may take to answer its ping.
    readiness_store_timeout_s: float = 1.0
    # SIGTERM: /readyz answers 503 for this long (the load balancer stops sending), then
    # the workers drain in-flight calls for up to `graceful_timeout_s`.
    drain_delay_s: float = 5.0
    graceful_timeout_s: float = 30.0
    # /metrics (Prometheus): off unless a bearer token is set; an operator scrapes with
    # `Authorization: Bearer <metrics_token>`.
    metrics_token: str = ""

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.instance_path / 'cds-service.sqlite3').resolve()}"


_ENV_ALIASES = {"database_url": ("DATABASE_URL",)}


def _coerce(name: str, raw, kind):
    text_kinds = {str: str, Path: Path}
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in ("tuple[str, ...]",):
            if isinstance(raw, (list, tuple)):
                return tuple(str(x) for x in raw)
            return tuple(x.strip() for x in str(raw).split(",") if x.strip())
        if kind in ("Path | None",):
            return Path(raw) if str(raw).strip() else None
        if kind in ("Path",):
            return Path(raw)
        if kind in ("str",):
            return str(raw)
        if kind in text_kinds:
            return text_kinds[kind](raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot read {raw!r}") from exc
    raise ConfigError(f"setting {name}: unsupported type")


def load_settings(overrides: dict | None = None, environ: dict | None = None) -> Settings:
    """Defaults < TOML file named by CDS_CONFIG < environment < explicit overrides."""
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
    values: dict = {}
    config_path = (overrides or {}).get("config") or env.get("CDS_CONFIG")
    if config_path:
        try:
            file_values = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_path}: {exc}") from exc
        unknown = set(file_values) - set(fields)
        if unknown:
            raise ConfigError(f"config file {config_path}: unknown settings {sorted(unknown)}")
        values.update(file_values)
    for name in fields:
        for key in ("CDS_" + name.upper(), *_ENV_ALIASES.get(name, ())):
            if key in env:
                values[name] = env[key]
                break
    for name, value in (overrides or {}).items():
        if name in fields and value is not None:
            values[name] = value
    coerced = {name: _coerce(name, raw, fields[name].type) for name, raw in values.items()}
    settings = Settings(**coerced)
    if settings.fhir_time_budget_s <= 0:
        raise ConfigError("fhir_time_budget_s must be positive")
    if settings.fhir_max_pages < 1:
        raise ConfigError("fhir_max_pages must be at least 1")
    return settings
