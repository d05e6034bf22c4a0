"""The synthetic web's image server: 127.0.0.1 only, the real web's faults included.

Images are drawn on request from the catalogue (a pure function of seed and image id, so a
path always returns the same bytes), with a small LRU cache for re-hosted copies. Planted
faults: 404/500/503, stalls past the client's timeout, truncated and corrupt bodies, HTML
instead of an image, huge images, ``X-Robots-Tag`` opt-outs, redirects (also to a private
address, which a careful downloader refuses to follow).
"""
from __future__ import annotations

import functools
import io
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
from PIL import Image

from benchmark_builder.synthetic_web.images import draw, encode, image_params


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True
    allow_reuse_port = True  # several server processes share the port; the kernel spreads connections

    def handle_error(self, request, client_address):  # clients that gave up (timeouts) are expected
        pass


def load_catalogue(web_dir: str):
    return pq.read_table(os.path.join(web_dir, "catalogue.parquet"))


class SyntheticWebServer:
    def __init__(self, web_dir: str, port: int | None = None, subprocess: bool = False, workers: int = 2):
        """``subprocess=True`` serves from a child process, so drawing images does not share the
        caller's GIL (the build does this; tests may serve in-process)."""
        self.web_dir = web_dir
        self.use_subprocess = subprocess
        self.workers = workers
        self._procs = []
        with open(os.path.join(web_dir, "web.json")) as f:
            self.web = json.load(f)
        self.seed = self.web["config"]["seed"]
        self.slow_seconds = float(self.web["config"]["slow_seconds"])
        self.host = self.web["host"]
        self.port = self.web["port"] if port is None else port
        cat = load_catalogue(web_dir).to_pylist()
        self.paths = {row["path"]: row for row in cat}
        self._httpd = None
        self._thread = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @functools.lru_cache(maxsize=512)
    def body(self, image_id: int, img_year: int, size_kind: str, fmt: str, quality: int, scale: float, mode: str) -> bytes:
        if size_kind == "pixel":
            buf = io.BytesIO()
            Image.new("RGB", (1, 1), (255, 255, 255)).save(buf, "GIF")
            return buf.getvalue()
        return encode(draw(image_params(self.seed, image_id, img_year, size_kind)), fmt, quality or 90, scale, mode or None)

    @functools.cached_property
    def huge_png(self) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (9000, 7000), 128).save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "synthetic-web/1.0"

            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", ctype="image/jpeg", headers=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                row = server.paths.get(self.path)
                if row is None:
                    return self._send(404, b"not found", "text/plain")
                fault = row["fault"]
                if fault in ("http_404", "http_500", "http_503"):
                    code = int(fault[-3:])
                    return self._send(code, b"error", "text/plain", [("Retry-After", "1")] if code == 503 else [])
                if fault in ("redirect", "redirect_chain", "redirect_private"):
                    return self._send(302, b"", "text/plain", [("Location", row["target"])])
                if fault == "not_image":
                    return self._send(200, b"<html><body>Image moved, see our homepage</body></html>", "text/html; charset=utf-8")
                if fault == "too_large":
                    return self._send(200, server.huge_png, "image/png")
                body = server.body(row["image_id"], row["img_year"], row["size_kind"], row["format"], int(row["quality"] or 90),
                                   float(row["scale"] or 1.0), row["mode"] or "")
                ctype = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}[row["format"]]
                headers = []
                if fault == "truncated":
                    body = body[: len(body) * 2 // 5]
                elif fault == "corrupt":
                    body = body[:20] + bytes((b * 7 + 13) & 0xFF for b in body[20:600])
                elif fault == "noai":
                    headers.append(("X-Robots-Tag", "noai"))
                elif fault == "noimageai":
                    headers.append(("X-Robots-Tag", "noindex, noimageai"))
                elif fault == "noai_other_agent":
                    headers.append(("X-Robots-Tag", "otherbot: noai"))
                elif fault == "slow":
                    time.sleep(server.slow_seconds)
                try:
                    self._send(200, body, ctype, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def start(self) -> "SyntheticWebServer":
        if self.use_subprocess:
            return self._start_subprocess()
        try:
            self._httpd = _Server((self.host, self.port), self._handler())
        except OSError as e:
            raise RuntimeError(
                f"the synthetic web server cannot listen on {self.host}:{self.port} ({e}); the port is baked into the "
                "synthetic web's URLs: free it, or build into another --data-dir with --web-port N"
            ) from e
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def _start_subprocess(self) -> "SyntheticWebServer":
        import subprocess
        import sys

        if not port_is_free(self.port, self.host):
            raise RuntimeError(
                f"the synthetic web server cannot listen on {self.host}:{self.port} (port in use); the port is baked into "
                "the synthetic web's URLs: free it, or build into another --data-dir with --web-port N"
            )
        self._procs = [
            subprocess.Popen([sys.executable, "-m", "benchmark_builder.synthetic_web", self.web_dir, str(self.port)],
                             stdin=subprocess.DEVNULL)
            for _ in range(self.workers)
        ]
        deadline = time.time() + 60
        while port_is_free(self.port, self.host):
            if any(p.poll() is not None for p in self._procs) or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the synthetic web server did not start on port {self.port}")
            time.sleep(0.05)
        time.sleep(0.3)  # let the other workers bind too
        return self

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
        self._procs = []
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def main(argv=None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    server = SyntheticWebServer(args[0], int(args[1]) if len(args) > 1 else None)
    server.start()
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
