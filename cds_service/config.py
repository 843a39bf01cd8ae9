"""Service configuration, declared once (pydantic v2): defaults, then an optional TOML file,
then the environment, then explicit overrides (the command line).

Every setting has one name. In the TOML file (path in `CDS_CONFIG`) it is the lower-case
key (`fhir_time_budget_s = 2.0`); in the environment it is `CDS_` + the upper-case key
(`CDS_FHIR_TIME_BUDGET_S=2.0`). `DATABASE_URL` is also honoured for the store. A value that
cannot be used stops start-up with ConfigError naming the setting and saying why.
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _shipped_cards_dir() -> Path:
    """The clinical content: cds_service/cards in an installed package (a wheel ships the
    repository's cards/ there, see setup.py), else cards/ beside the package (a checkout)."""
    shipped = importlib.resources.files("cds_service") / "cards"
    if shipped.is_dir():
        return Path(str(shipped))
    return PACKAGE_ROOT / "cards"


DEFAULT_CARDS_DIR = _shipped_cards_dir()


class ConfigError(ValueError):
    """A setting that cannot be used; raised at start-up, never during a request."""


_Seconds = Annotated[float, Field(gt=0)]
_Count = Annotated[int, Field(ge=1)]
# Settings whose values are never repeated in an error message.
_SECRET_SETTINGS = frozenset({"database_url", "audit_hash_key"})


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    instance_path: Path = Path("instance")
    # Store: SQLite file in the instance folder unless DATABASE_URL says otherwise.
    database_url: str = ""
    # Public base URL of this service as the CDS client calls it (JWT `aud` is checked
    # against it), e.g. "https://cds.example.org". Empty: derived from the request.
    public_base_url: str = ""
    # Without public_base_url, the Host names a request may carry (JWT `aud` and card links
    # are built from it); ".example.org" allows its subdomains. Empty: loopback names only
    # (localhost, 127.0.0.1, ::1). Any other Host is refused with 400.
    trusted_hosts: tuple[str, ...] = ()
    # FHIR access during one hook call.
    fhir_time_budget_s: _Seconds = 2.0
    fhir_max_pages: _Count = 10
    fhir_max_workers: int = 6
    # Allowed fhirServer base URLs (prefixes). Empty: any http(s) URL.
    fhir_server_allowlist: tuple[str, ...] = ()
    # Request limits.
    max_body_bytes: int = 16 * 1024 * 1024
    # The whole request body must arrive within this many seconds, else 408: a client that
    # sends it slowly holds a request thread no longer.
    body_read_timeout_s: _Seconds = 10.0
    # Clinical content.
    cards_dir: Path = DEFAULT_CARDS_DIR
    site_overlay: Path | None = None
    # Several hospitals in one deployment: site name -> its overlay (local codes, models). A
    # trusted issuer's `site` (trust file) binds its calls to one; they never see another's.
    site_overlays: dict[str, Path] = Field(default_factory=dict)
    # Client authentication (CDS Hooks JWT). Trust file: TOML with [[issuers]].
    trust_file: Path | None = None
    trust_sandbox: bool = False
    allow_unsigned: bool = False  # development only; loud in the logs
    jwt_leeway_s: int = 30
    # Longest client JWT accepted (exp - iat); a trust-file issuer may set its own.
    jwt_max_lifetime_s: int = 900
    # Audit: key for the keyed hash of patient ids. Empty: a random key per instance folder.
    audit_hash_key: str = ""
    # CORS for browser-based CDS clients.
    cors_origins: tuple[str, ...] = ()
    extra: dict[str, Any] = Field(default_factory=dict)

    # Evidence pages (GET /evidence/<token>): hours a page stays open, then its data is deleted.
    evidence_page_ttl_h: Annotated[float, Field(gt=0)] = 24.0

    # ---- Store: time bounds (every database operation is bounded; see storage/store.py).
    # Connecting (PostgreSQL `connect_timeout`; libpq counts whole seconds, at least 2).
    db_connect_timeout_s: _Seconds = 3.0
    # One statement (PostgreSQL `statement_timeout` and `lock_timeout`; SQLite busy
    # timeout). The client also abandons an operation this long (+0.5 s) after it started,
    # even if the server never answers (a network partition).
    db_statement_timeout_s: _Seconds = 2.0
    # Waiting for a free pooled connection.
    db_pool_timeout_s: _Seconds = 1.0
    db_pool_size: _Count = 5
    db_max_overflow: Annotated[int, Field(ge=0)] = 10
    # TCP keepalives on PostgreSQL connections (libpq keepalives_idle/interval/count).
    db_keepalives_idle_s: _Count = 10
    db_keepalives_interval_s: _Count = 5
    db_keepalives_count: _Count = 3
    # After a store failure, requests that need the store answer 503 at once, with this
    # Retry-After, for this long; the audit spool is replayed on the same period.
    db_retry_after_s: _Seconds = 2.0
    # "auto": migrate the schema on start; "manual": refuse to start on an old schema
    # (then run `cds-service db upgrade`).
    db_migrations: Literal["auto", "manual"] = "auto"
    # Which instance answered, written in every audit row. Empty: "<host name>:<pid>".
    # Never put patient data here.
    instance_id: Annotated[str, Field(max_length=200)] = ""
    # ---- Audit trail.
    # Rows wait for the background writer in a queue of this many; beyond it, and whenever
    # the store cannot be written, they go to the local spool (<instance>/audit-spool/).
    audit_queue_size: _Count = 1000
    # Upper bound of the local spool; when full, new hook calls are refused (503) rather
    # than answered unaudited.
    audit_spool_max_bytes: _Count = 64 * 1024 * 1024
    # A hook call that returns cards is answered once its audit row and evidence pages are
    # committed; a commit that takes longer than this spools them instead (replayed later).
    audit_commit_wait_s: _Seconds = 0.5
    # SQLite only. "full": a commit is on disk (fsync'd) before the call is answered;
    # "normal": faster, but rows committed just before a crash or power cut can be lost.
    db_sqlite_synchronous: Literal["full", "normal"] = "full"
    # Audit rows older than this many days are deleted by `cds-service audit prune`.
    # 0: keep them forever.
    audit_retention_days: Annotated[int, Field(ge=0)] = 0
    # ---- JWT replay check (jti) when the store cannot be reached: false (default) answers
    # 503 (fails closed). true: fall back to a per-process memory of jtis, which cannot
    # see a replay through another worker or instance; logged at WARNING while in use.
    jti_memory_fallback: bool = False
    # -- Operations (httpops): threads, admission, health, drain, metrics --------------
    # Request threads per worker (`cds-service serve --threads` sets it). The FHIR pool is
    # sized for this many concurrent calls, each fetching all its prefetch keys at once.
    http_threads: _Count = 4
    # Admission control: a hook call that waited longer than this in the worker's queue
    # before a thread took it, or that arrives while more calls wait than there are
    # threads, is answered 503 + Retry-After at once instead of queueing past the budget.
    admission_max_wait_s: _Seconds = 0.5
    # /readyz: how long the store may take to answer its ping.
    readiness_store_timeout_s: _Seconds = 1.0
    # SIGTERM: /readyz answers 503 for this long (the load balancer stops sending), then
    # the workers drain in-flight calls for up to `graceful_timeout_s`.
    drain_delay_s: Annotated[float, Field(ge=0)] = 5.0
    graceful_timeout_s: _Seconds = 30.0
    # /metrics (Prometheus): off unless a bearer token is set; an operator scrapes with
    # `Authorization: Bearer <metrics_token>`.
    metrics_token: str = ""
    # Development and demos only: judge every record as of this date (YYYY-MM-DD) instead of
    # today, so fixed scenario charts do not go stale. Empty (the default): off. Logged
    # loudly at start-up when set.
    as_of_date: str = ""

    @field_validator("as_of_date")
    @classmethod
    def _as_of(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise ValueError("as_of_date must be a date like 2025-06-01 (or empty: off)") from None
        return value

    # -- Learned site models (issue 11) ---------------------------------------------------
    # A site model learned by `cds-service learn` whose report did not pass its validation
    # minimums stops start-up. true: start anyway (logged at WARNING at start-up; the card
    # labels such a model). Not for production.
    allow_unvalidated_site_models: bool = False

    @field_validator("allow_unsigned", "trust_sandbox", "jti_memory_fallback", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        return value

    @field_validator("fhir_server_allowlist", "cors_origins", "trusted_hosts", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(x.strip() for x in value.split(",") if x.strip())
        if isinstance(value, list):
            return tuple(str(x) for x in value)
        return value

    @field_validator("site_overlays", mode="before")
    @classmethod
    def _site_map(cls, value: Any) -> Any:
        """From the environment: "hospital-a=/etc/cds/a.toml,hospital-b=/etc/cds/b.toml"."""
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
                raise ValueError("give site=path pairs separated by commas")
            return {name.strip(): path.strip() for name, path in pairs}
        return value

    @field_validator("site_overlay", "trust_file", mode="before")
    @classmethod
    def _optional_path(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def as_of(self) -> date | None:
        """The as-of date (development and demos), or None when off."""
        return date.fromisoformat(self.as_of_date.strip()) if self.as_of_date.strip() else None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.instance_path / 'cds-service.sqlite3').resolve()}"


SETTING_NAMES = tuple(name for name in Settings.model_fields if name != "extra")
_ENV_ALIASES = {"database_url": ("DATABASE_URL",)}


def _explain(error: ValidationError, source: dict[str, Any]) -> ConfigError:
    """The first problem, as `setting NAME: cannot read VALUE (why)`; secrets not repeated."""
    problems = []
    for item in error.errors(include_url=False):
        name = str(item["loc"][0]) if item["loc"] else "?"
        why = item["msg"].replace("Input should be", "expected").replace("Value error, ", "")
        raw = source.get(name)
        shown = "" if name in _SECRET_SETTINGS or raw is None else f" {raw!r}"
        if name == "fhir_time_budget_s" and item["type"] == "greater_than":
            problems.append("fhir_time_budget_s must be positive")
        elif name == "fhir_max_pages" and item["type"] == "greater_than_equal":
            problems.append("fhir_max_pages must be at least 1")
        elif name == "evidence_page_ttl_h" and item["type"] == "greater_than":
            problems.append("evidence_page_ttl_h must be positive")
        else:
            problems.append(f"setting {name}: cannot read{shown} ({why})")
    return ConfigError("; ".join(problems))


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < TOML file named by CDS_CONFIG < environment < explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = (overrides or {}).get("config") or env.get("CDS_CONFIG")
    if config_path:
        try:
            file_values = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {config_path}: cannot read it ({exc.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_path}: not valid TOML ({exc})") from None
        unknown = set(file_values) - set(SETTING_NAMES)
        if unknown:
            raise ConfigError(f"config file {config_path}: unknown settings {sorted(unknown)}")
        values.update(file_values)
    for name in SETTING_NAMES:
        for key in ("CDS_" + name.upper(), *_ENV_ALIASES.get(name, ())):
            if key in env:
                values[name] = env[key]
                break
    for name, value in (overrides or {}).items():
        if name in SETTING_NAMES and value is not None:
            values[name] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise _explain(exc, values) from None


def check_instance_folder(path: Path) -> Path:
    """The instance folder, created if needed and writable; ConfigError saying why not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"instance folder {path} is a file, not a folder; give a folder (--instance, instance_path)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"instance folder {path} cannot be created ({exc.strerror})") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"instance folder {path} is not writable ({exc.strerror})") from None
    return path
