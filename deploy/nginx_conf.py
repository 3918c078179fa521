"""Render deploy/nginx.conf (fill in its ${CDS_PROXY_*} placeholders), and make a
self-signed certificate for local use.

  CDS_PROXY_SERVER_NAME=cds.hospital.example.org CDS_PROXY_HTTPS_PORT=443 \\
  CDS_PROXY_TLS_CERT=/etc/ssl/cds/fullchain.pem CDS_PROXY_TLS_KEY=/etc/ssl/cds/key.pem \\
  CDS_PROXY_UPSTREAM=127.0.0.1:8080 CDS_PROXY_TEMP_DIR=/var/lib/nginx \\
      python deploy/nginx_conf.py > /etc/nginx/nginx.conf && nginx -t

  python deploy/nginx_conf.py --self-signed DIR [--name localhost]
      writes DIR/cert.pem and DIR/key.pem (kept if both exist): for a local stack
      (docker-compose.yml) and the tests, never for a hospital.

Only the CDS_PROXY_* names are replaced (nginx's own $variables are left alone, as
the nginx image's envsubst with NGINX_ENVSUBST_FILTER=CDS_PROXY_ does); a missing
value is an error, not an empty string in the config. Needs only the standard
library, plus `cryptography` (a dependency of the service) for --self-signed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Mapping

TEMPLATE = Path(__file__).with_name("nginx.conf")
PLACEHOLDERS = ("CDS_PROXY_SERVER_NAME", "CDS_PROXY_HTTPS_PORT", "CDS_PROXY_TLS_CERT", "CDS_PROXY_TLS_KEY",
                "CDS_PROXY_UPSTREAM", "CDS_PROXY_TEMP_DIR")
_PLACEHOLDER = re.compile(r"\$\{(CDS_PROXY_[A-Z0-9_]+)\}")


def placeholders(template: str | None = None) -> set[str]:
    """The CDS_PROXY_* names the template uses (comments included)."""
    text = TEMPLATE.read_text() if template is None else template
    return set(_PLACEHOLDER.findall(text))


def render(values: Mapping[str, str], template: str | None = None) -> str:
    text = TEMPLATE.read_text() if template is None else template
    missing = sorted(name for name in placeholders(text) if not str(values.get(name, "")).strip())
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    for name in placeholders(text):
        if re.search(r"[\s;{}'\"$]", str(values[name])):  # one nginx token each: no way to smuggle a directive in
            raise ValueError(f"{name} must be one word without ; {{ }} $ or quotes (got {values[name]!r})")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def self_signed(directory: Path, name: str = "localhost", days: int = 365) -> tuple[Path, Path]:
    """DIR/cert.pem and DIR/key.pem for `name` (and 127.0.0.1), made unless both exist."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    sans = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    old = os.umask(0o077)
    try:
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    finally:
        os.umask(old)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--self-signed", type=Path, metavar="DIR", help="write DIR/cert.pem and DIR/key.pem")
    parser.add_argument("--name", default="localhost", help="the certificate's host name (default localhost)")
    args = parser.parse_args(argv)
    if args.self_signed:
        cert, key = self_signed(args.self_signed, args.name)
        print(f"certificate {cert}, key {key}", file=sys.stderr)
        return 0
    try:
        sys.stdout.write(render(os.environ))
    except (KeyError, ValueError) as exc:
        print(f"nginx_conf: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
