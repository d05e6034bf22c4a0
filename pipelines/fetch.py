"""HTTP fetching for the download stage: address blocking, opt-outs, retries, keep-alive.

Destinations are checked after DNS resolution and on every redirect hop, and the connection
goes to the address that was checked (no second lookup a rebinding DNS server could answer
differently). Private, loopback, link-local, multicast, reserved and unspecified addresses
are refused with ``blocked_address:<kind>``; ``allow_loopback`` lifts the block for
127.0.0.0/8 and ::1 only. ``X-Robots-Tag`` directives are honoured with img2dataset's rule
(``noai``, ``noimageai``, ``noindex``, ``noimageindex``, optionally scoped to a user agent).
Connections are reused per thread and host (HTTP/1.1 keep-alive).
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

USER_AGENT = "Mozilla/5.0 (compatible; tic-benchmarks/0.1; +https://github.com/tic-benchmarks)"


@dataclass(frozen=True)
class FetchConfig:
    timeout: float = 2.0  # seconds per socket operation
    retries: int = 1  # extra attempts after a timeout, connection error or 5xx
    backoff: float = 0.2  # seconds before a retry
    max_bytes: int = 20 << 20
    max_redirects: int = 5
    allow_loopback: bool = False
    user_agent_token: str | None = "tic-bot"
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")


@dataclass
class FetchResult:
    body: bytes | None
    reason: str | None = None  # None on success
    http_status: int | None = None
    content_type: str | None = None
    final_url: str | None = None
    error_message: str | None = None
    headers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None


class FetchError(Exception):
    def __init__(self, reason: str, message: str = "", http_status: int | None = None, retry: bool = False):
        super().__init__(message or reason)
        self.reason, self.http_status, self.retry = reason, http_status, retry


def address_kind(ip: str) -> str | None:
    """Why ``ip`` must not be fetched from, or None if it is a public address."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link_local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "private"
    return None


def resolve_checked(host: str, port: int, cfg: FetchConfig) -> str:
    """Resolve ``host`` and return an allowed address; raise ``FetchError`` otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError("dns_error", str(e)) from e
    addrs = list(dict.fromkeys(i[4][0] for i in infos))
    for ip in addrs:  # every answer must be allowed, or a rebinding answer could slip through
        kind = address_kind(ip)
        if kind is None or (kind == "loopback" and cfg.allow_loopback):
            continue
        raise FetchError(f"blocked_address:{kind}", f"{host} resolves to {ip}")
    return addrs[0]


def is_disallowed(headers, user_agent_token: str | None, directives: tuple[str, ...]) -> str | None:
    """The first ``X-Robots-Tag`` directive that forbids us, as img2dataset's ``is_disallowed``
    decides it (a directive applies when it has no user-agent scope or names our token)."""
    token = (user_agent_token or "").strip().lower() or None
    wanted = {d.strip().lower() for d in directives}
    for value in headers.get_all("X-Robots-Tag") or []:
        scoped = value.split(":", 1)
        found = [x.strip().lower() for x in scoped[-1].split(",")]
        ua = scoped[0].strip().lower() if len(scoped) == 2 else None
        if ua is None or ua == token:
            for d in found:
                if d in wanted:
                    return d
    return None


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, ip, port, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, ip, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Fetcher:
    """Fetches URLs with per-thread keep-alive connections. Thread-safe."""

    def __init__(self, cfg: FetchConfig = FetchConfig()):
        self.cfg = cfg
        self._local = threading.local()
        self._ssl = ssl.create_default_context()

    def _conn(self, scheme: str, host: str, port: int):
        conns = self._local.__dict__.setdefault("conns", {})
        key = (scheme, host, port)
        conn = conns.get(key)
        if conn is None:
            ip = resolve_checked(host, port, self.cfg)
            if scheme == "https":
                conn = _PinnedHTTPSConnection(host, ip, port, self.cfg.timeout, self._ssl)
            else:
                conn = _PinnedHTTPConnection(host, ip, port, self.cfg.timeout)
            conns[key] = conn
        return conn

    def _drop(self, scheme, host, port):
        conn = self._local.__dict__.get("conns", {}).pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    def _once(self, url: str) -> FetchResult:
        for _hop in range(self.cfg.max_redirects + 1):
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https"):
                raise FetchError("unsupported_scheme", url)
            if not parts.hostname:
                raise FetchError("invalid_url", url)
            try:
                port = parts.port or (443 if scheme == "https" else 80)
            except ValueError as e:
                raise FetchError("invalid_url", str(e)) from e
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host_header = parts.netloc.rsplit("@", 1)[-1]
            conn = self._conn(scheme, parts.hostname, port)
            try:
                conn.request("GET", target, headers={"Host": host_header, "User-Agent": USER_AGENT,
                                                     "Accept": "image/*,*/*;q=0.8", "Connection": "keep-alive"})
                resp = conn.getresponse()
            except (socket.timeout, TimeoutError) as e:
                self._drop(scheme, parts.hostname, port)
                raise FetchError("timeout", str(e), retry=True) from e
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest,
                    http.client.ResponseNotReady) as e:
                # a kept-alive connection the server closed: one fresh try on a new connection
                self._drop(scheme, parts.hostname, port)
                conn = self._conn(scheme, parts.hostname, port)
                try:
                    conn.request("GET", target, headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.8"})
                    resp = conn.getresponse()
                except (socket.timeout, TimeoutError) as e2:
                    self._drop(scheme, parts.hostname, port)
                    raise FetchError("timeout", str(e2), retry=True) from e2
                except (OSError, http.client.HTTPException) as e2:
                    self._drop(scheme, parts.hostname, port)
                    raise FetchError("connection_error", f"{type(e2).__name__}: {e2}", retry=True) from e2
            except (OSError, http.client.HTTPException) as e:
                self._drop(scheme, parts.hostname, port)
                raise FetchError("connection_error", f"{type(e).__name__}: {e}", retry=True) from e
            try:
                status = resp.status
                if status in (301, 302, 303, 307, 308):
                    resp.read()
                    location = resp.getheader("Location")
                    if not location:
                        raise FetchError(f"http_{status}", "redirect without Location", status)
                    url = urljoin(url, location)
                    continue
                if status != 200:
                    resp.read()
                    raise FetchError(f"http_{status}", resp.reason, status, retry=status >= 500)
                directive = is_disallowed(resp.headers, self.cfg.user_agent_token, self.cfg.disallowed_header_directives)
                if directive:
                    resp.read()
                    raise FetchError(f"opt_out:{directive}", "X-Robots-Tag", status)
                ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > self.cfg.max_bytes:
                    self._drop(scheme, parts.hostname, port)
                    raise FetchError("too_large", f"Content-Length {length}", status)
                if ctype and not (ctype.startswith("image/") or ctype in ("application/octet-stream", "binary/octet-stream")):
                    resp.read(self.cfg.max_bytes + 1)
                    raise FetchError(f"not_an_image:{ctype}", "", status)
                body = resp.read(self.cfg.max_bytes + 1)
                if len(body) > self.cfg.max_bytes:
                    self._drop(scheme, parts.hostname, port)
                    raise FetchError("too_large", f"more than {self.cfg.max_bytes} bytes", status)
                if resp.will_close:
                    self._drop(scheme, parts.hostname, port)
                return FetchResult(body, None, status, ctype, url)
            except (socket.timeout, TimeoutError) as e:
                self._drop(scheme, parts.hostname, port)
                raise FetchError("timeout", str(e), retry=True) from e
            except http.client.IncompleteRead as e:
                self._drop(scheme, parts.hostname, port)
                raise FetchError("connection_error", "incomplete read", retry=True) from e
        raise FetchError("too_many_redirects", f"more than {self.cfg.max_redirects}")

    def fetch(self, url: str) -> FetchResult:
        err = None
        for attempt in range(self.cfg.retries + 1):
            try:
                return self._once(url)
            except FetchError as e:
                err = e
                if not e.retry or attempt == self.cfg.retries:
                    break
                time.sleep(self.cfg.backoff * (attempt + 1))
        return FetchResult(None, err.reason, err.http_status, error_message=str(err)[:300])
