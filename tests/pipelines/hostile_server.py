"""A hostile web server on loopback (test fixture): every way a server can misbehave, by path.

A raw-socket HTTP/1.1 server (keep-alive, one thread per connection) so it can lie, stall,
drip, truncate and reset. ``ROUTES`` maps a path to a behaviour; ``EXPECTED`` gives the reason
the download stage must record for each path (None: a successful download). Paths under
``/script/<id>`` run a behaviour registered with ``add_script`` (used by the property tests).
Binds 127.0.0.1 only; redirects to blocked addresses point at this server's port, so a client
that failed to block them before connecting would show up in ``hits`` (they must stay 0).
"""
from __future__ import annotations

import functools
import gzip
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter

import numpy as np
from PIL import Image


def jpeg(size=(320, 240), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 8 + 1, size[0] // 8 + 1, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG with a pattern (R = x, G = y, B = x xor y, mod 256), written row block
    by row block (no full-size array, no Pillow encode)."""
    x = np.arange(width, dtype=np.uint16)
    z = zlib.compressobj(1)
    parts = []
    for y0 in range(0, height, 256):
        y = np.arange(y0, min(height, y0 + 256), dtype=np.uint16)[:, None]
        rows = np.empty((len(y), 1 + 3 * width), np.uint8)
        rows[:, 0] = 0  # filter: none
        px = rows[:, 1:].reshape(len(y), width, 3)
        px[..., 0] = x % 256
        px[..., 1] = y % 256
        px[..., 2] = (x ^ y) % 256
        parts.append(z.compress(rows.tobytes()))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=None)
def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` zero pixels: ~100 KB that decode to ``side**2`` pixels."""
    chunk = _chunk
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    parts = [z.compress(row * 1000) for _ in range(side // 1000)] + [z.compress(row * (side % 1000)), z.flush()]
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def ico() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "ICO")
    return buf.getvalue()


JPEG = jpeg()
NON_ASCII_TARGET = "/café/ünï.jpg"  # sent raw (UTF-8) in a Location header
NON_ASCII_REQUESTED = "/caf%C3%A9/%C3%BCn%C3%AF.jpg"  # what a client must request after normalising it


class HostileServer:
    def __init__(self, max_bytes: int = 20 << 20):
        self.max_bytes = max_bytes
        self.hits: Counter = Counter()
        self.user_agents: list[str] = []
        self.active: Counter = Counter()
        self.peak: Counter = Counter()
        self.files: dict[str, bytes] = {}  # served at /file/<name> as image/png
        self.scripts: dict[str, dict] = {}  # behaviours served at /script/<id> (see add_script)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._bomb = png_bomb()  # made before serving: its ~1 s must not count against a download
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # lifecycle ---------------------------------------------------------------------------
    def close(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    # HTTP ----------------------------------------------------------------------------------
    def _connection(self, conn: socket.socket):
        conn.settimeout(60)
        f = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                line = f.readline(65537)
                if not line:
                    return
                headers = {}
                while True:
                    h = f.readline(65537)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                parts = line.decode("latin-1").split()
                path = parts[1] if len(parts) > 1 else "/"
                with self._lock:
                    self.hits[path] += 1
                    self.user_agents.append(headers.get("user-agent", ""))
                if not self._respond(conn, path):
                    return
        except OSError:
            return
        finally:
            try:
                f.close()
                conn.close()
            except OSError:
                pass

    def _send(self, conn, status: str, headers: list[tuple[str, str | bytes]], body: bytes = b"", length: int | None = None):
        head = f"HTTP/1.1 {status}\r\n".encode()
        n = len(body) if length is None else length
        for k, v in headers + [("Content-Length", str(n))]:
            head += k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("latin-1")) + b"\r\n"
        conn.sendall(head + b"\r\n" + body)

    def _endless_chunks(self, conn, status: str, headers: list[tuple[str, str]]):
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "Transfer-Encoding: chunked\r\n\r\n"
        conn.sendall(head.encode())
        chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
        while not self._stop.is_set():
            conn.sendall(chunk)  # until the client goes away (OSError ends the connection)

    def _wait_for_close(self, conn):
        conn.settimeout(30)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def _respond(self, conn, path: str) -> bool:
        """Answer one request; False to end the connection."""
        img = [("Content-Type", "image/jpeg")]
        base = self.base
        if path == "/ok.jpg" or path == NON_ASCII_REQUESTED:
            self._send(conn, "200 OK", img, JPEG)
        elif path == "/drip.jpg":  # every read comes well within the timeout; the whole never does
            self._send(conn, "200 OK", img, b"", length=len(JPEG))
            for i in range(len(JPEG)):
                conn.sendall(JPEG[i:i + 1])
                time.sleep(0.05)
            return False
        elif path == "/drip-headers.jpg":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while True:
                conn.sendall(b"X-Pad: y\r\n")
                time.sleep(0.05)
        elif path == "/stall.jpg":
            self._wait_for_close(conn)
            return False
        elif path == "/lying-length.jpg":  # promises more than it sends, keeps the connection open
            self._send(conn, "200 OK", img, JPEG, length=len(JPEG) + 100_000)
            self._wait_for_close(conn)
            return False
        elif path == "/truncated.jpg":
            self._send(conn, "200 OK", img, JPEG[: len(JPEG) // 3], length=len(JPEG))
            return False
        elif path == "/reset.jpg":
            self._send(conn, "200 OK", img, JPEG[: len(JPEG) // 3], length=len(JPEG))
            time.sleep(0.05)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # close with linger 0: a TCP reset mid-body
        elif path == "/redirect-endless":
            self._endless_chunks(conn, "302 Found", [("Location", "/ok.jpg")])
        elif path == "/404-endless.jpg":
            self._endless_chunks(conn, "404 Not Found", [("Content-Type", "text/html")])
        elif path == "/404-huge.jpg":  # a 60 MB 404, announced
            self._send(conn, "404 Not Found", [("Content-Type", "text/html")], b"", length=60 << 20)
            try:
                block = b"x" * (1 << 20)
                for _ in range(60):
                    conn.sendall(block)
            except OSError:
                pass
            return False
        elif path == "/endless.jpg":
            self._endless_chunks(conn, "200 OK", img)
        elif path == "/huge-length.jpg":
            self._send(conn, "200 OK", img, b"", length=10**12)
            self._wait_for_close(conn)
            return False
        elif path == "/loop-a":
            self._send(conn, "302 Found", [("Location", "/loop-b")])
        elif path == "/loop-b":
            self._send(conn, "301 Moved", [("Location", f"{base}/loop-a")])
        elif path == "/non-ascii-redirect":
            self._send(conn, "302 Found", [("Location", NON_ASCII_TARGET.encode("utf-8"))])
        elif path == "/to-unspecified4":
            self._send(conn, "302 Found", [("Location", f"http://0.0.0.0:{self.port}/never")])
        elif path == "/to-unspecified6":
            self._send(conn, "302 Found", [("Location", f"http://[::]:{self.port}/never")])
        elif path == "/to-mapped-loopback":
            self._send(conn, "302 Found", [("Location", f"http://[::ffff:127.0.0.1]:{self.port}/never")])
        elif path == "/to-metadata":
            self._send(conn, "307 Temporary Redirect", [("Location", "http://169.254.169.254/latest/meta-data/")])
        elif path == "/to-bad-host":
            self._send(conn, "302 Found", [("Location", "http://a..b/x.jpg")])
        elif path == "/bomb.png":
            self._send(conn, "200 OK", [("Content-Type", "image/png")], self._bomb)
        elif path == "/html-as.jpg":
            self._send(conn, "200 OK", img, b"<!DOCTYPE html><html><head><title>Not found</title></head><body>gone</body></html>")
        elif path == "/icon.ico":
            self._send(conn, "200 OK", [("Content-Type", "image/x-icon")], ico())
        elif path == "/429-once.jpg":
            if self.hits[path] == 1:
                self._send(conn, "429 Too Many Requests", [("Retry-After", "1"), ("Content-Type", "text/plain")], b"slow down")
            else:
                self._send(conn, "200 OK", img, JPEG)
        elif path == "/429-long.jpg":
            self._send(conn, "429 Too Many Requests", [("Retry-After", "3600"), ("Content-Type", "text/plain")], b"come back later")
        elif path == "/503.jpg":
            self._send(conn, "503 Service Unavailable", [("Content-Type", "text/plain")], b"busy")
        elif path == "/gzip.jpg":
            self._send(conn, "200 OK", img + [("Content-Encoding", "gzip")], gzip.compress(JPEG))
        elif path == "/gzip-bomb.jpg":
            z = zlib.compressobj(9, zlib.DEFLATED, 31)
            blob = b"".join(z.compress(b"\x00" * (1 << 20)) for _ in range((self.max_bytes >> 20) + 2)) + z.flush()
            self._send(conn, "200 OK", img + [("Content-Encoding", "gzip")], blob)
        elif path == "/brotli.jpg":
            self._send(conn, "200 OK", img + [("Content-Encoding", "br")], b"\x0b\x02\x80hello\x03")
        elif path == "/bad-status":
            conn.sendall(b"HTTP/1.1 two hundred OK\r\n\r\n")
            return False
        elif path == "/concurrent.jpg":
            with self._lock:
                self.active[path] += 1
                self.peak[path] = max(self.peak[path], self.active[path])
            time.sleep(0.2)
            with self._lock:
                self.active[path] -= 1
            self._send(conn, "200 OK", img, JPEG)
        elif path.startswith("/file/") and path[len("/file/"):] in self.files:
            self._send(conn, "200 OK", [("Content-Type", "image/png")], self.files[path[len("/file/"):]])
        elif path.startswith("/script/") and path[len("/script/"):] in self.scripts:
            return self._script(conn, self.scripts[path[len("/script/"):]])
        else:
            self._send(conn, "404 Not Found", [("Content-Type", "text/plain")], b"no")
        return True

    def add_script(self, spec: dict) -> str:
        """Register a behaviour (status, headers, body, mode, length, gzip); returns its URL."""
        with self._lock:
            key = str(len(self.scripts))
            self.scripts[key] = spec
        return f"{self.base}/script/{key}"

    def _script(self, conn, s: dict) -> bool:
        """A registered behaviour: status, headers, body, how it is sent."""
        body = s.get("body", b"")
        if s.get("gzip"):
            body = gzip.compress(body)
        headers = [(k, v.encode("utf-8", "surrogateescape")) for k, v in s.get("headers", [])]
        mode = s.get("mode", "normal")
        status = f"{s.get('status', 200)} X"
        if mode == "chunked_endless":
            self._endless_chunks(conn, status, [(k, v.decode("latin-1")) for k, v in headers])
        length = {"short": len(body) // 2, "long": len(body) + 1000}.get(s.get("length"), None)
        if mode == "stall":
            self._wait_for_close(conn)
            return False
        if mode == "drip":
            self._send(conn, status, headers, b"", length=len(body) if length is None else length)
            for i in range(len(body)):
                conn.sendall(body[i:i + 1])
                time.sleep(0.02)
            return False
        if mode == "reset":
            self._send(conn, status, headers, body[: len(body) // 2], length=len(body))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if mode == "garbage":
            conn.sendall(body or b"\x00\xff garbage\r\n\r\n")
            return False
        if mode == "close_early":
            self._send(conn, status, headers, body[: len(body) // 2], length=len(body))
            return False
        self._send(conn, status, headers, body, length=length)
        return length is None  # a lying length leaves the connection unusable


#: path -> the reason the download stage must record (None: downloaded and decoded)
EXPECTED = {
    "/ok.jpg": None,
    "/drip.jpg": "timeout",
    "/drip-headers.jpg": "timeout",
    "/stall.jpg": "timeout",
    "/lying-length.jpg": "timeout",
    "/truncated.jpg": "connection_error",
    "/reset.jpg": "connection_reset",
    "/redirect-endless": None,
    "/404-endless.jpg": "http_404",
    "/404-huge.jpg": "http_404",
    "/endless.jpg": "too_large",
    "/huge-length.jpg": "too_large",
    "/loop-a": "redirect_loop",
    "/non-ascii-redirect": None,
    "/to-unspecified4": "blocked_address:unspecified",
    "/to-unspecified6": "blocked_address:unspecified",
    "/to-mapped-loopback": "blocked_address:loopback",
    "/to-metadata": "blocked_address:link_local",
    "/to-bad-host": "invalid_url:empty_label",
    "/bomb.png": "image_too_large",
    "/html-as.jpg": "not_an_image:text/html",
    "/icon.ico": "unsupported_format:ico",
    "/429-once.jpg": None,
    "/429-long.jpg": "http_429",
    "/503.jpg": "http_503",
    "/gzip.jpg": None,
    "/gzip-bomb.jpg": "too_large",
    "/brotli.jpg": "unsupported_encoding:br",
    "/bad-status": "bad_response",
}

#: URLs refused before any connection, with their reasons
INVALID_URLS = {
    "http://a..b/x.jpg": "invalid_url:empty_label",
    "http://" + "a" * 64 + ".example/x.jpg": "invalid_url:label_too_long",
    "http://a\u200f.example/x.jpg": "invalid_url:idna",
    "http://exa mple.example/x.jpg": "invalid_url:host_chars",
    "http://127.0.0.1:99999/x.jpg": "invalid_url:port",
    "http://[::1/x.jpg": "invalid_url:ipv6",
    "ftp://127.0.0.1/x.jpg": "invalid_url:scheme",
    "http:///x.jpg": "invalid_url:no_host",
}
