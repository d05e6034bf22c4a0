"""URL normalisation: one spelling per resource, so first-seen matching and uids agree.

Lower-case scheme and host, IDNA host, default ports dropped, dot segments resolved, fragment
dropped, percent-encoding made consistent (unreserved characters decoded, everything unsafe
encoded); the query is kept as written (its order can matter to the server).
"""
from __future__ import annotations

import posixpath
import re
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SAFE_PATH = "/:@!$&'()*+,;=-._~%"
_SAFE_QUERY = _SAFE_PATH + "?/"
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


def is_http_url(url: str | None) -> bool:
    return bool(url) and url.strip().lower().startswith(("http://", "https://"))


_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _pct(m: re.Match) -> str:
    ch = chr(int(m.group(0)[1:], 16))
    return ch if ch in _UNRESERVED else m.group(0).upper()


def _requote(part: str, safe: str) -> str:
    """Decode escapes of unreserved characters (%7E -> ~), upper-case the others (%2f -> %2F),
    and escape what must be escaped; reserved characters keep their meaning."""
    if not part:
        return part
    return quote(_PCT.sub(_pct, part), safe=safe, errors="surrogateescape")


def resolve(src: str, base: str) -> str | None:
    """Absolute URL of ``src`` found on the page at ``base`` (handles relative and //host forms)."""
    src = (src or "").strip()
    if not src:
        return None
    try:
        return urljoin(base, src)
    except ValueError:
        return None


def normalize_url(url: str | None) -> str | None:
    """Canonical form of an http(s) URL, or None if it is not a usable http(s) URL."""
    if not url:
        return None
    url = url.strip().replace("\\", "/")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            return None
        host = parts.hostname.rstrip(".")
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            host = host.lower()
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return None
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path or "/"
    trailing = path.endswith("/")
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if trailing and not path.endswith("/"):
        path += "/"
    return urlunsplit((scheme, netloc, _requote(path, _SAFE_PATH), _requote(parts.query, _SAFE_QUERY), ""))
