"""CDS Client JWT verification (cds_service.hooks.auth): every rejection asserts its reason,
and no log line or error ever carries the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import jwt
import pytest
import requests
import responses
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.hooks.auth import (AuthError, Authenticator, Client, TrustConfig, TrustConfigError, TrustedClient,
                                     load_trust_config)
from cds_service.hooks.replay import SqliteJtiStore

NOW = 1_750_000_000.0
BASE = "https://cds.example.org"
PATH = "/cds-services/trial-eligibility"
AUD = BASE + PATH

ISS_A = "https://ehr-a.example.com/fhir"  # keys inline
ISS_B = "https://ehr-b.example.com"  # keys at an allowlisted jku
ISS_T = "https://ehr-t.example.com"  # tenants, keys in a jwksFile
JKU_B = "https://ehr-b.example.com/.well-known/jwks.json"
EVIL_JKU = "https://attacker.example.net/jwks.json"


# --------------------------------------------------------------------------- keys and tokens

def _public_jwk(private_key, kid, alg):
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **({"alg": alg} if alg else {})}


P256 = ec.SECP256R1


def _ec(curve=ec.SECP384R1):
    return ec.generate_private_key(curve())


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Keys:  # generated at test time: EC P-384 for ES384, RSA 2048 for RS384
    ec = _ec()
    ec_b = _ec()
    ec_b2 = _ec()
    ec_t = _ec()
    ec_p256 = _ec(P256)
    rsa = _rsa()
    rsa_256 = _rsa()


JWKS_A = {"keys": [_public_jwk(Keys.ec, "ec-1", "ES384"), _public_jwk(Keys.rsa, "rsa-1", "RS384"),
                   _public_jwk(Keys.rsa_256, "rsa-256", "RS256"), _public_jwk(Keys.ec_p256, "p256", None)]}
JWKS_B = {"keys": [_public_jwk(Keys.ec_b, "b-1", "ES384")]}
JWKS_B_ROTATED = {"keys": [_public_jwk(Keys.ec_b, "b-1", "ES384"), _public_jwk(Keys.ec_b2, "b-2", "ES384")]}
JWKS_T = {"keys": [_public_jwk(Keys.ec_t, "t-1", "ES384")]}

ISSUED: list[str] = []  # every token a test made, for the no-token-in-logs check


def claims(iss=ISS_A, at=NOW, **overrides):
    payload = {"iss": iss, "aud": AUD, "iat": int(at), "exp": int(at) + 300, "jti": str(uuid.uuid4())}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def token(payload=None, *, key=Keys.ec, alg="ES384", kid="ec-1", **headers):
    head = {"typ": "JWT", "kid": kid, **headers}
    head = {k: v for k, v in head.items() if v is not None}
    text = jwt.encode(claims() if payload is None else payload, key, algorithm=alg, headers=head)
    if kid is None:  # PyJWT adds nothing by itself, but make sure
        assert "kid" not in jwt.get_unverified_header(text)
    ISSUED.append(text)
    return text


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, payload: dict, signature: bytes = b"") -> str:
    text = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode()) + "." + _b64(signature)
    ISSUED.append(text)
    return text


def bearer(text: str) -> str:
    return "Bearer " + text


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def trust_file(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "t.jwks.json").write_text(json.dumps(JWKS_T))
    path = tmp_path / "trusted-clients.yaml"
    path.write_text(yaml.safe_dump({
        "algorithms": ["ES384", "RS384"],
        "clients": [
            {"iss": ISS_A, "jwks": JWKS_A},
            {"iss": ISS_B, "jku": [JKU_B]},
            {"iss": ISS_T, "jwksFile": "keys/t.jwks.json", "tenants": ["tenant-a", "tenant-b"]},
        ]}))
    return path


@pytest.fixture
def http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JKU_B, json=JWKS_B)
        mock.get(EVIL_JKU, json=JWKS_A)  # would "work" if it were ever fetched
        yield mock


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    return SqliteJtiStore(tmp_path / "jti.sqlite3", clock=clock)


@pytest.fixture
def auth(trust_file, store, clock, http):
    return Authenticator.from_file(trust_file, public_base_url=BASE + "/", jti_store=store, clock=clock,
                                   http=requests.Session())


@pytest.fixture(autouse=True)
def auth_log(no_secrets_in_logs):
    """The suite-wide log capture (conftest); after each test, no record may hold
    any token the test made, nor any part of an Authorization header."""
    ISSUED.clear()
    handler = no_secrets_in_logs
    yield handler
    text = "\n".join(r.getMessage() for r in handler.records)
    for issued in ISSUED:
        for part in [issued] + [p for p in issued.split(".") if len(p) >= 16]:
            assert part not in text, "a token (or a segment of one) was logged"
    assert "Bearer" not in text and "authorization" not in text.lower()


def reject(auth, header, path=PATH, reason=None):
    with pytest.raises(AuthError) as info:
        auth.authenticate(header, path)
    err = info.value
    for issued in ISSUED:
        assert issued not in str(err) and issued not in repr(err) and issued not in str(err.args)
    if reason is not None:
        assert err.reason == reason
    return err


def rejections(auth_log):
    return [json.loads(r.getMessage()) for r in auth_log.records
            if r.levelno >= logging.WARNING and '"event":"auth"' in r.getMessage()]


# --------------------------------------------------------------------------- accepted

def test_es384_accepted(auth, http, auth_log):
    payload = claims(tenant="t-9")
    client = auth.authenticate(bearer(token(payload)), PATH)
    assert client == Client(iss=ISS_A, tenant="t-9", jti=payload["jti"])
    assert len(http.calls) == 0
    success = [json.loads(r.getMessage()) for r in auth_log.records if r.levelno == logging.DEBUG]
    assert success == [{"event": "auth", "outcome": "accepted", "iss": ISS_A, "tenant": "t-9",
                        "jti": payload["jti"], "path": PATH}]
    assert rejections(auth_log) == []


def test_rs384_accepted(auth):
    assert auth.authenticate(bearer(token(key=Keys.rsa, alg="RS384", kid="rsa-1")), PATH).iss == ISS_A


def test_scheme_is_case_insensitive_and_sub_nbf_tolerated(auth):
    # Epic sends sub and nbf (5 minutes before iat); neither is required, both tolerated.
    payload = claims(sub="epic-client-id", nbf=int(NOW) - 300)
    assert auth.authenticate("bearer " + token(payload), PATH).jti == payload["jti"]


def test_aud_array_containing_the_url_accepted(auth):
    payload = claims(aud=["https://other.example.org/x", AUD])
    assert auth.authenticate(bearer(token(payload)), PATH).jti == payload["jti"]


def test_expected_audience(auth):
    assert auth.expected_audience(PATH) == "https://cds.example.org/cds-services/trial-eligibility"
    assert auth.expected_audience("/cds-services") == "https://cds.example.org/cds-services"
    assert auth.expected_audience("cds-services/x/feedback") == "https://cds.example.org/cds-services/x/feedback"


def test_clock_skew_within_leeway_accepted(auth):
    payload = claims(exp=int(NOW) - 30, iat=int(NOW) + 30, nbf=int(NOW) + 30)
    assert auth.authenticate(bearer(token(payload)), PATH).iss == ISS_A


# --------------------------------------------------------------------------- algorithms

def test_alg_none_rejected(auth):
    reject(auth, "Bearer e30.e30.", reason="alg-not-allowed")  # header {}: no alg at all
    unsigned = raw_token({"alg": "none", "typ": "JWT", "kid": "ec-1"}, claims())
    assert unsigned.endswith(".")
    reject(auth, bearer(unsigned), reason="alg-not-allowed")


def test_hs256_with_the_public_key_as_secret_rejected_and_never_verified(auth, monkeypatch):
    pem = Keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    header, payload = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims()
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    forged = signing_input + "." + _b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    ISSUED.append(forged)
    calls = []
    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "verify", lambda *a: calls.append(a) or True)
    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "prepare_key", lambda *a: calls.append(a) or b"")
    reject(auth, bearer(forged), reason="alg-not-allowed")
    assert calls == []


def test_alg_not_on_the_allowlist_rejected(auth):
    # ES256 is a fine algorithm, but this deployment allows only ES384 and RS384.
    reject(auth, bearer(token(key=Keys.ec_p256, alg="ES256", kid="p256")), reason="alg-not-allowed")


def test_jwk_alg_rs256_used_for_rs384_token_rejected(auth):
    reject(auth, bearer(token(key=Keys.rsa_256, alg="RS384", kid="rsa-256")), reason="key-alg-mismatch")


def test_key_of_the_wrong_type_or_curve_rejected(auth):
    # an EC key named for an RS384 token; a P-256 key (no alg in its JWK) for an ES384 token
    reject(auth, bearer(token(key=Keys.rsa, alg="RS384", kid="ec-1")), reason="key-alg-mismatch")
    reject(auth, bearer(token(key=Keys.ec, alg="ES384", kid="p256")), reason="key-alg-mismatch")


# --------------------------------------------------------------------------- header

def test_missing_kid(auth):
    reject(auth, bearer(token(kid=None)), reason="missing-kid")


@pytest.mark.parametrize("typ", ["JWS", "at+jwt", None])
def test_typ_must_be_jwt(auth, typ):
    text = raw_token({"alg": "ES384", "kid": "ec-1", **({"typ": typ} if typ else {})}, claims(), b"x" * 96)
    reject(auth, bearer(text), reason="bad-typ")


def test_typ_is_case_insensitive(auth):
    assert auth.authenticate(bearer(token(typ="jwt")), PATH).iss == ISS_A


def test_critical_header_extensions_rejected(auth):
    # an extension nobody supports: PyJWT refuses to parse the header
    reject(auth, bearer(raw_token({"alg": "ES384", "typ": "JWT", "kid": "ec-1", "crit": ["x-ext"], "x-ext": 1},
                                  claims(), b"x" * 96)), reason="malformed")
    # one PyJWT supports (RFC 7797 unencoded payload): not for CDS Hooks JWTs
    reject(auth, bearer(raw_token({"alg": "ES384", "typ": "JWT", "kid": "ec-1", "crit": ["b64"], "b64": True},
                                  claims(), b"x" * 96)), reason="unsupported-header")


# --------------------------------------------------------------------------- authorization header

@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer   ", "Basic xyz", "Basic dXNlcjpwYXNz"])
def test_no_bearer_token(auth, header):
    reject(auth, header, reason="missing-token")


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer not.a.jwt", "Bearer a.b.c", "Bearer a b",
                                    "Bearer eyJhbGciOiJFUzM4NCJ9", "Bearer " + "A" * 20000 + ".b.c",
                                    "Bearer W10.e30.x"])
def test_garbage_token_malformed(auth, header):
    reject(auth, header, reason="malformed")


# --------------------------------------------------------------------------- issuer and claims

def test_untrusted_iss(auth):
    reject(auth, bearer(token(claims(iss="https://evil.example.net"))), reason="untrusted-iss")
    reject(auth, bearer(token(claims(iss=ISS_A + "/"))), reason="untrusted-iss")  # exact match only


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "aud", "iss"])
def test_missing_required_claim(auth, claim):
    payload = claims()
    del payload[claim]
    reject(auth, bearer(token(payload)), reason=f"missing-claim:{claim}")


def test_expired(auth):
    reject(auth, bearer(token(claims(iat=int(NOW) - 400, exp=int(NOW) - 61))), reason="expired")


def test_nbf_in_the_future(auth):
    reject(auth, bearer(token(claims(nbf=int(NOW) + 120))), reason="not-yet-valid")


def test_lifetime_bounded(auth, trust_file, store, clock):
    # exp − iat exactly the maximum is accepted; a second more is not.
    assert auth.authenticate(bearer(token(claims(iat=int(NOW) - 100, exp=int(NOW) - 100 + 3600))), PATH).iss == ISS_A
    reject(auth, bearer(token(claims(iat=int(NOW) - 100, exp=int(NOW) - 100 + 3601))), reason="lifetime-too-long")
    strict = Authenticator.from_file(trust_file, public_base_url=BASE, jti_store=store, clock=clock,
                                     max_lifetime=300, http=requests.Session())
    assert strict.authenticate(bearer(token(claims(exp=int(NOW) + 300))), PATH).iss == ISS_A
    reject(strict, bearer(token(claims(exp=int(NOW) + 301))), reason="lifetime-too-long")


def test_iat_in_the_future(auth):
    reject(auth, bearer(token(claims(iat=int(NOW) + 120, exp=int(NOW) + 400))), reason="iat-in-future")


@pytest.mark.parametrize("claim,value", [("exp", "soon"), ("iat", True), ("nbf", "0"), ("jti", 123), ("jti", ""),
                                         ("jti", "j" * 300), ("sub", ["epic"])])
def test_time_claims_must_be_numbers(auth, claim, value):
    reject(auth, bearer(token(claims(**{claim: value}))), reason=f"invalid-claim:{claim}")


def test_wrong_aud(auth):
    reject(auth, bearer(token(claims(aud=BASE + "/cds-services/other"))), reason="aud-mismatch")
    reject(auth, bearer(token(claims(aud=["https://x.example.org", BASE + "/cds-services"]))),
           reason="aud-mismatch")


def test_aud_with_trailing_slash_rejected(auth):
    reject(auth, bearer(token(claims(aud=AUD + "/"))), reason="aud-mismatch")


def test_service_aud_rejected_on_feedback(auth):
    reject(auth, bearer(token()), path=PATH + "/feedback", reason="aud-mismatch")
    assert auth.authenticate(bearer(token(claims(aud=AUD + "/feedback"))), PATH + "/feedback").iss == ISS_A


def test_tampered_signature(auth):
    text = token()
    head, body, sig = text.split(".")
    flipped = sig[:20] + ("A" if sig[20] != "A" else "B") + sig[21:]
    ISSUED.append(head + "." + body + "." + flipped)
    reject(auth, bearer(head + "." + body + "." + flipped), reason="bad-signature")


def test_tampered_payload(auth):
    text = token(claims(tenant="t-1"))
    head, body, sig = text.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["tenant"] = "t-2"
    forged = head + "." + _b64(json.dumps(payload).encode()) + "." + sig
    ISSUED.append(forged)
    reject(auth, bearer(forged), reason="bad-signature")


def test_signed_by_another_key_with_a_known_kid(auth):
    reject(auth, bearer(token(key=Keys.ec_b, kid="ec-1")), reason="bad-signature")


# --------------------------------------------------------------------------- tenants

def test_tenant_required_and_checked(auth):
    signed = dict(key=Keys.ec_t, kid="t-1")
    reject(auth, bearer(token(claims(iss=ISS_T), **signed)), reason="tenant-not-allowed")
    reject(auth, bearer(token(claims(iss=ISS_T, tenant="tenant-z"), **signed)), reason="tenant-not-allowed")
    reject(auth, bearer(token(claims(iss=ISS_T, tenant=["tenant-a"]), **signed)), reason="invalid-claim:tenant")
    client = auth.authenticate(bearer(token(claims(iss=ISS_T, tenant="tenant-a"), **signed)), PATH)
    assert (client.iss, client.tenant) == (ISS_T, "tenant-a")


# --------------------------------------------------------------------------- keys and jku

def test_unknown_kid(auth, http):
    reject(auth, bearer(token(kid="nope")), reason="unknown-kid")
    assert len(http.calls) == 0


def test_jku_not_allowlisted_makes_no_request(auth, http):
    err = reject(auth, bearer(token(jku=EVIL_JKU)), reason="jku-not-allowed")
    assert err.iss == ISS_A
    # also for the issuer that does have a jku allowlist, and for a near-miss of its URL
    reject(auth, bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="b-1", jku=EVIL_JKU)), reason="jku-not-allowed")
    reject(auth, bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="b-1", jku=JKU_B + "?")),
           reason="jku-not-allowed")
    assert len(http.calls) == 0


def test_allowlisted_jku_fetched_once_and_cached(auth, http, clock):
    def b_token():
        return bearer(token(claims(iss=ISS_B, at=clock.now), key=Keys.ec_b, kid="b-1", jku=JKU_B))

    assert auth.authenticate(b_token(), PATH).iss == ISS_B
    assert [c.request.url for c in http.calls] == [JKU_B]
    clock.now += 60
    assert auth.authenticate(b_token(), PATH).iss == ISS_B
    # a token without jku from the same issuer uses the issuer's configured jku set: same cache
    assert auth.authenticate(bearer(token(claims(iss=ISS_B, at=clock.now), key=Keys.ec_b, kid="b-1")),
                             PATH).iss == ISS_B
    assert len(http.calls) == 1
    clock.now += 600  # the cached set is 10 minutes old: fetched again
    assert auth.authenticate(b_token(), PATH).iss == ISS_B
    assert len(http.calls) == 2


def test_unknown_kid_on_jku_refreshes_once_then_rate_limited(auth, http, clock):
    def b_token(kid, key=Keys.ec_b):
        return bearer(token(claims(iss=ISS_B, at=clock.now), key=key, kid=kid, jku=JKU_B))

    assert auth.authenticate(b_token("b-1"), PATH).iss == ISS_B
    assert len(http.calls) == 1
    clock.now += 31
    reject(auth, b_token("random-1"), reason="unknown-kid")
    assert len(http.calls) == 2  # refreshed once for the unknown kid
    clock.now += 5
    reject(auth, b_token("random-2"), reason="unknown-kid")
    reject(auth, b_token("random-3"), reason="unknown-kid")
    assert len(http.calls) == 2  # within 30 s: no further request
    # key rotation: the EHR publishes b-2; after the interval the new kid is picked up
    http.replace(responses.GET, JKU_B, json=JWKS_B_ROTATED)
    clock.now += 30
    assert auth.authenticate(b_token("b-2", Keys.ec_b2), PATH).iss == ISS_B
    assert len(http.calls) == 3


def test_concurrent_first_requests_fetch_the_jwks_once(auth, http, clock):
    texts = [bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="b-1", jku=JKU_B)) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda text: auth.authenticate(text, PATH), texts))
    assert {c.iss for c in clients} == {ISS_B} and len({c.jti for c in clients}) == 8
    assert len(http.calls) == 1


def test_first_token_with_unknown_kid_does_not_fetch_twice(auth, http):
    reject(auth, bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="zzz", jku=JKU_B)), reason="unknown-kid")
    assert len(http.calls) == 1


@pytest.mark.parametrize("response", [
    dict(status=500, json={"error": "x"}),
    dict(status=302, headers={"Location": EVIL_JKU}),
    dict(status=200, body="<html>not json</html>"),
    dict(status=200, json={"no": "keys"}),
    dict(body=requests.ConnectTimeout("slow")),
])
def test_jwks_unavailable(auth, http, response):
    http.replace(responses.GET, JKU_B, **response)
    reject(auth, bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="b-1", jku=JKU_B)), reason="jwks-unavailable")
    assert [c.request.url for c in http.calls] == [JKU_B]  # never followed a redirect
    # and a second token right after does not retry (rate limit applies to failures too)
    reject(auth, bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="b-1", jku=JKU_B)), reason="jwks-unavailable")
    assert len(http.calls) == 1


def test_stale_jwks_used_while_refresh_fails(auth, http, clock):
    def b_token():
        return bearer(token(claims(iss=ISS_B, at=clock.now), key=Keys.ec_b, kid="b-1", jku=JKU_B))

    assert auth.authenticate(b_token(), PATH)
    http.replace(responses.GET, JKU_B, status=503)
    clock.now += 700  # cache expired, refresh fails: last good set still used
    assert auth.authenticate(b_token(), PATH)
    assert len(http.calls) == 2
    clock.now += 3600  # more than an hour since the last good fetch: no longer
    reject(auth, b_token(), reason="jwks-unavailable")


def test_fetched_jwks_skips_unusable_keys(auth, http):
    secret = {"kty": "oct", "kid": "b-1", "k": _b64(b"secret")}
    http.replace(responses.GET, JKU_B, json={"keys": [secret, {"kid": "x"}] + JWKS_B["keys"]})
    # the symmetric key with the same kid is ignored; the EC key verifies
    assert auth.authenticate(bearer(token(claims(iss=ISS_B), key=Keys.ec_b, kid="b-1", jku=JKU_B)), PATH)


# --------------------------------------------------------------------------- replay

def test_replay_rejected_but_same_jti_from_another_issuer_fine(auth, auth_log):
    payload = claims()
    text = token(payload)
    assert auth.authenticate(bearer(text), PATH).jti == payload["jti"]
    err = reject(auth, bearer(text), reason="replay")
    assert (err.iss, err.jti) == (ISS_A, payload["jti"])
    other = claims(iss=ISS_T, jti=payload["jti"], tenant="tenant-b")
    assert auth.authenticate(bearer(token(other, key=Keys.ec_t, kid="t-1")), PATH).iss == ISS_T
    assert rejections(auth_log) == [{"event": "auth", "outcome": "rejected", "reason": "replay", "iss": ISS_A,
                                     "jti": payload["jti"], "path": PATH}]


def test_rejected_token_does_not_use_up_its_jti(auth):
    payload = claims()
    reject(auth, bearer(token(payload)), path="/cds-services/other", reason="aud-mismatch")
    assert auth.authenticate(bearer(token(payload)), PATH).jti == payload["jti"]


def test_sqlite_jti_store_shared_between_instances(tmp_path, clock):
    path = tmp_path / "shared" / "jti.sqlite3"
    one, two = SqliteJtiStore(path, clock=clock), SqliteJtiStore(path, clock=clock)
    exp = int(NOW) + 300
    assert one.remember(ISS_A, "j-1", exp) is True
    assert two.remember(ISS_A, "j-1", exp) is False
    assert one.remember(ISS_A, "j-1", exp) is False
    assert two.remember(ISS_B, "j-1", exp) is True


def test_replay_detected_across_authenticators(trust_file, tmp_path, clock, http):
    path = tmp_path / "jti.sqlite3"
    workers = [Authenticator.from_file(trust_file, public_base_url=BASE, clock=clock,
                                       jti_store=SqliteJtiStore(path, clock=clock)) for _ in range(2)]
    text = token()
    assert workers[0].authenticate(bearer(text), PATH)
    reject(workers[1], bearer(text), reason="replay")


def test_sqlite_jti_store_purges_expired_rows(tmp_path, clock):
    path = tmp_path / "jti.sqlite3"
    jtis = SqliteJtiStore(path, clock=clock, leeway=60, purge_every=3)

    def rows():
        with closing(sqlite3.connect(path)) as db:
            return sorted(r[0] for r in db.execute("SELECT jti FROM jti"))

    assert jtis.remember(ISS_A, "old-1", int(NOW) + 10)
    assert jtis.remember(ISS_A, "live", int(NOW) + 1000)
    clock.now += 100  # old-1 expired more than the leeway ago; live has not
    assert rows() == ["live", "old-1"]
    assert jtis.remember(ISS_A, "new", int(NOW) + 1000)  # the third insert purges
    assert rows() == ["live", "new"]
    assert jtis.remember(ISS_A, "live", int(NOW) + 1000) is False  # purging kept what still protects
    clock.now += 2000
    assert jtis.purge() == 2 and rows() == []


def test_sqlite_jti_store_expired_row_does_not_block_a_later_token(tmp_path, clock):
    jtis = SqliteJtiStore(tmp_path / "jti.sqlite3", clock=clock, leeway=60, purge_every=1000)
    assert jtis.remember(ISS_A, "again", int(NOW) + 10)
    clock.now += 200  # the first token is long expired, its row not yet purged
    assert jtis.remember(ISS_A, "again", int(clock.now) + 300) is True
    assert jtis.remember(ISS_A, "again", int(clock.now) + 300) is False


# --------------------------------------------------------------------------- the spec's own example

# CDS Hooks 2.0 (HL7/cds-hooks v2.0.1, input/pagecontent/index.md, "Trusting CDS Clients" -> Example), verbatim.
SPEC_JWKS = {"keys": [{
    "kty": "EC", "use": "sig", "crv": "P-384", "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384"}]}
SPEC_JWT = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVoci5leGFtcGxlLmNv"
    "bS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1wbGUub3Jn"
    "L2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFi"
    "Ny00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0.d1WfLjG"
    "RKlcWB94l9do4cM8REXeYJLL6SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vXWEIYTdjooZdooCSDf2L"
    "8-i4awdoUwiEb")
SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_JKU = "https://fhir-ehr.example.com/jwk_uri"
SPEC_IAT, SPEC_EXP = 1311280970, 1422568860


def _spec_auth(tmp_path, client_entry, now, http, max_lifetime=SPEC_EXP - SPEC_IAT):
    # The spec's example token lives 3.5 years (exp − iat): the lifetime bound is raised for it.
    ISSUED.append(SPEC_JWT)
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "spec-clients.json"
    path.write_text(json.dumps({"clients": [{"iss": SPEC_ISS, **client_entry}]}))
    clock = Clock(now)
    return Authenticator.from_file(path, public_base_url="https://cds.example.org",
                                   jti_store=SqliteJtiStore(tmp_path / "jti.sqlite3", clock=clock),
                                   max_lifetime=max_lifetime, clock=clock, http=requests.Session())


def test_spec_example_token_is_the_published_one():
    assert jwt.get_unverified_header(SPEC_JWT) == {"alg": "ES384", "typ": "JWT", "kid": "example-kid",
                                                   "jku": SPEC_JKU}
    assert jwt.decode(SPEC_JWT, options={"verify_signature": False}) == {
        "iss": SPEC_ISS, "aud": "https://cds.example.org/cds-services/some-service", "exp": SPEC_EXP,
        "iat": SPEC_IAT, "jti": "ee22b021-e1b7-4611-ba5b-8eec6a33ac1e",
        "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"}


def test_spec_example_accepted_with_inline_jwks(tmp_path, http):
    # The token names a jku: it must be allowlisted; the key is found in the inline set, so nothing is fetched.
    auth = _spec_auth(tmp_path, {"jku": [SPEC_JKU], "jwks": SPEC_JWKS}, now=1_400_000_000, http=http)
    client = auth.authenticate("Bearer " + SPEC_JWT, "/cds-services/some-service")
    assert client == Client(iss=SPEC_ISS, tenant="2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
                            jti="ee22b021-e1b7-4611-ba5b-8eec6a33ac1e")
    assert len(http.calls) == 0
    reject(auth, "Bearer " + SPEC_JWT, "/cds-services/some-service", reason="replay")


def test_spec_example_accepted_from_its_jku(tmp_path, http):
    http.get(SPEC_JKU, json=SPEC_JWKS)
    auth = _spec_auth(tmp_path, {"jku": [SPEC_JKU]}, now=SPEC_EXP - 1, http=http)
    assert auth.authenticate("Bearer " + SPEC_JWT, "/cds-services/some-service").iss == SPEC_ISS
    assert [c.request.url for c in http.calls] == [SPEC_JKU]


def test_spec_example_time_checks_follow_the_injected_clock(tmp_path, http):
    entry = {"jku": [SPEC_JKU], "jwks": SPEC_JWKS}
    path = "/cds-services/some-service"
    reject(_spec_auth(tmp_path / "a", entry, now=SPEC_EXP + 61, http=http), "Bearer " + SPEC_JWT, path,
           reason="expired")
    reject(_spec_auth(tmp_path / "b", entry, now=SPEC_IAT - 61, http=http), "Bearer " + SPEC_JWT, path,
           reason="iat-in-future")
    reject(_spec_auth(tmp_path / "c", entry, now=time.time(), http=http), "Bearer " + SPEC_JWT, path,
           reason="expired")
    # the inline key alone, without the jku on the allowlist: the token's jku is refused
    reject(_spec_auth(tmp_path / "d", {"jwks": SPEC_JWKS}, now=1_400_000_000, http=http), "Bearer " + SPEC_JWT,
           path, reason="jku-not-allowed")
    # with the default lifetime bound (an hour) its 3.5 years are refused
    reject(_spec_auth(tmp_path / "f", entry, now=1_400_000_000, http=http, max_lifetime=3600), "Bearer " + SPEC_JWT,
           path, reason="lifetime-too-long")
    # another service's URL
    reject(_spec_auth(tmp_path / "e", entry, now=1_400_000_000, http=http), "Bearer " + SPEC_JWT,
           "/cds-services/other-service", reason="aud-mismatch")
    assert len(http.calls) == 0


def test_rejection_log_line(auth, auth_log):
    reject(auth, bearer(token(claims(aud=AUD + "/"))), reason="aud-mismatch")
    reject(auth, None, reason="missing-token")
    lines = rejections(auth_log)
    assert [line["reason"] for line in lines] == ["aud-mismatch", "missing-token"]
    assert set(lines[0]) == {"event", "outcome", "reason", "iss", "jti", "path"}
    assert lines[0]["iss"] == ISS_A and lines[0]["jti"] and lines[0]["path"] == PATH
    assert lines[1]["iss"] is None and lines[1]["jti"] is None


# --------------------------------------------------------------------------- trusted-clients file

def _write(tmp_path, data, name="clients.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


GOOD_CLIENT = {"iss": ISS_A, "jwks": JWKS_A}


@pytest.mark.parametrize("data,expected", [
    ({"algorithms": ["ES384", "HS256"], "clients": [GOOD_CLIENT]}, ["algorithms", "'HS256'"]),
    ({"algorithms": ["none"], "clients": [GOOD_CLIENT]}, ["algorithms", "'none'"]),
    ({"algorithms": ["ES385"], "clients": [GOOD_CLIENT]}, ["algorithms", "'ES385'"]),
    ({"algorithms": [], "clients": [GOOD_CLIENT]}, ["algorithms"]),
    ({"clients": [{"iss": ISS_A}]}, ["clients[0]", ISS_A, "jku, jwks or jwksFile"]),
    ({"clients": [GOOD_CLIENT, {"jwks": JWKS_B}]}, ["clients[1]", "iss"]),
    ({"clients": [GOOD_CLIENT, GOOD_CLIENT]}, ["clients[1]", "iss", "twice"]),
    ({"clients": []}, ["clients"]),
    ({"clients": [{"iss": ISS_B, "jku": ["http://ehr-b.example.com/jwks"]}]}, ["clients[0]", "jku", "https"]),
    ({"clients": [{"iss": ISS_B, "jwksFile": "missing.json"}]}, ["clients[0]", "jwksFile", "missing.json"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}}]},
     ["clients[0]", "jwks", "keys[0]", "kty"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": [{**JWKS_B["keys"][0], "d": "xxx"}]}}]},
     ["clients[0]", "jwks", "private key material"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": [{**JWKS_B["keys"][0], "kid": None}]}}]},
     ["clients[0]", "jwks", "kid"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": [{**JWKS_B["keys"][0], "x": "AAAA"}]}}]},
     ["clients[0]", "jwks", "not a usable public key"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": JWKS_B["keys"] * 2}}]}, ["clients[0]", "kid 'b-1'"]),
    ({"clients": [{"iss": ISS_B, "jku": [JKU_B], "tenants": []}]}, ["clients[0]", "tenants"]),
    ({"clients": [{"iss": ISS_B, "jku": [JKU_B], "jwks_file": "x"}]}, ["clients[0]", "jwks_file", "unknown"]),
    ({"client": [GOOD_CLIENT]}, ["client: unknown field (allowed: algorithms, clients)"]),
    ("clients: [unclosed", ["not valid YAML"]),
    ("- just\n- a list\n", ["mapping"]),
    ("", ["mapping"]),
    # the place in the file, as precisely as it can be named
    ({"algorithms": ["ES384", 5], "clients": [GOOD_CLIENT]}, ["algorithms[1]: 5 is not allowed"]),
    ({"algorithms": "ES384", "clients": [GOOD_CLIENT]}, ["algorithms: Input should be a valid list"]),
    ({"clients": "all"}, ["clients: Input should be a valid list"]),
    ({"clients": [5]}, ["clients[0]: must be a mapping with iss and jku, jwks or jwksFile"]),
    ({"clients": [{"iss": 5, "jku": [JKU_B]}]}, ["clients[0]: iss: Input should be a valid string"]),
    ({"clients": [{"iss": " " + ISS_B, "jku": [JKU_B]}]}, ["clients[0] (iss ' https://ehr-b.example.com'): iss: has "
                                                          "leading or trailing whitespace"]),
    ({"clients": [{"iss": ISS_B, "jku": [JKU_B, 5]}]}, [f"clients[0] (iss '{ISS_B}'): jku[1]: 5 is not an https URL"]),
    ({"clients": [{"iss": ISS_B, "jku": {"url": JKU_B}}]}, ["clients[0]", "jku: Input should be a valid list"]),
    ({"clients": [{"iss": ISS_B, "jku": []}]}, ["clients[0]", "jwks/jwksFile hold no keys and there is no jku"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": []}}]}, ["clients[0]", "hold no keys and there is no jku"]),
    ({"clients": [{"iss": ISS_B, "jwks": [JWKS_B]}]}, ["clients[0]", "jwks: must be a JWK Set: {keys: [...]}"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": ["b-1"]}}]}, ["clients[0]", "jwks.keys[0]: must be a JWK object"]),
    ({"clients": [{"iss": ISS_B, "jwks": {"keys": [{**JWKS_B["keys"][0], "use": "enc"}]}}]},
     ["clients[0]", "jwks.keys[0]: kid 'b-1': use 'enc' is not 'sig'"]),
    ({"clients": [{"iss": ISS_B, "jku": [JKU_B], "tenants": ["main", ""]}]},
     ["clients[0]", "tenants[1]: String should have at least 1 character"]),
    ({"clients": [{"iss": ISS_B, "jwksFile": ""}]}, ["clients[0]", "jwksFile: must be a file name"]),
])
def test_trust_config_errors(tmp_path, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(TrustConfigError) as info:
        load_trust_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message  # one line, naming the file
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("content,expected", [
    ("{", "jwksFile: {file} is not valid JSON"),
    ("[]", "jwksFile: must be a JWK Set: {{keys: [...]}}"),
    (json.dumps({"keys": [{**JWKS_T["keys"][0], "kty": "oct"}]}),
     "jwksFile.keys[0]: kid 't-1': kty 'oct' is not allowed"),
    (json.dumps(JWKS_B), "jwksFile.keys[0]: kid 'b-1' is used by another key of this issuer"),  # b-1 is inline too
])
def test_trust_config_jwks_file_errors(tmp_path, content, expected):
    file = tmp_path / "keys" / "ehr.json"
    file.parent.mkdir()
    file.write_text(content)
    path = _write(tmp_path, {"clients": [{"iss": ISS_B, "jwks": JWKS_B, "jwksFile": "keys/ehr.json"}]})
    with pytest.raises(TrustConfigError) as info:
        load_trust_config(path)
    assert str(info.value).startswith(f"{path}: clients[0] (iss '{ISS_B}'): " + expected.format(file=file))


def test_trust_config_unreadable_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(TrustConfigError, match="cannot read") as info:
        Authenticator.from_file(path, public_base_url=BASE, jti_store=SqliteJtiStore(tmp_path / "j.db"))
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_trust_config_json_and_defaults(tmp_path):
    (tmp_path / "k.json").write_text(json.dumps(JWKS_T))
    path = _write(tmp_path, json.dumps({"clients": [{"iss": ISS_T, "jwksFile": "k.json"},
                                                    {"iss": ISS_B, "jku": JKU_B}]}), name="c.json")
    config = load_trust_config(path)
    assert config == TrustConfig(algorithms=("ES384", "RS384"), clients={
        ISS_T: TrustedClient(iss=ISS_T, jku=(), keys={"t-1": JWKS_T["keys"][0]}, tenants=None),
        ISS_B: TrustedClient(iss=ISS_B, jku=(JKU_B,), keys={}, tenants=None)})


def test_trust_config_loads_as_before(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(JWKS_T))
    path = _write(tmp_path, {"algorithms": ["ES256", "RS384", "EdDSA"], "clients": [
        {"iss": ISS_A, "jwks": {"keys": JWKS_A["keys"][:2], "note": "members besides keys are ignored"},
         "jwksFile": "t.json", "tenants": ["main", "annex"]},
        {"iss": ISS_B, "jku": [JKU_B, JKU_B + "?v=2"], "jwks": JWKS_B}]})
    assert load_trust_config(path) == TrustConfig(algorithms=("ES256", "RS384", "EdDSA"), clients={
        ISS_A: TrustedClient(iss=ISS_A, jku=(), tenants=frozenset({"main", "annex"}),
                             keys={"ec-1": JWKS_A["keys"][0], "rsa-1": JWKS_A["keys"][1], "t-1": JWKS_T["keys"][0]}),
        ISS_B: TrustedClient(iss=ISS_B, jku=(JKU_B, JKU_B + "?v=2"), keys={"b-1": JWKS_B["keys"][0]}, tenants=None)})


def test_public_base_url_validated(trust_file, store):
    for bad in ("cds.example.org", "https://cds.example.org/?x=1", ""):
        with pytest.raises(TrustConfigError, match="public_base_url"):
            Authenticator.from_file(trust_file, public_base_url=bad, jti_store=store)


def test_deploy_example_file_loads():
    example = Path(__file__).resolve().parents[1] / "deploy" / "trusted-clients.example.yaml"
    iss = "https://fhir.hospital.example.org/api/FHIR/R4"
    assert load_trust_config(example) == TrustConfig(algorithms=("ES384", "RS384"), clients={iss: TrustedClient(
        iss=iss, jku=("https://fhir.hospital.example.org/api/epic/2019/Security/Open/PublicKeys/530013/530013",),
        keys={}, tenants=frozenset({"hospital-main"}))})


def test_sandbox_issuer_warns(tmp_path, auth_log):
    load_trust_config(_write(tmp_path, {"clients": [{"iss": "https://sandbox.cds-hooks.org",
                                                     "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"]}]}))
    assert any("sandbox" in r.getMessage() and r.levelno == logging.WARNING for r in auth_log.records)


# --------------------------------------------------------------------------- anything else

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=8)
_wild_headers = st.fixed_dictionaries({}, optional={
    "alg": st.sampled_from(["ES384", "RS384", "none", "HS256", "ES256"]) | _json,
    "typ": st.sampled_from(["JWT", "jwt"]) | _json, "kid": st.sampled_from(["ec-1", "rsa-1", "b-1"]) | _json,
    "jku": st.sampled_from([JKU_B, EVIL_JKU]) | _json, "crit": _json, "b64": _json})
_sane_headers = st.fixed_dictionaries({"typ": st.just("JWT"), "kid": st.sampled_from(["ec-1", "b-1", "t-1", "x"])},
                                      optional={"jku": st.sampled_from([JKU_B, EVIL_JKU])})
_times = st.sampled_from([int(NOW), int(NOW) + 300, int(NOW) - 300]) | _json
_payloads = st.fixed_dictionaries({}, optional={
    "iss": st.sampled_from([ISS_A, ISS_B, ISS_T]) | _json, "aud": st.sampled_from([AUD, [AUD]]) | _json,
    "exp": _times, "iat": _times, "nbf": _times, "jti": st.text(max_size=8) | _json, "tenant": _json})
_signers = {"ec-1": Keys.ec, "b-1": Keys.ec_b, "t-1": Keys.ec_t, "x": Keys.ec}


@st.composite
def _tokens(draw):
    """Wild headers with garbage signatures, or sane headers over wild claims signed with the right key."""
    payload = draw(_payloads)
    if draw(st.booleans()):  # mostly right claims, a few of them wrong
        iss = draw(st.sampled_from([ISS_A, ISS_B, ISS_T]))
        payload = {**claims(iss=iss), **draw(st.dictionaries(st.sampled_from(
            ["iss", "aud", "exp", "iat", "nbf", "jti", "tenant", "sub"]), _json | _times, max_size=2))}
    elif draw(st.booleans()):
        return raw_token(draw(_wild_headers), payload, draw(st.binary(max_size=120)))
    header = draw(_sane_headers)
    text = jwt.api_jws.PyJWS().encode(json.dumps(payload).encode(), _signers[header["kid"]], algorithm="ES384",
                                      headers=header)
    ISSUED.append(text)
    return text


def test_arbitrary_tokens_raise_only_auth_error(trust_file, tmp_path):
    """Whatever the header and claims hold, the answer is a Client or an AuthError, never a crash;
    a token with a garbage signature is never accepted."""
    clock = Clock()
    auth = Authenticator.from_file(trust_file, public_base_url=BASE, clock=clock, http=requests.Session(),
                                   jti_store=SqliteJtiStore(tmp_path / "fuzz.sqlite3", clock=clock))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JKU_B, json=JWKS_B)

        @settings(max_examples=400, deadline=None, database=None)
        @given(_tokens())
        def check(text):
            try:
                client = auth.authenticate(bearer(text), PATH)
            except AuthError:
                return
            claims_ = jwt.decode(text, options={"verify_signature": False})
            assert jwt.get_unverified_header(text)["kid"] in _signers
            assert client.iss == claims_["iss"] and claims_["aud"] in (AUD, [AUD])

        check()
