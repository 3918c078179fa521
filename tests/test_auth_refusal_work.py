"""A refused client JWT costs the same work whoever its issuer is: a trusted `iss`
with a bad signature, an untrusted `iss`, a trusted one with an unknown kid or a key
of the wrong type all build one verification key and verify one signature. Counted
(which code runs), not timed: wall-clock margins fail on a loaded machine."""

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.hooks.auth import keys, verify
from cds_service.hooks.auth import AuthError, Authenticator, TrustConfig, TrustedClient
from cds_service.hooks.replay import SqliteJtiStore

BASE = "https://cds.example.org"
PATH = "/cds-services/trial-eligibility"
TRUSTED = "https://ehr.example.com/fhir"


def _keypair():
    private = ec.generate_private_key(ec.SECP384R1())
    public = {**jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "k1"}
    return private, public


KEY, PUBLIC = _keypair()
STRANGER, _ = _keypair()  # a key nobody trusts


@pytest.fixture
def authenticator(tmp_path):
    config = TrustConfig(algorithms=("ES384", "RS384"),
                         clients={TRUSTED: TrustedClient(iss=TRUSTED, jku=(), keys={"k1": PUBLIC}, tenants=None)})
    return Authenticator(config, public_base_url=BASE, jti_store=SqliteJtiStore(tmp_path / "jti.sqlite3"))


def token(iss=TRUSTED, key=KEY, kid="k1", alg="ES384"):
    now = time.time()
    claims = {"iss": iss, "aud": BASE + PATH, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


@pytest.fixture
def counted(monkeypatch):
    """How often a verification key is built and a signature verified (by PyJWT)."""
    calls = {"key": 0, "verify": 0}
    build, decode = Authenticator._verification_key, jwt.decode

    def counting_key(jwk, alg):
        calls["key"] += 1
        return build(jwk, alg)

    def counting_decode(*args, **kwargs):
        if (kwargs.get("options") or {}).get("verify_signature", True):
            calls["verify"] += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(Authenticator, "_verification_key", staticmethod(counting_key))
    monkeypatch.setattr(verify.jwt, "decode", counting_decode)
    return calls


@pytest.mark.parametrize("name, make, reason", [
    ("trusted iss, bad signature", lambda: token(key=STRANGER), "bad-signature"),
    ("untrusted iss", lambda: token(iss="https://evil.example.net", key=STRANGER), "untrusted-iss"),
    ("untrusted iss, a name like the trusted one", lambda: token(iss=TRUSTED + "/"), "untrusted-iss"),
    ("trusted iss, unknown kid", lambda: token(kid="nope", key=STRANGER), "unknown-kid"),
])
def test_every_refusal_after_the_header_builds_one_key_and_verifies_one_signature(
        authenticator, counted, name, make, reason):
    with pytest.raises(AuthError) as refused:
        authenticator.authenticate("Bearer " + make(), PATH)
    assert refused.value.reason == reason
    assert counted == {"key": 1, "verify": 1}, name


def test_a_good_token_does_the_same_work_once(authenticator, counted):
    client = authenticator.authenticate("Bearer " + token(), PATH)
    assert client.iss == TRUSTED and counted == {"key": 1, "verify": 1}


def test_the_decoy_key_verifies_nothing_and_is_made_once_per_algorithm(authenticator):
    decoy = keys.decoy_jwk("ES384")
    assert decoy is keys.decoy_jwk("ES384") and decoy["crv"] == "P-384" and "d" not in decoy
    assert keys.decoy_jwk("RS384")["kty"] == "RSA"  # made when the authenticator was (its algorithms)
    key = Authenticator._verification_key(decoy, "ES384")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token(), key.key, algorithms=["ES384"], audience=BASE + PATH)
