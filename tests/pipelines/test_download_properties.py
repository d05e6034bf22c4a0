"""Property-based: random URLs and random server behaviours through the download stage.

Whatever the URL and whatever the (loopback) server does, ``download_rows`` returns one row per
candidate in order, with a machine-readable reason or a decoded image, within the shard's
budget; no exception escapes and no failure is left unclassified (``fetch_error:*``). Where the
behaviour determines the outcome (a plain 4xx, a stall, a valid image served plainly) the
reason is checked against it. Names are resolved from a table and an audit hook refuses any
connection or lookup that is not loopback, so nothing leaves the machine.
"""
from __future__ import annotations

import functools
import hashlib
import io
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.fetch import FetchConfig, Fetcher
from pipelines.transforms.download import DownloadConfig, download_rows, shard_budget
from hostile_server import HostileServer
from test_hostile_web import _GUARD, table_resolver

CFG = DownloadConfig(fetch=FetchConfig(timeout=0.5, retries=1, backoff=0.01, allow_loopback=True, max_bytes=1 << 20),
                     thread_count=8, shard_slack=10.0)
REASON = re.compile(r"[a-z_0-9]+(:.+)?\Z", re.S)


@pytest.fixture(scope="module")
def web():
    with HostileServer(max_bytes=CFG.fetch.max_bytes) as server:
        _GUARD["on"], _GUARD["violations"] = True, []
        yield server
        _GUARD["on"] = False


# -- random URLs ------------------------------------------------------------------------------------
_CHARS = st.sampled_from(list("abcxyz0129-_.%/:@[]?#&= \t\\") + ["é", "\u200f", "\u00ad", "\u2100", "\u0000", "\ufffd", "ß", "中"])
_LABELISH = st.text(_CHARS, max_size=70)


def _url_strategy(port: int):
    hosts = st.one_of(
        _LABELISH,
        st.sampled_from([f"127.0.0.1:{port}", f"rebind.hostile.test:{port}", "private.hostile.test", "nx.hostile.test",
                         "0.0.0.0", "[::]", f"[::ffff:127.0.0.1]:{port}", "169.254.169.254", "10.1.2.3", "[fe80::1]",
                         "[::1", "a..b", "a" * 64 + ".test", "0x7f.1", "2130706433", "127.1", "localhost"]),
    )
    ports = st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), _LABELISH.map(lambda t: f":{t}"))
    paths = st.one_of(st.text(max_size=40), st.sampled_from(["/ok.jpg", "/loop-a", "/non-ascii-redirect", "/to-metadata",
                                                             "/404-endless.jpg", "/gzip.jpg", "/icon.ico", "/html-as.jpg"]))
    schemes = st.sampled_from(["http", "https", "HTTP", "ftp", "file", "", "javascript", "http:"])
    built = st.builds(lambda s, u, h, p, path: f"{s}://{u}{h}{p}{path}", schemes, st.sampled_from(["", "user@", "u:p@", "@"]),
                      hosts, ports, paths)
    return st.one_of(built, st.text(max_size=80))


# -- random server behaviours -----------------------------------------------------------------------
def _image(fmt: str, w: int, h: int, seed: int) -> bytes:
    im = Image.effect_noise((w, h), 40 + seed % 50).convert("RGB" if fmt not in ("GIF",) else "L")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


_images = st.builds(_image, st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "TGA", "PPM", "PCX"]),
                    st.integers(1, 200), st.integers(1, 200), st.integers(0, 1000))


def _corrupt(data: bytes, how) -> bytes:
    kind, n = how
    if kind == "truncate":
        return data[: n % (len(data) + 1)]
    if kind == "flip" and data:
        i = n % len(data)
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    return data


_bodies = st.one_of(
    st.tuples(_images, st.one_of(st.just(("none", 0)), st.tuples(st.sampled_from(["truncate", "flip"]), st.integers(0, 10**6)))),
    st.tuples(st.binary(max_size=2048), st.just(("none", 0))),
    st.tuples(st.sampled_from([b"<!DOCTYPE html><html></html>", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"", b"GIF89a"]),
              st.just(("none", 0))),
).map(lambda t: (_corrupt(t[0][0], t[1]) if isinstance(t[0], tuple) else _corrupt(t[0], t[1]), t[1][0] == "none"))

_header_text = st.text(max_size=40)


def _mostly(usual, rare, odds: int = 4):
    """``usual`` ``odds`` times out of ``odds + 1``, else ``rare``."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else usual)

_behaviours = st.fixed_dictionaries({
    "status": st.sampled_from([200] * 12 + [201, 204, 206, 301, 302, 303, 307, 308, 304, 400, 403, 404, 410, 429, 500, 502, 503, 99, 999]),
    "mode": st.sampled_from(["normal"] * 14 + ["chunked_endless", "stall", "drip", "reset", "garbage", "close_early"]),
    "length": st.sampled_from([None] * 8 + ["short", "long"]),
    "gzip": st.sampled_from([False] * 5 + [True]),
    "content_type": _mostly(st.sampled_from(["image/jpeg"] * 4 + ["image/png", "image/webp", "application/octet-stream", "text/html",
                                             "", "image/svg+xml"]), _header_text),
    "encoding": st.sampled_from([None] * 12 + ["gzip", "deflate", "br", "identity", "x-gzip", "compress"]),
    "location": st.one_of(st.none(), st.none(), st.none(), _header_text, st.sampled_from(["/ok.jpg", "http://0.0.0.0/", "http://[::]/x", "//169.254.169.254/",
                                                                      "/café.jpg", "http://a..b/", "https://127.0.0.1/", ""])),
    "retry_after": st.one_of(st.none(), st.none(), st.sampled_from(["0", "1", "3600", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"])),
    "robots": st.one_of(st.none(), st.none(), st.none(), st.sampled_from(["noai", "otherbot: noai", "tic-bot: noimageai", "none"])),
    "body": _bodies,
})


def _script_url(web, b: dict) -> str:
    body, _ = b["body"]
    headers = []
    for key, name in (("content_type", "Content-Type"), ("encoding", "Content-Encoding"), ("location", "Location"),
                      ("retry_after", "Retry-After"), ("robots", "X-Robots-Tag")):
        if b[key] is not None:
            headers.append([name, b[key]])
    return web.add_script({"status": b["status"], "mode": b["mode"], "length": b["length"], "gzip": b["gzip"], "headers": headers,
                           "body": body})


def _format(body: bytes) -> str | None:
    try:
        return Image.open(io.BytesIO(body)).format
    except Exception:
        return None


def _oracle(b: dict):
    """The reason the behaviour determines, or ... when several are right."""
    body, intact = b["body"]
    plain = b["mode"] == "normal" and b["length"] is None
    if b["mode"] == "stall":
        return "timeout"
    if plain and b["status"] in (400, 403, 404, 410):
        return f"http_{b['status']}"
    if (plain and b["status"] == 200 and b["encoding"] is None and not b["gzip"] and b["robots"] in (None, "otherbot: noai", "none")
            and b["content_type"] in ("image/jpeg", "image/png", "application/octet-stream") and intact and body
            and _format(body) in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")):
        return None
    return ...


@functools.lru_cache(maxsize=None)
def _fetcher() -> Fetcher:  # one per run, as the stage has one per worker (its TLS context costs ~50 ms to make)
    return Fetcher(CFG.fetch, getaddrinfo=table_resolver)


def _check(web, candidates):
    rows, expected = [], []
    for i, c in enumerate(candidates):
        url = _script_url(web, c) if isinstance(c, dict) else c
        rows.append({"uid": f"{i:032x}", "url": url, "text": "t"})
        expected.append(_oracle(c) if isinstance(c, dict) else ...)
    fetcher = _fetcher()
    t0 = time.monotonic()
    out = download_rows(rows, CFG, fetcher)
    elapsed = time.monotonic() - t0
    assert elapsed < shard_budget(len(rows), CFG) + 2, elapsed
    assert [r["uid"] for r, _ in out] == [r["uid"] for r in rows]
    for (r, jpg), c, exp in zip(out, candidates, expected):
        assert r["status"] in ("success", "error")
        assert (r["reason"] is None) == (r["status"] == "success") == (jpg is not None), r
        if r["reason"] is not None:
            assert REASON.match(r["reason"]) and not r["reason"].startswith("fetch_error"), (r["reason"], r["error_message"], c)
        if exp is not ...:
            assert r["reason"] == exp, (r["reason"], r["error_message"], c)
            if exp is None:
                assert r["sha256"] == hashlib.sha256(c["body"][0]).hexdigest()
    assert _GUARD["violations"] == []


def _strategy(web):
    """1-3 server behaviours and 0-1 random URL, in a random order."""
    return st.tuples(st.lists(_behaviours, min_size=1, max_size=3), st.lists(_url_strategy(web.port), max_size=1)).flatmap(
        lambda t: st.permutations(t[0] + t[1]))


def test_download_stage_never_raises(web):
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def run(data):
        _check(web, data.draw(_strategy(web)))

    run()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_download_stage_never_raises_2000_examples(web):
    t0 = time.monotonic()

    @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def run(data):
        _check(web, data.draw(_strategy(web)))

    run()
    print(f"2000 examples in {time.monotonic() - t0:.0f} s")
