"""The synthetic web's image server: 127.0.0.1 only, the real web's faults included.

Images are a pure function of seed and image id (``images.py``), so a path always returns the
same bytes. Planted faults: 404/500/503, stalls, truncated and corrupt bodies, HTML instead of
an image, huge images, ``X-Robots-Tag`` opt-outs, redirects (also to a private address, which
a careful downloader refuses to follow).

The outcome of every URL is fixed by the seed, not by timing
------------------------------------------------------------
A build's status rows must not depend on how busy the machine is, so nothing a request waits
for may be slow, and nothing meant to fail may be merely slow:

- **Images are rendered before the first request** (``prerender``), in parallel, into
  ``rendered/YYYY.bin`` (bodies) and ``rendered/YYYY.json`` (their offsets) under the web's
  directory: the bodies first needed by year YYYY's pages, written atomically, reused by every
  later server start. A worker then answers a request with a read of that file (``os.pread``): no drawing,
  no encoding, no 0.5 s huge PNG inside a request. Drawing on request is only the fallback for
  paths outside the rendered years (the in-process server of unit tests).
- **The server is ready before the first request**: ``start()`` returns once every worker
  process has bound the port and said so on its stdout (not after a fixed sleep), with the
  rendered store loaded.
- **A planted stall never answers**: it holds the connection without sending a byte until the
  client closes it (or ``slow_seconds``, 600 s by default, pass), so it ends as ``timeout`` for
  any client deadline, however long, and the deadline can never be confused with a slow answer.

Measured margin (``python -m bench.web_latency --hogs 2 [--draw]``): a fresh server, then at
once 2014's 3,978 image URLs of the default web fetched with the download stage's concurrency
(8 pool shards x 32 threads = 256 requests in flight, each image resized in the same process),
2 busy-loop processes beside it, on a 2-core machine already at load average 18-26 from other
work. A probe process (one request at a time, its own GIL free) measures what a socket deadline
sees, request sent -> response read:

- the server before this change (images drawn on request by 2 workers, a 4 s stall against the
  2 s deadline): 2,147 of the 3,978 URLs ended as ``timeout`` (840 at load average ~10);
- images drawn on request by 4 workers: probe max 0.48 s, 8 URLs wrongly ``timeout``;
- pre-rendered (now): probe p99 0.05 s, max 0.15 s with 4 workers (p99 0.13 s, max 0.24 s with
  2), 0 URLs wrongly ``timeout`` in 3 runs (exactly the 24 planted stalls): at least 8x below
  the 2 s deadline at 10x oversubscription, and a stall is never answered at all.

The loaded client's own view (request sent -> body read, inside a process of 256 threads that
also decode and resize) is much longer: p99 0.7-1.9 s, max 1.4-4.2 s. A per-socket-operation
timeout does not count those GIL waits (the socket is ready in time); a wall-clock deadline
over the whole download would, so the embedded default needs such a deadline measured over
socket waits only, or far larger than 2 s, or fewer requests in flight per host.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from PIL import Image

from benchmark_builder.synthetic_web.images import draw, encode, image_params

BODY_FAULTS = ("", "truncated", "corrupt", "noai", "noimageai", "noai_other_agent")  # served with an image body
TOO_LARGE = ("too_large",)  # the body key of the 9000 x 7000 PNG every ``too_large`` path serves
RENDERED = "rendered"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    allow_reuse_port = True  # several server processes share the port; the kernel spreads connections

    def handle_error(self, request, client_address):  # clients that gave up (timeouts) are expected
        pass


def load_catalogue(web_dir: str):
    return pq.read_table(os.path.join(web_dir, "catalogue.parquet"))


def _path_hash(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


CATALOGUE_INDEX = "catalogue.arrow"


class Catalogue:
    """Path -> catalogue row, without a Python object per row: the catalogue as an uncompressed
    Arrow file sorted by a 64-bit hash of the path (``catalogue.arrow``, written once beside
    ``catalogue.parquet``, atomically) and memory-mapped. Every server worker maps the same
    file, so the operating system holds one copy of it however many workers serve (a dict of
    row dicts was 1.7 KB a path in every worker: 1.5 GB each at 100k pairs a year); a lookup is
    a binary search over the hash column and a check of the path itself."""

    def __init__(self, web_dir: str):
        path = os.path.join(web_dir, CATALOGUE_INDEX)
        if not os.path.exists(path):
            self.write_index(web_dir)
        self.table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        self.hashes = self.table.column("path_hash").to_numpy()
        self._cols = {n: self.table.column(n) for n in self.table.column_names if n != "path_hash"}

    @staticmethod
    def write_index(web_dir: str) -> None:
        cat = load_catalogue(web_dir)
        hashes = pa.array([_path_hash(p) for p in cat.column("path").to_pylist()], pa.uint64())
        cat = cat.append_column("path_hash", hashes)
        cat = cat.take(pa.compute.sort_indices(cat, [("path_hash", "ascending"), ("path", "ascending")]))
        path = os.path.join(web_dir, CATALOGUE_INDEX)
        tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, cat.schema) as writer:
            writer.write_table(cat.combine_chunks(), max_chunksize=1 << 30)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return self.table.num_rows

    def get(self, path: str) -> dict | None:
        h = _path_hash(path)
        i = int(np.searchsorted(self.hashes, np.uint64(h)))
        while i < len(self.hashes) and int(self.hashes[i]) == h:
            if self._cols["path"][i].as_py() == path:
                return {n: c[i].as_py() for n, c in self._cols.items()}
            i += 1
        return None


# ---------------------------------------------------------------- rendering

def body_key(row: dict) -> tuple:
    """What determines a path's body: equal keys, equal bytes (re-hosted copies share one)."""
    if row["fault"] == "too_large":
        return TOO_LARGE
    return (int(row["image_id"]), int(row["img_year"]), row["size_kind"], row["format"], int(row["quality"] or 90),
            float(row["scale"] or 1.0), row["mode"] or "")


def render(seed: int, key: tuple) -> bytes:
    if key == TOO_LARGE:
        buf = io.BytesIO()
        Image.new("L", (9000, 7000), 128).save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    image_id, img_year, size_kind, fmt, quality, scale, mode = key
    if size_kind == "pixel":
        buf = io.BytesIO()
        Image.new("RGB", (1, 1), (255, 255, 255)).save(buf, "GIF")
        return buf.getvalue()
    return encode(draw(image_params(seed, image_id, img_year, size_kind)), fmt, quality, scale, mode or None)


def _render_chunk(seed: int, keys: list) -> list[bytes]:
    return [render(seed, tuple(k)) for k in keys]


def keys_by_year(web_dir: str) -> dict[int, list[tuple]]:
    """Per crawl year, the body keys its pages' image URLs (and their redirect hops) need that no
    earlier year needed, in a fixed order: a pure function of the generated web."""
    with open(os.path.join(web_dir, "web.json")) as f:
        web = json.load(f)
    base = f"http://{web['host']}:{web['port']}"
    paths = Catalogue(web_dir)
    truth = pq.read_table(os.path.join(web_dir, "ground_truth.parquet"), columns=["year", "url"])
    seen, out = set(), {int(y): [] for y in web["counts"]}
    for year in sorted(set(truth.column("year").to_pylist())):  # one year's URLs at a time, not the web's
        urls = sorted(truth.filter(pa.compute.equal(truth.column("year"), year)).column("url").to_pylist())
        for url in urls:
            path = url[len(base):] if url.startswith(base + "/") else None
            for _hop in range(8):  # a redirect chain is at most two hops
                row = paths.get(path) if path is not None else None
                if row is None:
                    break
                if row["fault"] in BODY_FAULTS or row["fault"] == "too_large":
                    key = body_key(row)
                    if key not in seen:
                        seen.add(key)
                        out[int(year)].append(key)
                path = row["target"] if row["fault"] in ("redirect", "redirect_chain") else None
    return out


def _store_paths(web_dir: str, year: int) -> tuple[str, str]:
    d = os.path.join(web_dir, RENDERED)
    return os.path.join(d, f"{year}.bin"), os.path.join(d, f"{year}.json")


def prerender(web_dir: str, years, processes: int | None = None) -> dict:
    """Render every image ``years``' pages link to, once, into ``rendered/`` (atomic, reused).

    Runs in ``processes`` spawned processes (default: one per CPU); the bytes do not depend on
    how many. Returns {"images": n rendered now, "seconds": s}."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.time()
    with open(os.path.join(web_dir, "web.json")) as f:
        seed = json.load(f)["config"]["seed"]
    todo = [y for y in sorted(set(int(y) for y in years)) if not os.path.exists(_store_paths(web_dir, y)[1])]
    if not todo:
        return {"images": 0, "seconds": 0.0}
    keys = keys_by_year(web_dir)
    os.makedirs(os.path.join(web_dir, RENDERED), exist_ok=True)
    work = [(y, keys.get(y, [])) for y in todo]
    print(f"synthetic web: rendering {sum(len(ks) for _, ks in work)} images of {', '.join(map(str, todo))} "
          "before serving (once; later builds reuse them)", flush=True)
    chunk = 64
    chunks = [(y, ks[i: i + chunk]) for y, ks in work for i in range(0, len(ks), chunk)]
    n = max(1, min(processes or os.cpu_count() or 1, len(chunks) or 1))
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        bodies = iter(pool.map(_render_chunk, [seed] * len(chunks), [ks for _, ks in chunks]))
        for y, ks in work:
            bin_path, index_path = _store_paths(web_dir, y)
            index, offset = [], 0
            tmp = f"{bin_path}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                for i in range(0, len(ks), chunk):
                    for key, b in zip(ks[i: i + chunk], next(bodies)):
                        f.write(b)
                        index.append([*key, offset, len(b)])
                        offset += len(b)
            os.replace(tmp, bin_path)
            tmp = f"{index_path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"year": y, "bytes": offset, "bodies": index}, f)
            os.replace(tmp, index_path)  # last: its presence means the year's store is complete
    done = {"images": sum(len(ks) for _, ks in work), "seconds": round(time.time() - t0, 1)}
    print(f"synthetic web: rendered {done['images']} images in {done['seconds']} s", flush=True)
    return done


class Store:
    """Every rendered body on disk: key -> bytes, read with ``os.pread`` from ``rendered/YYYY.bin``.
    The bodies stay in the operating system's page cache, shared by every worker, not in a
    worker's own memory (a memory map counted every page a worker had served as its own)."""

    def __init__(self, web_dir: str):
        self.fds: list[int] = []
        self.where: dict[tuple, int] = {}  # key -> (offset << 40 | length) << 8 | file: one int, not a tuple of three
        d = os.path.join(web_dir, RENDERED)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.endswith(".json"):
                continue
            with open(os.path.join(d, name)) as f:
                index = json.load(f)
            if not index["bytes"]:
                continue
            self.fds.append(os.open(os.path.join(d, name[:-5] + ".bin"), os.O_RDONLY))
            i = len(self.fds) - 1
            if i > 0xFF:
                raise RuntimeError(f"{d}: more than 256 rendered years")
            for *key, off, length in index["bodies"]:  # the key's strings interned: a handful of distinct values
                self.where[tuple(sys.intern(k) if isinstance(k, str) else k for k in key)] = (off << 40 | length) << 8 | i

    def __len__(self) -> int:
        return len(self.where)

    def get(self, key: tuple) -> bytes | None:
        at = self.where.get(key)
        if at is None:
            return None
        return os.pread(self.fds[at & 0xFF], (at >> 8) & ((1 << 40) - 1), at >> 48)

    def __del__(self):  # not on stop(): a request still being answered may read; a reused fd would give other bytes
        for fd in getattr(self, "fds", ()):
            os.close(fd)


# ---------------------------------------------------------------- serving

_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
_ROBOTS_TAGS = {"noai": "noai", "noimageai": "noindex, noimageai", "noai_other_agent": "otherbot: noai"}


def _image_answer(body: bytes, row: dict) -> tuple[bytes, str, list]:
    """(body, content type, extra headers) of a 200 answer with the image ``body`` of ``row``:
    cut or corrupted, or with an X-Robots-Tag, as the row's fault says."""
    fault = row["fault"]
    if fault == "truncated":
        body = body[: len(body) * 2 // 5]
    elif fault == "corrupt":
        body = body[:20] + bytes((b * 7 + 13) & 0xFF for b in body[20:600])
    headers = [("X-Robots-Tag", _ROBOTS_TAGS[fault])] if fault in _ROBOTS_TAGS else []
    return body, _CONTENT_TYPES[row["format"]], headers


class SyntheticWebServer:
    def __init__(self, web_dir: str, port: int | None = None, subprocess: bool = False, workers: int = 4,
                 years=None):
        """``subprocess=True`` serves from ``workers`` child processes, so serving does not share
        the caller's GIL (the build does this; tests may serve in-process). ``years``: render
        these years' images before serving (the build passes every year it builds)."""
        self.web_dir = web_dir
        self.use_subprocess = subprocess
        self.workers = workers
        self.years = list(years or [])
        self._procs = []
        with open(os.path.join(web_dir, "web.json")) as f:
            self.web = json.load(f)
        self.seed = self.web["config"]["seed"]
        self.slow_seconds = float(self.web["config"]["slow_seconds"])
        self.host = self.web["host"]
        self.port = self.web["port"] if port is None else port
        self.paths = Catalogue(web_dir)
        self.store: Store | None = None
        self.prerendered: dict = {}
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def body(self, key: tuple) -> bytes:
        body = self.store.get(key) if self.store is not None else None
        return body if body is not None else self._drawn(key)

    @functools.lru_cache(maxsize=512)
    def _drawn(self, key: tuple) -> bytes:
        return render(self.seed, key)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "synthetic-web/1.0"
            disable_nagle_algorithm = True  # head and body are two writes: no wait for the client's delayed ACK

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

            def _stall(self):
                """Hold the connection without sending a byte until the client closes it."""
                self.close_connection = True
                deadline = time.monotonic() + server.slow_seconds
                while not server._stopping.is_set() and time.monotonic() < deadline:
                    try:
                        ready, _, _ = select.select([self.connection], [], [], 0.5)
                        if ready and not self.connection.recv(65536):
                            return  # the client gave up
                    except (OSError, ValueError):
                        return

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
                if fault == "slow":
                    return self._stall()
                if fault == "too_large":
                    return self._send(200, server.body(TOO_LARGE), "image/png")
                body, ctype, headers = _image_answer(server.body(body_key(row)), row)
                try:
                    self._send(200, body, ctype, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler

    def _prepare(self) -> None:
        if self.years:
            self.prerendered = prerender(self.web_dir, self.years)
        self.store = Store(self.web_dir)

    def start(self) -> "SyntheticWebServer":
        if self.use_subprocess:
            return self._start_subprocess()
        self._prepare()
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

        if not port_is_free(self.port, self.host):
            raise RuntimeError(
                f"the synthetic web server cannot listen on {self.host}:{self.port} (port in use); the port is baked into "
                "the synthetic web's URLs: free it, or build into another --data-dir with --web-port N"
            )
        if self.years:
            self.prerendered = prerender(self.web_dir, self.years)
        self._procs = [
            subprocess.Popen([sys.executable, "-m", "benchmark_builder.synthetic_web", self.web_dir, str(self.port)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            for _ in range(self.workers)
        ]
        deadline = time.time() + 120
        for proc in self._procs:  # each worker says "ready" once it has loaded the store and bound the port
            line = b""
            while not line.endswith(b"\n"):
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
                chunk = os.read(proc.stdout.fileno(), 64) if ready else b""
                if not chunk:
                    self.stop()
                    raise RuntimeError(f"the synthetic web server did not start on port {self.port}")
                line += chunk
            if line.strip() != b"ready":
                self.stop()
                raise RuntimeError(f"the synthetic web server did not start on port {self.port}: {line!r}")
        return self

    def stop(self) -> None:
        self._stopping.set()
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
            if proc.stdout:
                proc.stdout.close()
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


def _exit_with_parent(poll: float = 0.5) -> None:
    """End this worker when the build that started it is gone, even SIGKILLed (it is re-parented):
    an orphan would keep the web's port, and the re-run that resumes the build could not serve."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def main(argv=None) -> None:
    """A worker process: serve WEB_DIR on PORT (shared with the other workers), print ``ready``."""
    args = sys.argv[1:] if argv is None else argv
    _exit_with_parent()
    server = SyntheticWebServer(args[0], int(args[1]) if len(args) > 1 else None)
    try:
        server.start()
    except RuntimeError as e:
        print(f"error: {e}", flush=True)
        raise SystemExit(2)
    print("ready", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
