"""JWK Sets fetched from allowlisted jku URLs (bounded in time and bytes, cached and
rate-limited), and the decoy keys that make every refusal cost the same."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Mapping

import jwt
import requests

from ...fhir.transport import bounded_get, read_body
from .trust import EC_CURVES, MIN_RSA_BITS, AuthError, jwk_problem

log = logging.getLogger("cds_service.auth")


JWKS_TTL = 600.0  # seconds a fetched JWK Set is used before it is fetched again


JWKS_MIN_REFRESH_INTERVAL = 30.0  # at most one request per jku URL in this many seconds


JWKS_TIMEOUT = 2.0  # seconds for the whole fetch: connecting, the headers and every byte of the body


JWKS_MAX_STALE = 3600.0  # a JWK Set whose refresh failed is still used this long after its last good fetch


JWKS_MAX_BYTES = 256 * 1024


@dataclass
class JwksEntry:
    keys: dict[str, Mapping[str, Any]]
    fetched_at: float | None  # last successful fetch
    attempted_at: float  # last request, successful or not


class RemoteJwks:
    """JWK Sets fetched from allowlisted jku URLs: cached for JWKS_TTL, refreshed on
    an unknown kid, and never requested more than once per JWKS_MIN_REFRESH_INTERVAL
    per URL, so a flood of tokens with random kids cannot hammer the EHR."""

    def __init__(self, http: requests.Session, clock: Callable[[], float]):
        self._http = http
        self._clock = clock
        self._entries: dict[str, JwksEntry] = {}
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

    def _fetch(self, url: str, previous: JwksEntry | None, now: float) -> JwksEntry:
        entry = JwksEntry(previous.keys if previous else {}, previous.fetched_at if previous else None, now)
        try:
            keys = self._download(url)
        except (requests.RequestException, ValueError) as exc:
            log.warning(json.dumps({"event": "jwks", "outcome": "fetch-failed", "url": url,
                                    "error": type(exc).__name__}, separators=(",", ":")))
        else:
            entry = JwksEntry(keys, now, now)
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
            if jwk_problem(key) is None and key["kid"] not in keys:
                keys[key["kid"]] = dict(key)
        return keys


@cache
def decoy_jwk(alg: str) -> Mapping[str, Any]:
    """A public key for `alg` that signs nothing we accept (its private half is dropped):
    what a refused token is checked against when there is no real key for it."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if alg in EC_CURVES:
        curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]()
        public, algorithm = ec.generate_private_key(curve).public_key(), jwt.algorithms.ECAlgorithm
    elif alg == "EdDSA":
        public, algorithm = ed25519.Ed25519PrivateKey.generate().public_key(), jwt.algorithms.OKPAlgorithm
    else:  # RS*, PS*
        public = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS).public_key()
        algorithm = jwt.algorithms.RSAAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": "decoy"}
