"""URL normalisation: one spelling per resource, so first-seen matching and uids agree.

Lower-case scheme and host, IDNA host, default ports dropped, dot segments resolved, fragment
dropped, percent-encoding made consistent (unreserved characters decoded, everything unsafe
encoded); the query is kept as written (its order can matter to the server).

``check_url`` is the strict form the download stage uses (for crawl URLs and every redirect
target): it returns the canonical URL or a reason ``invalid_url:<why>`` (``scheme``,
``no_host``, ``port``, ``ipv6``, ``empty_label``, ``label_too_long``, ``host_too_long``,
``idna``, ``host_chars``, ``netloc``). ``normalize_url`` is the crawl's lenient form: it keeps a URL whose
host fails IDNA (lower-cased as written), so the candidate reaches the download stage and is
accounted for there with its reason instead of vanishing at the crawl.
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


_LABEL = re.compile(r"[a-z0-9_-]+\Z")
_IPV6_CHARS = re.compile(r"[0-9a-f:.]+(%[0-9a-z._~-]+)?\Z")


def _host_problem(host: str) -> tuple[str | None, str]:
    """(why the host is unusable or None, its ASCII form)."""
    if not host:
        return "no_host", host
    if ":" in host:  # IPv6 literal (urlsplit checked the brackets)
        return (None, host) if _IPV6_CHARS.match(host) else ("ipv6", host.lower())
    labels = host.split(".")
    if any(not label for label in labels):
        return "empty_label", host.lower()
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ("label_too_long" if any(len(label) > 63 for label in labels) else "idna"), host.lower()
    labels = ascii_host.split(".")
    if any(len(label) > 63 for label in labels):
        return "label_too_long", ascii_host
    if len(ascii_host) > 253:
        return "host_too_long", ascii_host
    if not all(_LABEL.match(label) for label in labels):
        return "host_chars", ascii_host
    return None, ascii_host


def _normalize(url: str | None, strict: bool) -> tuple[str | None, str | None]:
    if not url:
        return None, "invalid_url:empty"
    url = url.strip().replace("\\", "/")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            return None, "invalid_url:scheme"
        if not parts.hostname:
            return None, "invalid_url:no_host"
        host = parts.hostname.rstrip(".")
        problem, ascii_host = _host_problem(host)
        if problem and strict:
            return None, f"invalid_url:{problem}"
        host = ascii_host  # as written (lower-cased) when it has no ASCII form
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            return None, "invalid_url:port"
    except ValueError as e:  # an unbalanced IPv6 bracket; characters NFKC turns into URL delimiters
        return None, "invalid_url:ipv6" if "IPv6" in str(e) else "invalid_url:netloc"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path or "/"
    trailing = path.endswith("/")
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if trailing and not path.endswith("/"):
        path += "/"
    return urlunsplit((scheme, netloc, _requote(path, _SAFE_PATH), _requote(parts.query, _SAFE_QUERY), "")), None


def normalize_url(url: str | None) -> str | None:
    """Canonical form of an http(s) URL, or None if it is not a usable http(s) URL."""
    return _normalize(url, strict=False)[0]


def check_url(url: str | None) -> tuple[str | None, str | None]:
    """(canonical URL, None) for a fetchable http(s) URL, else (None, ``invalid_url:<why>``)."""
    return _normalize(url, strict=True)
