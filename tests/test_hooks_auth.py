"""Client JWTs on the HTTP endpoints: every call to discovery, the service and
feedback must carry one, with `aud` the exact public URL of that endpoint."""

import json
import time
import uuid

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.hooks.replay import ReplayStoreUnavailable
from hookdata import demo

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org/fhir"
KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_KEY = ec.generate_private_key(ec.SECP384R1())
SERVICE = "/cds-services/trial-eligibility"


def public_jwk(private_key, kid):
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    return dict(jwk, kid=kid, alg="ES384", use="sig")


def token(path, *, key=KEY, kid="ehr-1", aud=None, **claims):
    now = int(time.time())
    payload = {"iss": ISS, "aud": aud if aud is not None else BASE + path, "iat": now, "exp": now + 300,
               "jti": str(uuid.uuid4())}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})


@pytest.fixture
def app(make_app, tmp_path):
    trusted = tmp_path / "trusted-clients.yaml"
    trusted.write_text(yaml.safe_dump({"clients": [{"iss": ISS, "jwks": {"keys": [public_jwk(KEY, "ehr-1")]}}]}))
    return make_app(trusted_clients=trusted, public_base_url=BASE)


def call(client, method, path, jwt_token=None, body=None):
    headers = {"Authorization": f"Bearer {jwt_token}"} if jwt_token else {}
    if body is None:
        return client.open(path, method=method, headers=headers)
    return client.open(path, method=method, headers=headers, data=json.dumps(body),
                       content_type="application/json")


def test_every_cds_endpoint_needs_a_token(app):
    client = app.test_client()
    for method, path, body in (("GET", "/cds-services", None), ("POST", SERVICE, demo()),
                               ("POST", SERVICE + "/feedback", {"feedback": []})):
        response = call(client, method, path, body=body)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_valid_tokens_for_each_endpoint(app):
    client = app.test_client()
    assert call(client, "GET", "/cds-services", token("/cds-services")).status_code == 200
    response = call(client, "POST", SERVICE, token(SERVICE), demo())
    assert response.status_code == 200 and response.get_json()["cards"]
    item = {"card": response.get_json()["cards"][0]["uuid"], "outcome": "overridden",
            "outcomeTimestamp": "2026-06-15T14:00:00Z"}
    feedback = SERVICE + "/feedback"
    assert call(client, "POST", feedback, token(feedback), {"feedback": [item]}).status_code == 200


@pytest.mark.parametrize("make_token", [
    lambda: token(SERVICE, aud=BASE + "/cds-services"),  # the discovery audience on the service
    lambda: token(SERVICE, aud=BASE + SERVICE + "/"),  # trailing slash
    lambda: token(SERVICE, aud="http://cds.example.org" + SERVICE),  # another scheme
    lambda: token(SERVICE, key=OTHER_KEY),  # signed by a key the issuer does not have
    lambda: token(SERVICE, kid="unknown"),
    lambda: token(SERVICE, iss="https://someone-else.example.org"),
    lambda: token(SERVICE, exp=int(time.time()) - 3600),
    lambda: jwt.encode({"iss": ISS, "aud": BASE + SERVICE, "iat": int(time.time()), "exp": int(time.time()) + 60,
                        "jti": "x"}, "a-shared-secret-that-is-long-enough-32b", algorithm="HS256", headers={"kid": "ehr-1"}),
])
def test_bad_tokens_get_an_identical_bare_401(app, make_token):
    response = call(app.test_client(), "POST", SERVICE, make_token(), demo())
    assert response.status_code == 401
    assert response.get_json() == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "login", "diagnostics": "authentication required"}]}


def test_feedback_token_with_the_service_audience_is_refused(app):
    feedback = SERVICE + "/feedback"
    body = {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-06-15T14:00:00Z"}]}
    assert call(app.test_client(), "POST", feedback, token(SERVICE), body).status_code == 401


def test_replayed_token_is_refused_and_logged_without_the_token(app, no_secrets_in_logs):
    client = app.test_client()
    once = token("/cds-services")
    assert call(client, "GET", "/cds-services", once).status_code == 200
    assert call(client, "GET", "/cds-services", once).status_code == 401
    rejected = [json.loads(line) for line in no_secrets_in_logs.lines if '"rejected"' in line]
    assert rejected[-1]["reason"] == "replay" and rejected[-1]["iss"] == ISS and rejected[-1]["jti"]
    assert all(once not in line and once.split(".")[2] not in line for line in no_secrets_in_logs.lines)


def test_open_endpoints_and_preflight(make_app, tmp_path):
    trusted = tmp_path / "trusted-clients.yaml"
    trusted.write_text(yaml.safe_dump({"clients": [{"iss": ISS, "jwks": {"keys": [public_jwk(KEY, "ehr-1")]}}]}))
    app = make_app(trusted_clients=trusted, public_base_url=BASE, cors_origins=("https://ehr-ui.example.org",))
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    preflight = client.options(SERVICE, headers={"Origin": "https://ehr-ui.example.org",
                                                 "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "Authorization"})
    assert preflight.status_code == 200 and "Access-Control-Allow-Origin" in preflight.headers


def test_replay_store_down_fails_closed_with_503(app, monkeypatch):
    def broken(*args):
        raise ReplayStoreUnavailable("OperationalError")

    monkeypatch.setattr(app.extensions["cds_authenticator"]._jti_store, "remember", broken)
    response = call(app.test_client(), "GET", "/cds-services", token("/cds-services"))
    assert response.status_code == 503
