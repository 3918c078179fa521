"""The trusted-clients file: which issuers the service trusts, with their keys (inline, a
file, or an allowlisted jku), algorithms and tenants, checked when it is read (pydantic
models of the file; a problem is one line naming its place in the file)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping

import jwt
import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      model_validator)

from ...engine import error_message, error_path


log = logging.getLogger("cds_service.auth")


TRUSTED_CLIENTS_ENV = "CDS_TRUSTED_CLIENTS"


#: Algorithms that may ever be configured: asymmetric signatures only (2.0: "SHALL NOT" none or HMAC).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"})


#: The two the spec RECOMMENDS.
DEFAULT_ALGORITHMS = ("ES384", "RS384")


MIN_RSA_BITS = 2048


_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


OKP_CURVES = ("Ed25519", "Ed448")


class TrustConfigError(ValueError):
    """The trusted-clients file cannot be used; the message names the file, the client and the field."""


class AuthError(Exception):
    """A request that is not authenticated. `reason` is for the log; the client gets a bare 401.
    Never carries the token."""

    def __init__(self, reason: str, *, iss: str | None = None, jti: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.iss = iss
        self.jti = jti

    def __repr__(self) -> str:
        return f"AuthError({self.reason!r}, iss={self.iss!r}, jti={self.jti!r})"


@dataclass(frozen=True)
class Client:
    """The authenticated caller."""
    iss: str
    tenant: str | None
    jti: str


@dataclass(frozen=True)
class TrustedClient:
    iss: str
    jku: tuple[str, ...]  # allowlisted JWK Set URLs, exact match
    keys: Mapping[str, Mapping[str, Any]]  # kid -> public JWK, from jwks and jwksFile
    tenants: frozenset[str] | None


@dataclass(frozen=True)
class TrustConfig:
    algorithms: tuple[str, ...]
    clients: Mapping[str, TrustedClient]  # by iss


# The file, as pydantic models: the loader turns them into the TrustConfig above.


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _algorithm(alg: Any) -> str:
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        forbidden = isinstance(alg, str) and (alg.lower() == "none" or alg.upper().startswith("HS"))
        raise ValueError(f"{alg!r} is not allowed: "
                         + ("'none' and symmetric (HMAC) algorithms are forbidden by CDS Hooks; " if forbidden else "")
                         + f"use asymmetric algorithms only ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})")
    return alg


def _https_url(url: Any) -> str:
    if not isinstance(url, str) or not re.fullmatch(r"https://[^\s#]+", url):
        raise ValueError(f"{url!r} is not an https URL")
    return url


def _jwk(key: Any) -> dict[str, Any]:
    problem = jwk_problem(key)
    if problem:
        raise ValueError(problem)
    return dict(key)


def _mapping(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be {what}")
        return value
    return check


class _JwkSet(BaseModel):
    """A JWK Set of public signature keys, checked strictly (members besides `keys` are ignored)."""
    keys: list[Annotated[dict[str, Any], BeforeValidator(_jwk)]]

    _is_a_set = model_validator(mode="before")(_mapping("a JWK Set: {keys: [...]}"))


def _read_jwks_file(name: Any, info: ValidationInfo) -> Any:
    """A jwksFile's JWK Set, the file named relative to the trusted-clients file."""
    if not isinstance(name, str) or not name:
        raise ValueError("must be a file name")
    file = info.context["directory"] / name
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {file} ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{file} is not valid JSON") from None


def _issuer(iss: str) -> str:
    if not iss.strip():
        raise ValueError("required, the issuer exactly as the CDS Client sends it")
    if iss != iss.strip():
        raise ValueError("has leading or trailing whitespace")
    return iss


class _Client(_FileModel):
    iss: Annotated[str, AfterValidator(_issuer)]
    # allowlisted JWK Set URLs: one or a list
    jku: Annotated[list[Annotated[str, BeforeValidator(_https_url)]],
                   BeforeValidator(lambda v: [] if v is None else [v] if isinstance(v, str) else v)] = []
    jwks: _JwkSet | None = None
    jwksFile: Annotated[_JwkSet, BeforeValidator(_read_jwks_file)] | None = None  # noqa: N815 - the file's name
    tenants: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None

    _is_a_mapping = model_validator(mode="before")(_mapping("a mapping with iss and jku, jwks or jwksFile"))

    @model_validator(mode="after")
    def _has_keys(self) -> "_Client":
        if not self.keys() and not self.jku:
            raise ValueError("needs at least one of jku, jwks or jwksFile (where to find its public keys)"
                             if not {"jku", "jwks", "jwksFile"} & self.model_fields_set
                             else "jwks/jwksFile hold no keys and there is no jku")
        return self

    def keys(self) -> dict[str, Mapping[str, Any]]:
        """Its public keys by kid, from jwks and jwksFile; a kid used twice is refused."""
        keys: dict[str, Mapping[str, Any]] = {}
        for where, jwks in (("jwks", self.jwks), ("jwksFile", self.jwksFile)):
            for i, key in enumerate(jwks.keys if jwks is not None else ()):
                if key["kid"] in keys:
                    raise ValueError(f"{where}.keys[{i}]: kid {key['kid']!r} is used by another key of this issuer")
                keys[key["kid"]] = key
        return keys


class _TrustFile(_FileModel):
    algorithms: Annotated[list[Annotated[str, BeforeValidator(_algorithm)]], Field(min_length=1)] = \
        list(DEFAULT_ALGORITHMS)
    clients: Annotated[list[_Client], Field(min_length=1)]


def load_trust_config(path: str | Path) -> TrustConfig:
    """Read and validate a trusted-clients file (YAML or JSON). Raises TrustConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustConfigError(f"{path}: cannot read the trusted-clients file "
                               f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise TrustConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise TrustConfigError(f"{path}: must be a mapping with 'clients' (and optionally 'algorithms')")
    try:
        parsed = _TrustFile.model_validate(data, context={"directory": path.parent})
    except ValidationError as exc:
        raise TrustConfigError(f"{path}: {_problem(exc, data)}") from None
    clients: dict[str, TrustedClient] = {}
    for index, client in enumerate(parsed.clients):
        if client.iss in clients:
            raise TrustConfigError(f"{path}: {_client_place(index, data)}: iss: the same issuer is listed twice")
        if "sandbox.cds-hooks.org" in client.iss:
            log.warning(json.dumps({"event": "trust-config", "warning": "the CDS Hooks sandbox's private key is "
                                    "public: never trust it in production", "iss": client.iss}))
        clients[client.iss] = TrustedClient(iss=client.iss, jku=tuple(client.jku), keys=client.keys(),
                                            tenants=frozenset(client.tenants) if client.tenants is not None else None)
    return TrustConfig(algorithms=tuple(parsed.algorithms), clients=clients)


def _client_place(index: int, data: dict) -> str:
    """clients[1] (iss 'https://ehr.example.org'): the entry, by its issuer when it names one."""
    iss = data["clients"][index].get("iss") if isinstance(data["clients"][index], dict) else None
    return f"clients[{index}]" + (f" (iss {iss!r})" if isinstance(iss, str) and iss else "")


def _problem(exc: ValidationError, data: dict) -> str:
    """The first problem in one line, where it is in the file: an unknown field first (a
    misspelt one also makes the field it meant look missing)."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(error["loc"])
    places = []
    if loc[:1] == ["clients"] and len(loc) > 1 and isinstance(loc[1], int):
        places.append(_client_place(loc[1], data))
        loc = loc[2:]
    if loc:
        places.append(error_path(loc))
    if error["type"] == "extra_forbidden":
        model = _Client if error["loc"][0] == "clients" else _TrustFile
        message = f"unknown field (allowed: {', '.join(sorted(model.model_fields))})"
    else:
        message = error_message(error)
    return ": ".join(places + [message])


def jwk_problem(key: Any) -> str | None:
    """Why a JWK cannot be a trusted signature-verification key, or None."""
    if not isinstance(key, dict):
        return "must be a JWK object"
    kid = key.get("kid")
    if not isinstance(kid, str) or not kid:
        return "kid: required (tokens name their key by kid)"
    kty = key.get("kty")
    if kty not in ("EC", "RSA", "OKP"):
        return f"kid {kid!r}: kty {kty!r} is not allowed (public EC, RSA or OKP keys only)"
    private = [m for m in _PRIVATE_JWK_MEMBERS if m in key]
    if private:
        return f"kid {kid!r}: holds private key material ({', '.join(private)}); give the public key only"
    if key.get("use") not in (None, "sig"):
        return f"kid {kid!r}: use {key.get('use')!r} is not 'sig'"
    ops = key.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return f"kid {kid!r}: key_ops does not include 'verify'"
    alg = key.get("alg")
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        return f"kid {kid!r}: alg {alg!r} is not an asymmetric signature algorithm"
    try:
        pyjwk = jwt.PyJWK(key)
    except jwt.PyJWTError as exc:
        return f"kid {kid!r}: not a usable public key ({type(exc).__name__})"
    if kty == "RSA" and pyjwk.key.key_size < MIN_RSA_BITS:
        return f"kid {kid!r}: RSA key of {pyjwk.key.key_size} bits (at least {MIN_RSA_BITS} required)"
    return None
