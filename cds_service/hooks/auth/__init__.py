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

from .keys import JWKS_TIMEOUT
from .trust import (AuthError, Client, TrustConfig, TrustConfigError, TrustedClient, TRUSTED_CLIENTS_ENV,
                    load_trust_config)
from .verify import DEFAULT_MAX_LIFETIME, Authenticator

# The package: trust.py (the trusted-clients file, its errors), keys.py (JWK Sets from jku URLs, the
# decoy keys), verify.py (the Authenticator). The replay stores are in hooks/replay.py.
__all__ = ["Authenticator", "AuthError", "Client", "TrustConfig", "TrustedClient", "TrustConfigError",
           "load_trust_config", "DEFAULT_MAX_LIFETIME", "JWKS_TIMEOUT", "TRUSTED_CLIENTS_ENV"]
