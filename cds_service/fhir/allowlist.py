"""FHIR server URLs as the allowlist reads them: normalised scheme, host, port and path,
and the characters that parsers disagree about refused."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit


_DEFAULT_PORTS = {"http": 80, "https": 443}


# Characters that parsers disagree about (urlsplit vs urllib3), so a URL holding
# them could be checked as one host and requested from another.
_UNSAFE_URL_CHARS = re.compile(r"[\\\s\x00-\x1f\x7f]")


def normalise_url(url: str) -> str | None:
    """`scheme://host[:port]/path[?query]` with scheme and host lower-cased, the
    default port and any fragment dropped; None for anything but a plain
    http(s) URL (userinfo, dot segments and ambiguous characters refused)."""
    if not isinstance(url, str) or _UNSAFE_URL_CHARS.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
        return None
    # A server resolves "..": /fhir/../admin would pass a prefix check on /fhir.
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{parts.path}{query}"


def normalise_base(url: str) -> str | None:
    normal = normalise_url(url)
    if normal is None or "?" in normal:
        return None
    return normal.rstrip("/")


def is_under(url: str, base: str) -> bool:
    return url == base or url.startswith(base + "/") or url.startswith(base + "?")
