"""Service configuration, read once from the environment (pydantic-settings).

Every setting has a default that works on a developer's machine with no
configuration at all (`cds-service serve`). Each is declared once below: its
CDS_* variable, its default and what it accepts. `Settings(...)` takes the same
settings by name (tests, the harness) and checks them the same way; only
`Settings.from_env()` reads an environment. A value that cannot be used is a
ConfigError naming its variable, in one line.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import AfterValidator, AliasGenerator, BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from ..engine import error_message
from ..fhir.terminology import normalise_server
from .auth import DEFAULT_MAX_LIFETIME
from .store import DEFAULT_POOL_SIZE, DatabaseUrl, is_postgres_url


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _listed(value: Any) -> Any:
    """A comma-separated variable ("a, b") as a tuple of its non-blank items."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip().lower() not in _FLAGS:
            raise ValueError(f"must be 1/0, true/false, yes/no or on/off (got {value!r})")
        return _FLAGS[value.strip().lower()]
    return value


def _http_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    for url in urls:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
    return urls


def _iso_date(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"must be YYYY-MM-DD (got {value!r})") from None
    return value


def _stripped(value: Any) -> Any:
    return (value.strip() or None) if isinstance(value, str) else value


Listed = Annotated[tuple[str, ...], BeforeValidator(_listed)]
Flag = Annotated[bool, BeforeValidator(_flag)]


# Values not echoed in an error: a URL there may hold a password or a token.
_UNECHOED = frozenset({"CDS_DATABASE", "CDS_JTI_STORE", "CDS_TERMINOLOGY_SERVER"})


class Settings(BaseSettings):
    # Each setting's variable is CDS_ and its name in capitals. Numbers are refused as nan or inf (nan
    # compares false with everything: it would disable the check a minimum sets).
    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True, case_sensitive=True,
                                      enable_decoding=False,  # lists are comma-separated, not JSON
                                      allow_inf_nan=False,
                                      alias_generator=AliasGenerator(validation_alias=lambda name: f"CDS_{name.upper()}"))

    trials: Listed = ()  # NCT ids to evaluate; empty = the bundled trials enrolling
    # FHIR base URLs the service may call; empty = prefetch only
    allowed_fhir_servers: Annotated[Listed, AfterValidator(_http_urls)] = ()
    show_ineligible: Flag = False  # also return a card for ineligible patients
    data_dir: Path = Path(".cds-data")  # feedback and audit database
    # PostgreSQL connections per worker process, at most
    database_pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1)
    # A SQLite file (default data_dir / "cds-service.sqlite3") or a postgresql:// URL (as a DatabaseUrl,
    # with this host's data dir and pool size: declared after them).
    database: Path | str | None = None
    fhir_deadline: float = Field(3.0, ge=0.1)  # seconds for all FHIR requests of one hook call
    fhir_page_limit: int = Field(20, ge=1)
    fhir_page_size: int = Field(100, ge=1)  # _count of the searches
    fhir_cache_ttl: float = Field(60.0, ge=0.0)
    # the FHIR answer cache's bound in bytes (replaces CDS_FHIR_CACHE_SIZE)
    fhir_cache_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # a larger FHIR answer is refused (too-large)
    fhir_max_response_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    cors_origins: Listed = ()  # browser EHR origins allowed to call the service
    card_templates: Path | None = None  # directory with edited card templates
    # fixed evaluation date (demos, re-runs); default today
    evaluation_date: Annotated[dt.date | None, BeforeValidator(_iso_date)] = None
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # the service's external base URL, for the JWT `aud` check
    public_base_url: Annotated[str | None, BeforeValidator(_stripped)] = None
    # CDS clients whose JWTs are accepted; None = no authentication (needs public_base_url: declared after it)
    trusted_clients: Path | None = None
    jwt_leeway: float = Field(60.0, ge=0.0)  # seconds of clock skew allowed on exp / nbf / iat
    jwt_max_lifetime: float = Field(DEFAULT_MAX_LIFETIME, ge=60.0)  # longest exp − iat, s
    # Where seen JWT ids are kept: "database" (resolved: "sqlite", a file beside a SQLite database, or the
    # PostgreSQL database's URL), "sqlite", a postgresql:// URL or a redis:// URL.
    jti_store: str = "database"
    # An optional FHIR terminology server for codes the shipped code sets lack (None = off).
    terminology_server: Annotated[str | None, BeforeValidator(_stripped)] = None
    # seconds for its lookups in one call, within the FHIR deadline
    terminology_timeout: float = Field(1.0, ge=0.01)
    terminology_cache_ttl: float = Field(3600.0, ge=0.0)  # s an answer (yes or no) is kept
    terminology_cache_size: int = Field(10000, ge=1)  # answers kept
    # server lookups one call may make (cached answers are free)
    terminology_max_lookups: int = Field(32, ge=0)
    # Plain gunicorn only: serve beyond loopback without CDS_TRUSTED_CLIENTS (never in production).
    insecure_no_auth: Flag = False

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            raise ConfigError(_one_line(type(self), exc)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):
        # Settings(...) is what the caller says, nothing else; from_env reads an environment.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings the CDS_* variables of `env` (default os.environ) give. Raises ConfigError."""
        return cls(**_Environment(cls, os.environ if env is None else env)())

    @field_validator("database", mode="plain")
    @classmethod
    def _database(cls, value: Any, info: ValidationInfo) -> Path | DatabaseUrl | None:
        if isinstance(value, str):
            value = value.strip()
            if is_postgres_url(value):
                return _database_url(value, info)
            if "://" not in value:
                return Path(value) if value else None
        elif value is None or isinstance(value, Path):
            return value
        raise ValueError("must be a SQLite file path or a postgresql:// URL")

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        value = (value.rstrip("/") or None) if value else None
        if value and not value.startswith(("https://", "http://")):
            raise ValueError(f"must be the service's http(s) base URL (got {value!r})")
        return value

    @field_validator("trusted_clients")
    @classmethod
    def _trusted_clients(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not info.data.get("public_base_url") and "public_base_url" in info.data:
            raise ValueError("needs CDS_PUBLIC_BASE_URL: a client JWT's aud must equal the public URL of the "
                             "endpoint it calls")
        return value

    @field_validator("jti_store", mode="plain")
    @classmethod
    def _jti_store(cls, value: Any, info: ValidationInfo) -> str:
        value = value.strip() if isinstance(value, str) else None
        if value == "database":
            database = info.data.get("database")
            return database if isinstance(database, DatabaseUrl) else "sqlite"
        if value == "sqlite" or (value or "").startswith(("redis://", "rediss://", "unix://")):
            return value
        if is_postgres_url(value):
            return _database_url(value, info)
        raise ValueError("must be 'database' (the default), 'sqlite', a postgresql:// URL or a redis:// URL")

    @field_validator("terminology_server")
    @classmethod
    def _terminology_server(cls, value: str | None) -> str | None:
        if value is not None and (value := normalise_server(value)) is None:
            raise ValueError("must be a FHIR server's plain http(s) base URL (no credentials, query or fragment)")
        return value

    @property
    def database_path(self) -> Path | DatabaseUrl:
        """Where Store keeps its records: a SQLite file, or the PostgreSQL URL (whose
        with_name() names a per-host file in data_dir)."""
        return self.database or self.data_dir / "cds-service.sqlite3"

    def today(self) -> dt.date:
        """The evaluation date: the configured one, else today in the server's time zone."""
        return self.evaluation_date or dt.date.today()


def _database_url(url: str, info: ValidationInfo) -> DatabaseUrl | str:
    """A PostgreSQL URL with what this host keeps for itself (password-free repr, data dir, pool size)."""
    if "data_dir" not in info.data or "database_pool_size" not in info.data:
        return url  # one of them is refused: that is the error reported
    return DatabaseUrl(url, local_dir=info.data["data_dir"], pool_size=info.data["database_pool_size"])


class _Environment(EnvSettingsSource):
    """The CDS_* variables of one environment (a mapping); a blank one counts as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value for name, value in self._environ.items() if value.strip()}


def _one_line(settings: type[Settings], exc: ValidationError) -> str:
    """The first error, naming its variable (`CDS_FHIR_DEADLINE: ...`) whether the setting
    came from the environment or by name; the value is echoed unless it may hold a secret."""
    error = exc.errors(include_url=False)[0]
    loc = error.get("loc") or ()
    if not loc:  # a rule about several settings names them itself
        return error_message(error)
    field = settings.model_fields.get(str(loc[0]))
    variable = field.validation_alias if field is not None else str(loc[0])
    message = f"{variable}: {error_message(error)}"
    if error["type"] != "value_error" and variable not in _UNECHOED and "input" in error:
        message += f" (got {error['input']!r})"
    return message
