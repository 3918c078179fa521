"""The trusted-clients file: which issuers the service trusts, with their keys (inline, a
file, or an allowlisted jku), algorithms and tenants, checked when it is read."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jwt
import yaml


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


_TOP_FIELDS = {"algorithms", "clients"}


_CLIENT_FIELDS = {"iss", "jku", "jwks", "jwksFile", "tenants"}


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

    def fail(where: str, message: str) -> TrustConfigError:
        return TrustConfigError(f"{path}: {where}: {message}")

    if not isinstance(data, dict):
        raise TrustConfigError(f"{path}: must be a mapping with 'clients' (and optionally 'algorithms')")
    unknown = sorted(set(map(str, data)) - _TOP_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field (allowed: {', '.join(sorted(_TOP_FIELDS))})")

    algorithms = data.get("algorithms", list(DEFAULT_ALGORITHMS))
    if not isinstance(algorithms, list) or not algorithms:
        raise fail("algorithms", "must be a non-empty list, e.g. [ES384, RS384]")
    for alg in algorithms:
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            forbidden = isinstance(alg, str) and (alg.lower() == "none" or alg.upper().startswith("HS"))
            raise fail("algorithms", f"{alg!r} is not allowed: "
                       + ("'none' and symmetric (HMAC) algorithms are forbidden by CDS Hooks; "
                          if forbidden else "")
                       + f"use asymmetric algorithms only ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})")

    clients_data = data.get("clients")
    if not isinstance(clients_data, list) or not clients_data:
        raise fail("clients", "must be a non-empty list of trusted CDS Clients")
    clients: dict[str, TrustedClient] = {}
    for index, entry in enumerate(clients_data):
        where = f"clients[{index}]"
        if not isinstance(entry, dict):
            raise fail(where, "must be a mapping with iss and jku, jwks or jwksFile")
        iss = entry.get("iss")
        if isinstance(iss, str) and iss:
            where = f"clients[{index}] (iss {iss!r})"
        unknown = sorted(set(map(str, entry)) - _CLIENT_FIELDS)
        if unknown:
            raise fail(where, f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(_CLIENT_FIELDS))})")
        if not isinstance(iss, str) or not iss.strip():
            raise fail(where, "iss: required, the issuer exactly as the CDS Client sends it")
        if iss != iss.strip():
            raise fail(where, "iss: has leading or trailing whitespace")
        if iss in clients:
            raise fail(where, "iss: the same issuer is listed twice")
        if "sandbox.cds-hooks.org" in iss:
            log.warning(json.dumps({"event": "trust-config", "warning": "the CDS Hooks sandbox's private key is "
                                    "public: never trust it in production", "iss": iss}))
        if not any(entry.get(field) is not None for field in ("jku", "jwks", "jwksFile")):
            raise fail(where, "needs at least one of jku, jwks or jwksFile (where to find its public keys)")

        jku = entry.get("jku") or []
        if isinstance(jku, str):
            jku = [jku]
        if not isinstance(jku, list):
            raise fail(where, "jku: must be a list of https URLs")
        for url in jku:
            if not isinstance(url, str) or not re.fullmatch(r"https://[^\s#]+", url):
                raise fail(where, f"jku: {url!r} is not an https URL")

        keys: dict[str, Mapping[str, Any]] = {}
        if entry.get("jwks") is not None:
            _config_keys(entry["jwks"], keys, lambda m: fail(where, f"jwks: {m}"))
        if entry.get("jwksFile") is not None:
            name = entry["jwksFile"]
            if not isinstance(name, str) or not name:
                raise fail(where, "jwksFile: must be a file name")
            file = (path.parent / name) if not Path(name).is_absolute() else Path(name)
            try:
                jwks = json.loads(file.read_text(encoding="utf-8"))
            except OSError as exc:
                raise fail(where, f"jwksFile: cannot read {file} ({exc.strerror or type(exc).__name__})") from None
            except (ValueError, UnicodeDecodeError):
                raise fail(where, f"jwksFile: {file} is not valid JSON") from None
            _config_keys(jwks, keys, lambda m: fail(where, f"jwksFile {file}: {m}"))
        if not keys and not jku:
            raise fail(where, "jwks/jwksFile hold no keys and there is no jku")

        tenants = entry.get("tenants")
        if tenants is not None:
            if (not isinstance(tenants, list) or not tenants
                    or not all(isinstance(t, str) and t for t in tenants)):
                raise fail(where, "tenants: must be a non-empty list of tenant strings (or be left out)")
            tenants = frozenset(tenants)
        clients[iss] = TrustedClient(iss=iss, jku=tuple(jku), keys=keys, tenants=tenants)
    return TrustConfig(algorithms=tuple(algorithms), clients=clients)


def _config_keys(jwks: Any, into: dict[str, Mapping[str, Any]], fail: Callable[[str], TrustConfigError]) -> None:
    """Validate a configured JWK Set strictly and add its keys to `into` (by kid)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise fail("must be a JWK Set: {keys: [...]}")
    for i, key in enumerate(jwks["keys"]):
        problem = jwk_problem(key)
        if problem:
            raise fail(f"keys[{i}]: {problem}")
        if key["kid"] in into:
            raise fail(f"keys[{i}]: kid {key['kid']!r} is used by another key of this issuer")
        into[key["kid"]] = dict(key)


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
