"""HTTP fetching for the download stage: address blocking, opt-outs, deadlines, caps, politeness.

Every outcome is a ``FetchResult``; nothing raises out of ``Fetcher.fetch``. Reasons:

- ``invalid_url:<why>`` (``pipelines.urls.check_url``: scheme, host, IDNA, label length, port),
  checked for the crawl URL and for every redirect target, which is normalised like a crawl URL
  (a non-ASCII ``Location`` is read as the UTF-8 bytes the server sent and percent-encoded);
- ``dns_error``, ``blocked_address:<kind>``, ``connection_error``, ``connection_reset``,
  ``tls_error``, ``bad_response`` (unparseable status line or headers), ``timeout``;
- ``http_<code>``, ``too_many_redirects``, ``redirect_loop``, ``opt_out:<directive>``,
  ``not_an_image:<content-type>``, ``too_large``, ``unsupported_encoding:<enc>``,
  ``bad_content_encoding:<enc>``;
- ``shard_deadline`` when the shard's watchdog cancelled the download (see ``Cancel``);
- ``fetch_error:<ExceptionType>`` as the last resort, the message in ``error_message``.

Local images (TiC-YFCC's and TiC-RedCaps' image folders, ``--image-root``): a ``file://`` URL is
read from disk, only under ``FetchConfig.local_root`` (``invalid_url:file_outside_image_root``
otherwise, and for every ``file://`` URL when no root is set; ``invalid_url:file_path`` for a path
with a NUL byte), with the same ``max_bytes`` cap
(``too_large``, checked before reading); ``file_not_found``, ``unreadable_file`` (not a regular
file, no permission). Format and decode guards are the download stage's, as for a fetched body.

Destinations are checked after DNS resolution and on every redirect hop, and the connection
goes to the address that was checked (no second lookup a rebinding DNS server could answer
differently). Private, loopback, link-local, multicast, reserved and unspecified addresses
are refused with ``blocked_address:<kind>`` before connecting; ``allow_loopback`` lifts the
block for 127.0.0.0/8 and ::1 only (not for their IPv4-mapped form ``::ffff:127.0.0.1``).
``X-Robots-Tag`` directives are honoured with img2dataset's rule (``noai``, ``noimageai``,
``noindex``, ``noimageindex``, optionally scoped to a user agent).

Deadlines: ``timeout`` bounds a whole attempt (DNS excepted: connect, TLS, every redirect hop,
headers, body): every socket read and write runs with the time left as its timeout and fails
once it is spent, so a server dripping a byte a second cannot hold a download longer. The time
counted is the server's: the kernel's waits inside socket calls (a receive until its packet
arrived, by the kernel's timestamp on Linux; a connect or send the kernel completed at once counts
nothing). This process's own time (parsing, a thread starved of CPU or waiting for the GIL on a busy
machine, waiting for a host slot before a redirect hop) moves the deadlines instead, so a prompt answer, or a prompt redirect chain, never times out because
the machine was busy; the shard's watchdog bounds the wall time. All attempts together (backoff
sleeps included) use at most ``timeout x (retries + 1)`` of it. A download waits for its host's
slot (``max_per_host`` concurrent requests per host name) before its clock starts.

Memory: an image body is read up to ``max_bytes`` (``too_large`` beyond, also after gzip
decoding); bodies of redirects, errors and refused answers are read only when announced with
a ``Content-Length`` of at most ``max_error_body`` (to keep the connection), otherwise the
connection is closed unread, so an endless chunked 404 costs nothing. ``gzip``/``deflate``
``Content-Encoding`` is decoded (streaming, capped): the stored bytes are the image the
server meant; other encodings get ``unsupported_encoding:<enc>``.

Retries: ``timeout``, connection errors, 429 and 5xx are retried ``retries`` times after a
backoff; on 429/503 a ``Retry-After`` (seconds or HTTP date) longer than the backoff is
honoured when it fits in the download's deadline, else the download ends at once with
``http_429``/``http_503``. Connections are reused per thread and host (HTTP/1.1 keep-alive);
a request that fails on a reused connection is tried once more on a fresh one.
"""
from __future__ import annotations

import email.utils
import errno
import http.client
import io
import ipaddress
import math
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from pipelines.urls import check_url


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tic-benchmarks")
    except Exception:  # not installed (a plain checkout on PYTHONPATH)
        return "0.1.0"


VERSION = _version()
USER_AGENT_CONTACT = "https://github.com/tic-benchmarks"
REDIRECTS = (301, 302, 303, 307, 308)
DECODED_ENCODINGS = ("gzip", "x-gzip", "deflate")


def user_agent(contact: str = USER_AGENT_CONTACT) -> str:
    """``tic-benchmarks/<version> (+<contact>)``: who is crawling and how to reach them."""
    contact = "".join(c if " " <= c <= "~" else "?" for c in (contact or USER_AGENT_CONTACT))  # one printable ASCII line
    return f"tic-benchmarks/{VERSION} (+{contact})"


@dataclass(frozen=True)
class FetchConfig:
    timeout: float = 2.0  # seconds per attempt in total: connect, every redirect hop, headers and body
    retries: int = 1  # extra attempts after a timeout, connection error, 429 or 5xx
    backoff: float = 0.2  # seconds before a retry (x attempt number); Retry-After may ask for longer
    max_bytes: int = 20 << 20  # image body cap (after Content-Encoding decoding)
    max_error_body: int = 64 << 10  # redirect/error bodies announced at most this long are read (keep-alive)
    max_redirects: int = 5
    allow_loopback: bool = False
    max_per_host: int = 16  # concurrent requests per host name, across the Fetcher's threads
    user_agent_contact: str = USER_AGENT_CONTACT
    user_agent_token: str | None = "tic-bot"
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    local_root: str = ""  # folder whose ``file://`` images may be read ("": no local reads)


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
    def __init__(self, reason: str, message: str = "", http_status: int | None = None, retry: bool = False,
                 retry_after: float | None = None):
        super().__init__(message or reason)
        self.reason, self.http_status, self.retry, self.retry_after = reason, http_status, retry, retry_after


class Cancel:
    """A watchdog's handle on the downloads it may give up on: ``fire`` shuts the sockets they
    are blocked on and wakes their sleeps; they end with ``shard_deadline``."""

    def __init__(self):
        self.event = threading.Event()
        self._socks: set = set()
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def track(self, sock) -> None:
        with self._lock:
            self._socks.add(sock)
        if self.cancelled:
            _shut(sock)

    def untrack(self, sock) -> None:
        with self._lock:
            self._socks.discard(sock)

    def fire(self) -> None:
        self.event.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _shut(s)


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
    except OSError:
        pass


def address_kind(ip: str) -> str | None:
    """Why ``ip`` must not be fetched from, or None if it is a public address."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
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


def _loopback_allowed(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    return addr.is_loopback and not (isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None)


def resolve_checked(host: str, port: int, cfg: FetchConfig, getaddrinfo=socket.getaddrinfo) -> str:
    """Resolve ``host`` and return an allowed address; raise ``FetchError`` otherwise."""
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError("dns_error", str(e)) from e
    except UnicodeError as e:  # check_url ran before: only a host the resolver's codec still refuses
        raise FetchError("invalid_url:idna", str(e)) from e
    addrs = list(dict.fromkeys(i[4][0] for i in infos))
    if not addrs:
        raise FetchError("dns_error", f"{host} has no address")
    for ip in addrs:  # every answer must be allowed, or a rebinding answer could slip through
        kind = address_kind(ip)
        if kind is None or (kind == "loopback" and cfg.allow_loopback and _loopback_allowed(ip)):
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


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        import datetime as dt

        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


# Linux's SO_TIMESTAMPNS (asm-generic value; Python's socket module does not name it): the kernel
# stamps each received packet with its arrival time (CLOCK_REALTIME, a struct timespec)
_SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") else None
_ANCILLARY = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0


def _arrival(ancdata) -> float | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9
    return None


class _Clock:
    """The server time one hop of a fetch may still use: only the kernel's waits for the server count.

    ``left`` is called right before a socket call (connect, send, a receive that waits for bytes)
    and ``waited`` right after it, with the part of the call the server decided when the kernel
    tells it: a receive counts until its first packet arrived (the packet's kernel timestamp), a
    connect or send that the kernel completed at once counts nothing. What a thread does between
    socket calls, and its wait for the GIL after one, is this process's own time (parsing, or a
    thread starved of CPU on a busy machine) and never counts, so a busy machine never turns a
    prompt answer into a timeout, while a stall, a drip or a lying Content-Length still ends once
    ``spent`` reaches the hop's allowance."""

    def __init__(self):
        self.allowance, self.spent = math.inf, 0.0
        self._call_since: float | None = None

    def set(self, seconds: float) -> None:
        self.allowance, self.spent, self._call_since = seconds, 0.0, None

    def left(self) -> float:
        now = time.monotonic()
        if self._call_since is not None:  # a socket call without ``waited``: its time counts
            self.spent += now - self._call_since
        left = self.allowance - self.spent
        if left <= 0:
            self._call_since = None
            raise TimeoutError("download deadline passed")
        self._call_since = now
        return left

    def waited(self, server_seconds: float | None = None) -> None:
        """A socket call returned (or failed): from here on the time is ours until the next one.
        ``server_seconds``: how long of it the kernel waited for the server, when known (see
        ``_DeadlineReader``); otherwise the call's whole wall time counts, which also holds the
        wait for the GIL after the kernel returned."""
        if self._call_since is not None:
            self.spent += time.monotonic() - self._call_since if server_seconds is None else server_seconds
            self._call_since = None


class _DeadlineReader(io.RawIOBase):
    """A reading file over the socket, counted like ``socket.makefile``'s: http.client closes the
    connection as soon as it sees ``Connection: close`` (every HTTP/1.0 server), before the body
    is read; the socket must stay open until this reader is closed too."""

    def __init__(self, sock, clock: _Clock, stamped: bool = False):
        self._sock, self._clock, self._stamped = sock, clock, stamped
        sock._io_refs += 1

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._sock.settimeout(self._clock.left())
        start, server = time.time(), None
        try:
            if not self._stamped:
                return self._sock.recv_into(b)
            n, ancdata, _, _ = self._sock.recvmsg_into([b], _ANCILLARY)
            at = _arrival(ancdata)
            if at is not None:  # data that was waiting already costs the server nothing
                server = max(0.0, at - start)
            return n
        finally:
            self._clock.waited(server)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock._decref_socketios()


class _DeadlineSocket:
    """What http.client sees as its socket: every read and write gets the time left."""

    def __init__(self, raw, clock: _Clock, stamped: bool = False):
        self.raw, self._clock, self._stamped = raw, clock, stamped

    def sendall(self, data) -> None:
        left, server = self._clock.left(), None
        try:
            sent = 0
            if self._stamped:  # a plain socket: what the kernel takes at once costs the server nothing
                self.raw.settimeout(0)
                try:
                    sent = self.raw.send(data)
                except BlockingIOError:
                    pass
            if sent == len(data):
                server = 0.0
            else:
                self.raw.settimeout(left)
                self.raw.sendall(memoryview(data)[sent:])
        finally:
            self._clock.waited(server)

    def makefile(self, mode="rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self.raw, self._clock, self._stamped))

    def close(self) -> None:
        self.raw.close()

    def __getattr__(self, name):
        return getattr(self.raw, name)


class _Conn(http.client.HTTPConnection):
    """HTTP to the address that was checked, under a deadline."""

    def __init__(self, host: str, ip: str, port: int):
        super().__init__(host, port)
        self._ip, self.clock = ip, _Clock()

    def _open(self):
        """A connected socket; a handshake the kernel finished at once costs the server nothing,
        one the server's full accept queue delays counts until it is done."""
        family = socket.AF_INET6 if ":" in self._ip else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        left, server = self.clock.left(), None
        try:
            raw.settimeout(0)
            err = raw.connect_ex((self._ip, self.port))
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                raise OSError(err, os.strerror(err))
            poller = select.poll()
            poller.register(raw, select.POLLOUT)
            if err == 0 or poller.poll(0):
                server = 0.0
            elif not poller.poll(left * 1000):
                raise TimeoutError("connect: no answer within the download deadline")
            err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except BaseException:
            raw.close()
            raise
        finally:
            self.clock.waited(server)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return raw

    def connect(self):
        raw = self._open()
        stamped = False
        if _SO_TIMESTAMPNS is not None:
            try:
                raw.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                stamped = True
            except OSError:
                pass
        self.sock = _DeadlineSocket(raw, self.clock, stamped)


class _TLSConn(_Conn):
    def __init__(self, host: str, ip: str, port: int, context: ssl.SSLContext):
        super().__init__(host, ip, port)
        self._context = context

    def connect(self):
        raw = self._open()
        try:
            raw.settimeout(self.clock.left())
            raw = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        finally:
            self.clock.waited()
        self.sock = _DeadlineSocket(raw, self.clock)


TIMEOUT_MESSAGE = "no complete answer within the download deadline"


def classify(e: BaseException) -> FetchError | None:
    """The reason for an exception raised by a request, or None for an unexpected one."""
    if isinstance(e, FetchError):
        return e
    msg = f"{type(e).__name__}: {e}"[:300]
    if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError; where the deadline struck is timing, not content
        return FetchError("timeout", TIMEOUT_MESSAGE, retry=True)
    if isinstance(e, http.client.RemoteDisconnected):
        return FetchError("connection_error", msg, retry=True)
    if isinstance(e, ConnectionResetError):
        return FetchError("connection_reset", msg, retry=True)
    if isinstance(e, http.client.IncompleteRead):
        return FetchError("connection_error", f"IncompleteRead: body ended early ({len(e.partial)} bytes)", retry=True)
    if isinstance(e, ssl.SSLError):
        return FetchError("tls_error", msg)
    if isinstance(e, OSError):
        return FetchError("connection_error", msg, retry=True)
    if isinstance(e, http.client.HTTPException):  # bad status line, header line too long, too many headers
        return FetchError("bad_response", msg)
    return None


@dataclass
class _Budget:
    """Deadlines of one ``fetch``: all attempts end by ``end``; the clock starts at the first slot."""

    timeout: float
    attempts: int
    end: float | None = None
    attempt_end: float | None = None

    def start_attempt(self) -> None:
        now = time.monotonic()
        if self.end is None:
            self.end = now + self.timeout * self.attempts
        self.attempt_end = min(now + self.timeout, self.end)

    idle_since: float | None = None  # when the last hop ended: from there to the next hop's start is ours

    def pause(self, seconds: float) -> None:
        """Time that is not the server's (our own queue for a host slot between redirect hops, our
        own work and CPU starvation between socket calls): the deadlines move by it, so a busy
        machine never turns a redirect into a timeout (the shard's watchdog still bounds it)."""
        self.attempt_end += seconds
        self.end += seconds

    def hop_done(self, own_seconds: float) -> None:
        self.pause(max(0.0, own_seconds))
        self.idle_since = time.monotonic()


class Fetcher:
    """Fetches URLs with per-thread keep-alive connections and per-host slots. Thread-safe."""

    def __init__(self, cfg: FetchConfig = FetchConfig(), getaddrinfo=socket.getaddrinfo):
        """``getaddrinfo``: the resolver (``socket.getaddrinfo``'s signature); tests give one that
        answers from a table, so no lookup leaves the machine."""
        self.cfg, self._getaddrinfo = cfg, getaddrinfo
        self.user_agent = user_agent(cfg.user_agent_contact)
        self._local = threading.local()
        self._ssl = ssl.create_default_context()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    # connections -------------------------------------------------------------------------
    def _conn(self, scheme: str, host: str, port: int) -> _Conn:
        conns = self._local.__dict__.setdefault("conns", {})
        key = (scheme, host, port)
        conn = conns.get(key)
        if conn is None:
            ip = resolve_checked(host, port, self.cfg, self._getaddrinfo)
            conn = _TLSConn(host, ip, port, self._ssl) if scheme == "https" else _Conn(host, ip, port)
            conns[key] = conn
        return conn

    def _drop(self, scheme: str, host: str, port: int) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, host, port), None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    @contextmanager
    def _slot(self, host: str, budget: _Budget, cancel: Cancel):
        """At most ``max_per_host`` requests to ``host`` at once. Waiting for a slot is not part of
        the deadline (it measures the servers, not our queue): the first hop's clock starts when it
        gets its slot and a later hop's wait moves the deadlines; the shard's watchdog bounds every wait."""
        with self._slots_lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(max(1, self.cfg.max_per_host)))
        first = budget.attempt_end is None
        t0 = time.monotonic() if first or budget.idle_since is None else budget.idle_since
        while True:
            if cancel.cancelled:
                raise FetchError("shard_deadline", "cancelled while waiting for a host slot")
            if sem.acquire(timeout=0.25):
                break
        try:
            if first:
                budget.start_attempt()
            else:
                budget.pause(time.monotonic() - t0)
            yield
        finally:
            sem.release()

    def _request(self, scheme: str, host: str, port: int, target: str, headers: dict, allowance: float, cancel: Cancel):
        """Send the request and read the response head; one fresh retry if a reused connection fails.
        ``allowance``: the server time the hop may use (the returned clock counts what it used)."""
        spent = 0.0
        for fresh_try in (False, True):
            conn = self._conn(scheme, host, port)
            conn.clock.set(allowance - spent)
            reused = conn.sock is not None
            raw = None
            try:
                if not reused:
                    conn.connect()
                raw = conn.sock.raw
                cancel.track(raw)
                conn.request("GET", target, headers=headers)
                return raw, conn.getresponse(), conn.clock
            except Exception as e:
                if raw is not None:
                    cancel.untrack(raw)
                self._drop(scheme, host, port)
                if cancel.cancelled:
                    raise FetchError("shard_deadline", f"cancelled: {type(e).__name__}") from e
                if reused and not fresh_try and not isinstance(e, TimeoutError):
                    spent += conn.clock.spent
                    continue  # a kept-alive connection the server closed (or left in a bad state)
                raise

    def _discard(self, resp, key: tuple) -> None:
        """Finish with a response whose body we do not want: read it only if it is announced small."""
        if not resp.chunked and resp.length is not None and resp.length <= self.cfg.max_error_body and not resp.will_close:
            resp.read()
        else:
            self._drop(*key)

    def _read_body(self, resp, key: tuple, encoding: str) -> bytes:
        cap = self.cfg.max_bytes
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in DECODED_ENCODINGS else None
        chunks, n = [], 0
        while True:
            data = resp.read1(1 << 16)  # one socket read at most: the deadline is checked per read
            if not data:
                break
            if inflate is not None:
                try:
                    data = inflate.decompress(data, cap + 1 - n)
                except zlib.error as e:
                    self._drop(*key)
                    raise FetchError(f"bad_content_encoding:{encoding}", str(e)) from e
                if inflate.unconsumed_tail:
                    n = cap + 1
            n += len(data)
            if n > cap:
                self._drop(*key)
                raise FetchError("too_large", f"more than {cap} bytes" + (" after decoding" if inflate else ""), 200)
            chunks.append(data)
        if resp.length:  # the connection ended before Content-Length bytes came
            self._drop(*key)
            raise FetchError("connection_error", f"body ended {resp.length} bytes short of its Content-Length", retry=True)
        if not resp.isclosed():
            resp.read()  # zero bytes left: lets http.client release the connection for the next request
        if inflate is not None and not inflate.eof:
            self._drop(*key)
            raise FetchError(f"bad_content_encoding:{encoding}", "compressed body is truncated")
        if resp.will_close:
            self._drop(*key)
        return b"".join(chunks)

    # one attempt -------------------------------------------------------------------------
    def _attempt(self, url: str, budget: _Budget, cancel: Cancel) -> FetchResult:
        budget.attempt_end, budget.idle_since = None, None
        seen = {url}
        for _hop in range(self.cfg.max_redirects + 1):
            parts = urlsplit(url)
            scheme, host = parts.scheme, parts.hostname
            port = parts.port or (443 if scheme == "https" else 80)
            key = (scheme, host, port)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": self.user_agent,
                       "Accept": "image/*,*/*;q=0.8", "Connection": "keep-alive"}
            with self._slot(host, budget, cancel):
                start = time.monotonic()
                if budget.attempt_end <= start:
                    raise FetchError("timeout", TIMEOUT_MESSAGE, retry=True)
                clock = self._conn(scheme, host, port).clock  # the hop's clock, also when _request raises
                try:
                    raw, resp, clock = self._request(scheme, host, port, target, headers, budget.attempt_end - start, cancel)
                    try:
                        result = self._response(url, resp, key)
                    except Exception as e:
                        self._drop(*key)
                        if cancel.cancelled:
                            raise FetchError("shard_deadline", f"cancelled: {type(e).__name__}") from e
                        raise
                    finally:
                        cancel.untrack(raw)
                finally:
                    # only the hop's server time counts: the rest of its wall time moves the deadlines
                    budget.hop_done(time.monotonic() - start - clock.spent)
            if isinstance(result, FetchResult):
                return result
            if result in seen:
                raise FetchError("redirect_loop", f"{result} was visited before")
            seen.add(result)
            url = result
        raise FetchError("too_many_redirects", f"more than {self.cfg.max_redirects}")

    def _response(self, url: str, resp, key: tuple) -> FetchResult | str:
        """A finished result, or the next URL of a redirect."""
        status = resp.status
        if status in REDIRECTS:
            location = resp.getheader("Location")
            self._discard(resp, key)
            if not location:
                raise FetchError(f"http_{status}", "redirect without Location", status)
            # http.client decodes header bytes as latin-1: recover them, read them as UTF-8
            location = location.strip().encode("latin-1", "replace").decode("utf-8", "surrogateescape")
            try:
                nxt = urljoin(url, location)
            except ValueError as e:
                raise FetchError("invalid_url:ipv6", f"redirect to {location!r}: {e}", status) from e
            nxt, why = check_url(nxt)
            if why:
                raise FetchError(why, f"redirect to {location!r}"[:300], status)
            return nxt
        if status != 200:
            retry_after = retry_after_seconds(resp.getheader("Retry-After")) if status in (429, 503) else None
            self._discard(resp, key)
            raise FetchError(f"http_{status}", resp.reason, status, retry=status == 429 or status >= 500, retry_after=retry_after)
        directive = is_disallowed(resp.headers, self.cfg.user_agent_token, self.cfg.disallowed_header_directives)
        if directive:
            self._discard(resp, key)
            raise FetchError(f"opt_out:{directive}", "X-Robots-Tag", status)
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if ctype and not (ctype.startswith("image/") or ctype in ("application/octet-stream", "binary/octet-stream")):
            self._discard(resp, key)
            raise FetchError(f"not_an_image:{ctype}"[:100], "", status)
        encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "") + DECODED_ENCODINGS:
            self._discard(resp, key)
            raise FetchError(f"unsupported_encoding:{encoding}"[:100], "", status)
        if resp.length is not None and resp.length > self.cfg.max_bytes and encoding in ("identity", ""):
            self._drop(*key)
            raise FetchError("too_large", f"Content-Length {resp.length}", status)
        body = self._read_body(resp, key, encoding)
        return FetchResult(body, None, status, ctype, url)

    # public ------------------------------------------------------------------------------
    def fetch(self, url: str, cancel: Cancel | None = None) -> FetchResult:
        """Download ``url``; never raises."""
        try:
            return self._fetch(url, cancel or Cancel())
        except Exception as e:  # a failure no rule above names: still an answer, never an escape
            return FetchResult(None, f"fetch_error:{type(e).__name__}", error_message=f"{type(e).__name__}: {e}"[:300])

    def _fetch(self, url: str, cancel: Cancel) -> FetchResult:
        if isinstance(url, str) and url.startswith("file://"):
            return read_local(url, self.cfg)
        norm, why = check_url(url)
        if why:
            return FetchResult(None, why, error_message=repr(url)[:300])
        budget = _Budget(self.cfg.timeout, self.cfg.retries + 1)
        err = None
        for attempt in range(self.cfg.retries + 1):
            try:
                return self._attempt(norm, budget, cancel)
            except Exception as e:
                prev, err = err, classify(e)
                if err is None:
                    raise
                if cancel.cancelled:
                    err = FetchError("shard_deadline", str(err), err.http_status)
                elif err.reason == "timeout" and prev is not None and prev.reason != "timeout":
                    # a retry that ran out of time says nothing new: the server's own answer (503, a
                    # reset, ...) stays the reason, whatever the machine's load did to the retry
                    err = FetchError(prev.reason, str(prev), prev.http_status)  # the same words either way
                    break
            if not err.retry or attempt == self.cfg.retries or budget.end is None:
                break
            wait = max(self.cfg.backoff * (attempt + 1), err.retry_after or 0.0)
            if time.monotonic() + wait >= budget.end:
                if err.retry_after:
                    err = FetchError(err.reason, f"{err} (Retry-After {err.retry_after:.0f} s is past the deadline)", err.http_status)
                break
            if cancel.event.wait(wait):
                err = FetchError("shard_deadline", str(err), err.http_status)
                break
        return FetchResult(None, err.reason, err.http_status, error_message=str(err)[:300])


def read_local(url: str, cfg: FetchConfig) -> FetchResult:
    """A ``file://`` image under ``cfg.local_root``, as a fetch answers (see the module docstring)."""
    import os
    import stat

    if "\x00" in url:  # no file system path holds a NUL byte (realpath would raise)
        return FetchResult(None, "invalid_url:file_path", error_message=repr(url)[:300])
    path = os.path.realpath(url[len("file://"):])
    root = os.path.realpath(cfg.local_root) if cfg.local_root else ""
    if not root or os.path.commonpath([root, path]) != root:
        return FetchResult(None, "invalid_url:file_outside_image_root", error_message=url[:300])
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return FetchResult(None, "unreadable_file", error_message=f"{path}: not a regular file"[:300])
            if st.st_size > cfg.max_bytes:
                return FetchResult(None, "too_large", error_message=f"{st.st_size} bytes"[:300])
            body = f.read(cfg.max_bytes + 1)
    except FileNotFoundError:
        return FetchResult(None, "file_not_found", error_message=path[:300])
    except (IsADirectoryError, PermissionError, OSError) as e:
        return FetchResult(None, "unreadable_file", error_message=f"{type(e).__name__}: {e}"[:300])
    if len(body) > cfg.max_bytes:
        return FetchResult(None, "too_large", error_message=f"more than {cfg.max_bytes} bytes")
    return FetchResult(body, None, None, None, url)
