"""The client JWT checked: header, issuer, key, signature, claims, tenant and replay."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jwt
import requests

from ...fhir.transport import bounded_session
from ..replay import JtiStore
from .keys import RemoteJwks, decoy_jwk
from .trust import (EC_CURVES, MIN_RSA_BITS, OKP_CURVES, AuthError, Client, TrustConfig, TrustConfigError,
                    TrustedClient, load_trust_config)

log = logging.getLogger("cds_service.auth")

MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 256
REQUIRED_CLAIMS = ("exp", "iat", "jti", "aud", "iss")
#: Longest exp − iat accepted, seconds. Reference clients issue 300 s tokens and the
#: spec's example 900 s; an hour leaves room for EHRs that cache their tokens.
DEFAULT_MAX_LIFETIME = 3600.0

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


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
        self._remote = RemoteJwks(http or bounded_session(4), clock)
        for alg in config.algorithms:
            decoy_jwk(alg)  # made now, not on the first refusal

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
                self._verify(token, self._verification_key(decoy_jwk(alg), alg), alg, audience, None)
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
            (alg in EC_CURVES and kty == "EC" and crv == EC_CURVES[alg])
            or (alg[:2] in ("RS", "PS") and kty == "RSA")
            or (alg == "EdDSA" and kty == "OKP" and crv in OKP_CURVES))
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

