"""Service configuration, read once from the environment.

Every setting has a default that works on a developer's machine with no
configuration at all (`cds-service serve`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..fhir.terminology import normalise_server
from .auth import DEFAULT_MAX_LIFETIME
from .store import DEFAULT_POOL_SIZE, DatabaseUrl, is_postgres_url


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off (got {value!r})")


def _number(env: Mapping[str, str], name: str, default: float, minimum: float, kind=float):
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(number):  # nan compares false with everything: it would disable the check it sets
        raise ConfigError(f"{name} must be a finite number (got {value!r})")
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum} (got {value!r})")
    return number


@dataclass(frozen=True)
class Settings:
    trials: tuple[str, ...] = ()  # NCT ids to evaluate; empty = every bundled trial
    allowed_fhir_servers: tuple[str, ...] = ()  # FHIR base URLs the service may call; empty = prefetch only
    show_ineligible: bool = False  # also return a card for ineligible patients
    data_dir: Path = Path(".cds-data")  # feedback and audit database
    # A SQLite file (default data_dir / "cds-service.sqlite3") or a postgresql:// URL (as a DatabaseUrl).
    database: Path | DatabaseUrl | None = None
    database_pool_size: int = DEFAULT_POOL_SIZE  # PostgreSQL connections per worker process, at most
    fhir_deadline: float = 3.0  # seconds for all FHIR requests of one hook call together
    fhir_page_limit: int = 20
    fhir_page_size: int = 100  # _count of the searches
    fhir_cache_ttl: float = 60.0
    fhir_cache_bytes: int = 64 * 1024 * 1024  # the FHIR answer cache's bound in bytes (replaces CDS_FHIR_CACHE_SIZE)
    fhir_max_response_bytes: int = 20 * 1024 * 1024  # a larger FHIR answer is refused (too-large)
    cors_origins: tuple[str, ...] = ()  # browser EHR origins allowed to call the service
    card_templates: Path | None = None  # directory with edited card templates
    evaluation_date: dt.date | None = None  # fixed evaluation date (demos, re-runs); default today
    max_request_bytes: int = 20 * 1024 * 1024
    trusted_clients: Path | None = None  # CDS clients whose JWTs are accepted; None = no authentication
    public_base_url: str | None = None  # the service's external base URL, for the JWT `aud` check
    jwt_leeway: float = 60.0  # seconds of clock skew allowed on exp / nbf / iat
    jwt_max_lifetime: float = DEFAULT_MAX_LIFETIME  # longest exp − iat accepted, seconds
    # Where seen JWT ids are kept: "database" (resolved: "sqlite", a file beside a SQLite database, or the
    # PostgreSQL database's URL), "sqlite", a postgresql:// URL or a redis:// URL.
    jti_store: str = "database"
    # An optional FHIR terminology server for codes the shipped code sets lack (None = off).
    terminology_server: str | None = None
    terminology_timeout: float = 1.0  # seconds for its lookups in one call, within the FHIR deadline
    terminology_cache_ttl: float = 3600.0  # seconds an answer (yes or no) is kept
    terminology_cache_size: int = 10000  # answers kept
    terminology_max_lookups: int = 32  # server lookups one call may make (cached answers are free)
    # Plain gunicorn only: serve beyond loopback without CDS_TRUSTED_CLIENTS (never in production).
    insecure_no_auth: bool = False

    def __post_init__(self):
        # A PostgreSQL URL becomes a DatabaseUrl (password-free repr, this host's data dir and pool size).
        for name in ("database", "jti_store"):
            value = getattr(self, name)
            if is_postgres_url(value):
                object.__setattr__(self, name, DatabaseUrl(value, local_dir=self.data_dir,
                                                           pool_size=self.database_pool_size))
        if self.jti_store == "database":
            object.__setattr__(self, "jti_store", self.database if isinstance(self.database, DatabaseUrl)
                               else "sqlite")

    @property
    def database_path(self) -> Path | DatabaseUrl:
        """Where Store keeps its records: a SQLite file, or the PostgreSQL URL (whose
        with_name() names a per-host file in data_dir)."""
        return self.database or self.data_dir / "cds-service.sqlite3"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        evaluation_date = None
        if env.get("CDS_EVALUATION_DATE"):
            try:
                evaluation_date = dt.date.fromisoformat(env["CDS_EVALUATION_DATE"])
            except ValueError:
                raise ConfigError(f"CDS_EVALUATION_DATE must be YYYY-MM-DD "
                                  f"(got {env['CDS_EVALUATION_DATE']!r})") from None
        public_base_url = (env.get("CDS_PUBLIC_BASE_URL") or "").strip().rstrip("/") or None
        if public_base_url and not public_base_url.startswith(("https://", "http://")):
            raise ConfigError(f"CDS_PUBLIC_BASE_URL must be the service's http(s) base URL (got {public_base_url!r})")
        trusted = Path(env["CDS_TRUSTED_CLIENTS"]) if env.get("CDS_TRUSTED_CLIENTS") else None
        if trusted and not public_base_url:
            raise ConfigError("CDS_TRUSTED_CLIENTS needs CDS_PUBLIC_BASE_URL: a client JWT's aud must equal the "
                              "public URL of the endpoint it calls")
        database = (env.get("CDS_DATABASE") or "").strip()
        if "://" in database and not is_postgres_url(database):  # not echoed: a URL may hold a password
            raise ConfigError("CDS_DATABASE must be a SQLite file path or a postgresql:// URL")
        jti_store = (env.get("CDS_JTI_STORE") or "database").strip()
        if (jti_store not in ("database", "sqlite") and not is_postgres_url(jti_store)
                and not jti_store.startswith(("redis://", "rediss://", "unix://"))):
            raise ConfigError("CDS_JTI_STORE must be 'database' (the default), 'sqlite', a postgresql:// URL "
                              "or a redis:// URL")
        terminology = (env.get("CDS_TERMINOLOGY_SERVER") or "").strip() or None
        if terminology is not None and (terminology := normalise_server(terminology)) is None:
            # The value is not echoed: a URL with credentials in it must not reach a log.
            raise ConfigError("CDS_TERMINOLOGY_SERVER must be a FHIR server's plain http(s) base URL (no "
                              "credentials, query or fragment)")
        servers = _split(env.get("CDS_ALLOWED_FHIR_SERVERS"))
        for s in servers:
            if not s.startswith(("https://", "http://")):
                raise ConfigError(f"CDS_ALLOWED_FHIR_SERVERS: {s!r} is not an http(s) URL")
        return cls(
            trials=_split(env.get("CDS_TRIALS")),
            allowed_fhir_servers=servers,
            show_ineligible=_flag(env, "CDS_SHOW_INELIGIBLE", False),
            data_dir=Path(env.get("CDS_DATA_DIR") or ".cds-data"),
            database=database if is_postgres_url(database) else Path(database) if database else None,
            database_pool_size=_number(env, "CDS_DATABASE_POOL_SIZE", DEFAULT_POOL_SIZE, 1, int),
            fhir_deadline=_number(env, "CDS_FHIR_DEADLINE", 3.0, 0.1),
            fhir_page_limit=_number(env, "CDS_FHIR_PAGE_LIMIT", 20, 1, int),
            fhir_page_size=_number(env, "CDS_FHIR_PAGE_SIZE", 100, 1, int),
            fhir_cache_ttl=_number(env, "CDS_FHIR_CACHE_TTL", 60.0, 0.0),
            fhir_cache_bytes=_number(env, "CDS_FHIR_CACHE_BYTES", 64 * 1024 * 1024, 0, int),
            fhir_max_response_bytes=_number(env, "CDS_FHIR_MAX_RESPONSE_BYTES", 20 * 1024 * 1024, 1024, int),
            cors_origins=_split(env.get("CDS_CORS_ORIGINS")),
            card_templates=Path(env["CDS_CARD_TEMPLATES"]) if env.get("CDS_CARD_TEMPLATES") else None,
            evaluation_date=evaluation_date,
            max_request_bytes=_number(env, "CDS_MAX_REQUEST_BYTES", 20 * 1024 * 1024, 1024, int),
            trusted_clients=trusted,
            public_base_url=public_base_url,
            jwt_leeway=_number(env, "CDS_JWT_LEEWAY", 60.0, 0.0),
            jwt_max_lifetime=_number(env, "CDS_JWT_MAX_LIFETIME", DEFAULT_MAX_LIFETIME, 60.0),
            jti_store=jti_store,
            terminology_server=terminology,
            terminology_timeout=_number(env, "CDS_TERMINOLOGY_TIMEOUT", 1.0, 0.01),
            terminology_cache_ttl=_number(env, "CDS_TERMINOLOGY_CACHE_TTL", 3600.0, 0.0),
            terminology_cache_size=_number(env, "CDS_TERMINOLOGY_CACHE_SIZE", 10000, 1, int),
            terminology_max_lookups=_number(env, "CDS_TERMINOLOGY_MAX_LOOKUPS", 32, 0, int),
            insecure_no_auth=_flag(env, "CDS_INSECURE_NO_AUTH", False),
        )

    def today(self) -> dt.date:
        """The evaluation date: the configured one, else today in the server's time zone."""
        return self.evaluation_date or dt.date.today()
