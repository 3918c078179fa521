"""Who is calling: verification of the CDS Client's JWT (CDS Hooks 2.0
§Trusting CDS Clients).

    auth = Authenticator.from_file(os.environ["CDS_TRUSTED_CLIENTS"],
                                   public_base_url="https://cds.example.org",
                                   jti_store=SqliteJtiStore(data_dir / "jti.sqlite3"))
    client = auth.authenticate(request.headers.get("Authorization"), request.path)   # raises AuthError

Every failure is an AuthError whose `.reason` is a short machine-readable word
for the log; the caller answers a plain 401 without detail. The checks, in
order: a Bearer token; the unverified header (alg on the allowlist, never none
or HMAC; typ JWT; a kid; no critical extensions); a trusted `iss`; the key
(`jku` only if allowlisted for that issuer, and fetched with a short timeout,
cached and rate-limited); the signature, `aud` (the exact public URL of the
endpoint), `iss` and required claims with PyJWT; `exp`/`nbf`/`iat` against the
injected clock; the tenant; and finally the `jti`, remembered until the token
expires so that a token cannot be replayed.

Nothing here logs or raises the token or the Authorization header; iss, tenant,
jti and the reason are logged (best-practices §JWT). All cryptography is PyJWT's
(on `cryptography`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable, Mapping

import jwt
import requests
import yaml

from ..fhir.transport import bounded_get, bounded_session, read_body
from .replay import JtiStore

log = logging.getLogger("cds_service.auth")

TRUSTED_CLIENTS_ENV = "CDS_TRUSTED_CLIENTS"

#: Algorithms that may ever be configured: asymmetric signatures only (2.0: "SHALL NOT" none or HMAC).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"})
#: The two the spec RECOMMENDS.
DEFAULT_ALGORITHMS = ("ES384", "RS384")

JWKS_TTL = 600.0  # seconds a fetched JWK Set is used before it is fetched again
JWKS_MIN_REFRESH_INTERVAL = 30.0  # at most one request per jku URL in this many seconds
JWKS_TIMEOUT = 2.0  # seconds for the whole fetch: connecting, the headers and every byte of the body
JWKS_MAX_STALE = 3600.0  # a JWK Set whose refresh failed is still used this long after its last good fetch
JWKS_MAX_BYTES = 256 * 1024
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 256
MIN_RSA_BITS = 2048
REQUIRED_CLAIMS = ("exp", "iat", "jti", "aud", "iss")
#: Longest exp − iat accepted, seconds. Reference clients issue 300 s tokens and the
#: spec's example 900 s; an hour leaves room for EHRs that cache their tokens.
DEFAULT_MAX_LIFETIME = 3600.0

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = ("Ed25519", "Ed448")


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


# --------------------------------------------------------------------------- trusted clients

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
        problem = _jwk_problem(key)
        if problem:
            raise fail(f"keys[{i}]: {problem}")
        if key["kid"] in into:
            raise fail(f"keys[{i}]: kid {key['kid']!r} is used by another key of this issuer")
        into[key["kid"]] = dict(key)


def _jwk_problem(key: Any) -> str | None:
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


# --------------------------------------------------------------------------- remote JWK Sets

@dataclass
class _JwksEntry:
    keys: dict[str, Mapping[str, Any]]
    fetched_at: float | None  # last successful fetch
    attempted_at: float  # last request, successful or not


class _RemoteJwks:
    """JWK Sets fetched from allowlisted jku URLs: cached for JWKS_TTL, refreshed on
    an unknown kid, and never requested more than once per JWKS_MIN_REFRESH_INTERVAL
    per URL, so a flood of tokens with random kids cannot hammer the EHR."""

    def __init__(self, http: requests.Session, clock: Callable[[], float]):
        self._http = http
        self._clock = clock
        self._entries: dict[str, _JwksEntry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, url: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(url, threading.Lock())

    def key(self, url: str, kid: str) -> Mapping[str, Any] | None:
        """The JWK with this kid at `url`, None if it has none; AuthError("jwks-unavailable")
        if the set could not be fetched (and no recent copy is at hand)."""
        with self._lock(url):  # one fetch per URL at a time; the others wait and use its result
            now = self._clock()
            entry = self._entries.get(url)
            due = (entry is None or entry.fetched_at is None or now - entry.fetched_at >= JWKS_TTL
                   or kid not in entry.keys)
            if due and (entry is None or now - entry.attempted_at >= JWKS_MIN_REFRESH_INTERVAL):
                entry = self._fetch(url, entry, now)
            if entry is None or entry.fetched_at is None or now - entry.fetched_at >= JWKS_MAX_STALE:
                raise AuthError("jwks-unavailable")
            return entry.keys.get(kid)

    def _fetch(self, url: str, previous: _JwksEntry | None, now: float) -> _JwksEntry:
        entry = _JwksEntry(previous.keys if previous else {}, previous.fetched_at if previous else None, now)
        try:
            keys = self._download(url)
        except (requests.RequestException, ValueError) as exc:
            log.warning(json.dumps({"event": "jwks", "outcome": "fetch-failed", "url": url,
                                    "error": type(exc).__name__}, separators=(",", ":")))
        else:
            entry = _JwksEntry(keys, now, now)
            log.info(json.dumps({"event": "jwks", "outcome": "fetched", "url": url, "keys": len(keys)},
                                separators=(",", ":")))
        self._entries[url] = entry
        return entry

    def _download(self, url: str) -> dict[str, Mapping[str, Any]]:
        # JWKS_TIMEOUT bounds the whole fetch, not each read: a jku that trickles bytes is cut off
        # at it (transport.py), so tokens waiting on this URL's lock wait no longer than that.
        deadline = time.monotonic() + JWKS_TIMEOUT
        # No redirects (bounded_get follows none): the allowlist names exact URLs, a redirect could lead anywhere.
        with bounded_get(self._http, url, deadline=deadline,
                         headers={"Accept": "application/jwk-set+json, application/json"}) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = read_body(response, deadline, JWKS_MAX_BYTES)  # OutOfTime, TooLarge: RequestExceptions
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWK Set")
        keys: dict[str, Mapping[str, Any]] = {}
        for key in data["keys"]:
            # Unusable entries (encryption keys, symmetric keys, keys without kid) are skipped, not fatal.
            if _jwk_problem(key) is None and key["kid"] not in keys:
                keys[key["kid"]] = dict(key)
        return keys


# --------------------------------------------------------------------------- the authenticator

@cache
def _decoy_jwk(alg: str) -> Mapping[str, Any]:
    """A public key for `alg` that signs nothing we accept (its private half is dropped):
    what a refused token is checked against when there is no real key for it."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if alg in _EC_CURVES:
        curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]()
        public, algorithm = ec.generate_private_key(curve).public_key(), jwt.algorithms.ECAlgorithm
    elif alg == "EdDSA":
        public, algorithm = ed25519.Ed25519PrivateKey.generate().public_key(), jwt.algorithms.OKPAlgorithm
    else:  # RS*, PS*
        public = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS).public_key()
        algorithm = jwt.algorithms.RSAAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": "decoy"}


def _text(value: Any, limit: int = 256) -> str | None:
    """A claim fit for the log: strings only, bounded."""
    return value[:limit] if isinstance(value, str) else None


def _pyjwt_reason(exc: jwt.PyJWTError) -> str:
    """The reason for a PyJWT verification error (most specific class first)."""
    errors = jwt.exceptions
    if isinstance(exc, errors.InvalidSignatureError):
        return "bad-signature"
    if isinstance(exc, errors.MissingRequiredClaimError):
        return f"missing-claim:{exc.claim}"
    if isinstance(exc, errors.InvalidAudienceError):
        return "aud-mismatch"
    if isinstance(exc, errors.InvalidIssuerError):
        return "untrusted-iss"
    if isinstance(exc, errors.InvalidAlgorithmError):
        return "alg-not-allowed"
    if isinstance(exc, errors.InvalidKeyError):
        return "key-alg-mismatch"
    # InvalidJTIError and InvalidSubjectError exist from PyJWT 2.10 on.
    for name, reason in (("InvalidJTIError", "invalid-claim:jti"), ("InvalidSubjectError", "invalid-claim:sub")):
        error = getattr(errors, name, None)
        if error is not None and isinstance(exc, error):
            return reason
    if isinstance(exc, errors.DecodeError):
        return "malformed"
    return "invalid-token"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Authenticator:
    """Verifies CDS Client JWTs against a trusted-clients configuration."""

    def __init__(self, config: TrustConfig, *, public_base_url: str, jti_store: JtiStore, leeway: float = 60.0,
                 max_lifetime: float = DEFAULT_MAX_LIFETIME, http: requests.Session | None = None,
                 clock: Callable[[], float] = time.time):
        if not isinstance(public_base_url, str) or not re.fullmatch(r"https?://[^\s?#]+", public_base_url):
            raise TrustConfigError(f"public_base_url must be the service's external http(s) base URL "
                                   f"without query or fragment (got {public_base_url!r})")
        if leeway < 0:
            raise TrustConfigError(f"leeway must not be negative (got {leeway!r})")
        if not max_lifetime > 0:
            raise TrustConfigError(f"max_lifetime must be positive (got {max_lifetime!r})")
        self.config = config
        self.public_base_url = public_base_url.rstrip("/")
        self.leeway = float(leeway)
        self.max_lifetime = float(max_lifetime)
        self._jti_store = jti_store
        self._clock = clock
        self._remote = _RemoteJwks(http or bounded_session(4), clock)
        for alg in config.algorithms:
            _decoy_jwk(alg)  # made now, not on the first refusal

    @classmethod
    def from_file(cls, path: str | Path, *, public_base_url: str, jti_store: JtiStore, leeway: float = 60.0,
                  max_lifetime: float = DEFAULT_MAX_LIFETIME, http: requests.Session | None = None,
                  clock: Callable[[], float] = time.time) -> "Authenticator":
        return cls(load_trust_config(path), public_base_url=public_base_url, jti_store=jti_store, leeway=leeway,
                   max_lifetime=max_lifetime, http=http, clock=clock)

    def expected_audience(self, path: str) -> str:
        """The `aud` a token for this request path must carry: the public URL of the endpoint."""
        return self.public_base_url + (path if path.startswith("/") else "/" + path)

    def authenticate(self, authorization_header: str | None, path: str) -> Client:
        known: dict[str, str | None] = {"iss": None, "jti": None}
        try:
            client = self._authenticate(authorization_header, path, known)
        except AuthError as exc:
            exc.iss = exc.iss or known["iss"]
            exc.jti = exc.jti or known["jti"]
            log.warning(json.dumps({"event": "auth", "outcome": "rejected", "reason": exc.reason, "iss": exc.iss,
                                    "jti": exc.jti, "path": _text(path)}, separators=(",", ":")))
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug(json.dumps({"event": "auth", "outcome": "accepted", "iss": client.iss,
                                  "tenant": _text(client.tenant), "jti": _text(client.jti), "path": _text(path)},
                                 separators=(",", ":")))
        return client

    # The checks, in order. Each failure is an AuthError with a reason; `known` collects
    # iss and jti (unverified until the signature is checked) for the log.
    def _authenticate(self, header: str | None, path: str, known: dict[str, str | None]) -> Client:
        token = self._bearer(header)

        # 2. The unverified header: nothing is fetched or verified for a token we would never accept.
        try:
            head = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed") from None
        alg = head.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise AuthError("alg-not-allowed")
        typ = head.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise AuthError("bad-typ")
        kid = head.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing-kid")
        if "crit" in head or "b64" in head:
            raise AuthError("unsupported-header")

        # 3. The issuer, still unverified: it selects the keys.
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed") from None
        known["jti"] = _text(claims.get("jti"))
        iss = claims.get("iss")
        if iss is None:
            raise AuthError("missing-claim:iss")
        known["iss"] = _text(iss)
        client = self.config.clients.get(iss) if isinstance(iss, str) else None
        audience = self.expected_audience(path)

        # 4. The key. An untrusted issuer, an unknown kid or a key of the wrong type still costs
        # what a real check does (a key built, a signature verified, against a decoy key), so
        # that the time a refusal takes does not tell a trusted issuer from any other.
        try:
            if client is None:
                raise AuthError("untrusted-iss")
            jwk = self._find_key(client, head, kid)
            key = self._verification_key(jwk, alg)
        except AuthError:
            try:
                self._verify(token, self._verification_key(_decoy_jwk(alg), alg), alg, audience, None)
            except AuthError:
                pass
            raise

        # 5. Signature, aud, iss and required claims (PyJWT); times against our clock.
        claims = self._verify(token, key, alg, audience, client.iss)
        self._check_times(claims)

        # 6. Tenant.
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("invalid-claim:tenant")
        if client.tenants is not None and tenant not in client.tenants:
            raise AuthError("tenant-not-allowed")

        # 7. Replay: last, so that only tokens that passed every other check use up their jti.
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise AuthError("invalid-claim:jti")
        if not self._jti_store.remember(client.iss, jti, int(math.ceil(claims["exp"]))):
            raise AuthError("replay")
        return Client(iss=client.iss, tenant=tenant, jti=jti)

    @staticmethod
    def _bearer(header: str | None) -> str:
        if not header or not header.strip():
            raise AuthError("missing-token")
        parts = header.split()
        if parts[0].lower() != "bearer":
            raise AuthError("missing-token")  # another scheme (Basic, …): no bearer token was presented
        if len(parts) == 1:
            raise AuthError("missing-token")
        if len(parts) != 2 or len(parts[1]) > MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(parts[1]):
            raise AuthError("malformed")
        return parts[1]

    def _find_key(self, client: TrustedClient, head: Mapping[str, Any], kid: str) -> Mapping[str, Any]:
        """The JWK named by kid among the issuer's keys. A jku in the header must be on the
        issuer's allowlist (checked before any request); keys configured out of band are
        consulted first, then the jku's set (or, without a jku, every allowlisted jku)."""
        jku = head.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku):
            raise AuthError("jku-not-allowed")
        if kid in client.keys:
            return client.keys[kid]
        unavailable = False
        for url in ([jku] if jku is not None else client.jku):
            try:
                jwk = self._remote.key(url, kid)
            except AuthError:
                unavailable = True
                continue
            if jwk is not None:
                return jwk
        raise AuthError("jwks-unavailable" if unavailable else "unknown-kid")

    @staticmethod
    def _verify(token: str, key: jwt.PyJWK, alg: str, audience: str, issuer: str | None) -> dict[str, Any]:
        """The claims, once PyJWT has checked the signature, aud, iss and the required claims."""
        try:
            return jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=issuer, options={
                "verify_signature": True, "verify_aud": True, "verify_iss": True, "verify_jti": True,
                "verify_sub": True, "strict_aud": False, "require": list(REQUIRED_CLAIMS),
                "enforce_minimum_key_length": True,
                # exp, nbf and iat are checked by the caller against the injected clock, not PyJWT's.
                "verify_exp": False, "verify_nbf": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise AuthError(_pyjwt_reason(exc)) from None

    @staticmethod
    def _verification_key(jwk: Mapping[str, Any], alg: str) -> jwt.PyJWK:
        """The JWK as a PyJWK bound to the token's alg, if it is a key for that alg."""
        if jwk.get("alg") is not None and jwk.get("alg") != alg:
            raise AuthError("key-alg-mismatch")
        kty, crv = jwk.get("kty"), jwk.get("crv")
        compatible = (
            (alg in _EC_CURVES and kty == "EC" and crv == _EC_CURVES[alg])
            or (alg[:2] in ("RS", "PS") and kty == "RSA")
            or (alg == "EdDSA" and kty == "OKP" and crv in _OKP_CURVES))
        if not compatible:
            raise AuthError("key-alg-mismatch")
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg)
        except jwt.PyJWTError:
            raise AuthError("key-alg-mismatch") from None
        if kty == "RSA" and key.key.key_size < MIN_RSA_BITS:
            raise AuthError("key-alg-mismatch")
        return key

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _number(claims[name]):
                raise AuthError(f"invalid-claim:{name}")
        if claims["exp"] <= now - self.leeway:
            raise AuthError("expired")
        if "nbf" in claims and claims["nbf"] > now + self.leeway:
            raise AuthError("not-yet-valid")
        if claims["iat"] > now + self.leeway:
            raise AuthError("iat-in-future")
        # A bounded lifetime bounds what a leaked token can do and how long its jti is kept.
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise AuthError("lifetime-too-long")
