"""The streaming WARC/WAT reader: formats (checked against warcio, an independent reader), caps
on records and gzip members with the peak memory of a decompression bomb, linear-time
resynchronisation, and property-based tests (random HTML, random and broken archives) through
the crawl stage: nothing escapes, nothing intact is lost."""
from __future__ import annotations

import atexit
import gzip
import html as htmllib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from urllib.parse import urljoin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from warcio.archiveiterator import ArchiveIterator as WarcioIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines.sources import warc
from pipelines.sources.warc import Record, RecordError, iter_records
from pipelines.transforms.crawl import clean_text, crawl_file, extract_images

LAYOUTS = ("plain", "gzip", "whole-gzip")  # gzip: one member per record (Common Crawl)
KNOWN = {"malformed_record", "truncated_archive", "record_too_large", "unreadable_file", "http_parse_error",
         "decode_error", "bad_wat_json", "missing_warc_date"}


def _page_html(i: int) -> bytes:
    return f'<html><body><p>page {i}</p><img src="/img/{i}.jpg" alt="picture number {i} here"></body></html>'.encode()


def _write(records, layout: str, version: str = "WARC/1.0") -> tuple[bytes, list[tuple[int, int]]]:
    """Archive bytes and each record's (start, end) in the uncompressed / per-record layout.
    ``records``: (kind, uri, payload[, extra]) with kind response | metadata | warcinfo | request."""
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=layout == "gzip", warc_version=version)
    spans = []
    for kind, uri, payload, *extra in records:
        start = buf.tell()
        if kind == "response":
            headers = extra[0] if extra else [("Content-Type", "text/html; charset=utf-8")]
            rec = w.create_warc_record(uri, "response", payload=io.BytesIO(payload),
                                       http_headers=StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1"),
                                       warc_headers_dict={"WARC-Date": "2019-03-04T05:06:07Z"})
        elif kind == "request":
            rec = w.create_warc_record(uri, "request", payload=io.BytesIO(payload),
                                       http_headers=StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True))
        elif kind == "warcinfo":
            rec = w.create_warcinfo_record("x.warc", {"isPartOf": "CC-MAIN-2019-13"})
        else:
            rec = w.create_warc_record(uri, kind, payload=io.BytesIO(payload), warc_content_type="application/json",
                                       warc_headers_dict={"WARC-Date": "2019-03-04T05:06:07Z"})
        w.write_record(rec)
        spans.append((start, buf.tell()))
    data = buf.getvalue()
    return (gzip.compress(data) if layout == "whole-gzip" else data), spans


def _pages(n: int):
    return [("response", f"http://example.com/p{i}.html", _page_html(i)) for i in range(n)]


def _tmp(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix, dir=_TMP)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


_TMP = tempfile.mkdtemp(prefix="warc-stream-")  # hypothesis runs many examples per test: no function-scoped tmp_path
atexit.register(shutil.rmtree, _TMP, True)


def _suffix(layout: str) -> str:
    return ".warc" if layout == "plain" else ".warc.gz"


def _rows(path: str, **caps):
    rows = list(crawl_file(path, **caps))
    cands = sorted(r["text"] for k, r in rows if k == "candidate")
    errors = [r["reason"] for k, r in rows if k == "status" and r["status"] == "error"]
    assert rows[-1][0] == "status" and rows[-1][1]["status"] == "ok"
    assert rows[-1][1]["n_candidates"] == len(cands)
    assert not [e for e in errors if e.startswith("crawl_error")], errors  # every failure has its own reason
    assert all(e in KNOWN or e.startswith("invalid_url:") for e in errors), errors
    return cands, errors


def _texts(idx) -> list[str]:
    return sorted(f"picture number {i} here" for i in idx)


# ---- formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", ["WARC/1.0", "WARC/1.1"])
def test_reads_what_warcio_reads(layout, version):
    wat = json.dumps({"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": "http://example.com/w"}}}).encode()
    records = [("warcinfo", None, b""), ("request", "http://example.com/p0.html", b"")] + _pages(3) + [
        ("metadata", "http://example.com/w", wat),
        ("response", "http://example.com/chunked", b"5\r\nhello\r\n0\r\n\r\n",
         [("Content-Type", "text/html"), ("Transfer-Encoding", "chunked")])]
    data, _ = _write(records, layout, version)
    path = _tmp(data, _suffix(layout))
    expected = []  # warcio refuses whole-file gzip: it reads those bytes uncompressed
    with io.BytesIO(gzip.decompress(data)) if layout == "whole-gzip" else open(path, "rb") as f:
        it = WarcioIterator(f)
        for r in it:
            if r.rec_type in ("response", "metadata", "warcinfo"):
                status = int(r.http_headers.get_statuscode()) if r.rec_type == "response" else None
                expected.append((r.rec_type, r.rec_headers.get_header("WARC-Record-ID"), r.rec_headers.get_header("WARC-Target-URI"),
                                 status, r.raw_stream.read(), it.get_record_offset()))
    got = [(r.warc_type, r.record_id, r.target_uri, r.http_status, r.payload, r.offset) for r in iter_records(path)]
    assert not [g for g in got if isinstance(g, RecordError)]
    if layout == "whole-gzip":  # one member: every record is at offset 0, the member to decompress from
        expected = [e[:-1] + (0,) for e in expected]
    assert got == expected and len(got) == 6
    assert got[-1][4] == b"5\r\nhello\r\n0\r\n\r\n"  # payloads as stored


@pytest.mark.parametrize("layout", LAYOUTS)
def test_record_over_the_cap_is_reported_and_the_next_one_read(layout):
    big = ("response", "http://example.com/big.html", _page_html(99) + b"<!--" + b"x" * 50_000 + b"-->")
    data, _ = _write(_pages(2) + [big] + _pages(4)[2:], layout)
    path = _tmp(data, _suffix(layout))
    recs = list(iter_records(path, max_record_bytes=20_000))
    errors = [r for r in recs if isinstance(r, RecordError)]
    assert [e.reason for e in errors] == ["record_too_large"] and errors[0].record_id
    assert [r.target_uri for r in recs if isinstance(r, Record) and r.warc_type == "response"] == [
        f"http://example.com/p{i}.html" for i in (0, 1, 2, 3)]
    cands, errs = _rows(path, max_record_bytes=20_000)
    assert cands == _texts(range(4)) and errs == ["record_too_large"]


# ---- decompression bombs: peak memory in a subprocess ----------------------------------------------

_RSS_SCRIPT = """
import json, resource, sys, time
from pipelines.transforms.crawl import crawl_file
t = time.time()
rows = list(crawl_file(sys.argv[1], max_member_bytes=int(sys.argv[2])))
print(json.dumps({"seconds": time.time() - t, "peak_rss_mib": [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024,
                  "errors": [r["reason"] for k, r in rows if k == "status" and r["status"] == "error"],
                  "candidates": sorted(r["text"] for k, r in rows if k == "candidate")}))
"""


def _bomb_member(inflated_mib: int, header: bytes) -> bytes:
    """A gzip member of ``header`` + ``inflated_mib`` MiB of zeros, built without holding them:
    1 MiB of zeros is deflated once after a full flush (so its bytes do not depend on what came
    before) and repeated; the CRC is accumulated chunk by chunk."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    size = len(header) + (inflated_mib << 20)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + block * inflated_mib + b"\x03\x00"
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


def _bomb_file(inflated_mib: int) -> str:
    """Page 0, a headerless bomb (zeros), a bomb whose WARC header announces its size, page 1."""
    header = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:bomb>\r\nWARC-Target-URI: http://example.com/bomb\r\n"
              f"WARC-Date: 2019-03-04T05:06:07Z\r\nContent-Length: {inflated_mib << 20}\r\n\r\n").encode()
    first, _ = _write(_pages(1), "gzip")
    last, _ = _write([("response", "http://example.com/p1.html", _page_html(1))], "gzip")
    data = first + _bomb_member(inflated_mib, b"") + _bomb_member(inflated_mib, header) + last
    return _tmp(data, ".warc.gz")


def _run_bomb(inflated_mib: int, max_member_bytes: int) -> dict:
    path = _bomb_file(inflated_mib)
    size = os.path.getsize(path)
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path, str(max_member_bytes)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"\nbomb: {size / 1e6:.2f} MB file, 2 members of {inflated_mib} MiB inflated, member cap {max_member_bytes >> 20} MiB: "
          f"peak RSS {out['peak_rss_mib']:.0f} MiB, {out['seconds']:.1f} s, errors {out['errors']}")
    os.unlink(path)
    return out


def _check_bomb(out: dict) -> None:
    assert out["candidates"] == _texts([0, 1])  # the pages on both sides of the bombs
    # the headerless one: not a record, then the member cap; the announced one: too large
    assert out["errors"] == ["malformed_record", "record_too_large", "record_too_large"]
    assert out["peak_rss_mib"] < 1024


def test_gzip_bomb_small_keeps_memory_flat():
    out = _run_bomb(160, 32 << 20)
    _check_bomb(out)


@pytest.mark.slow
def test_gzip_bomb_1_5_gb_keeps_memory_under_1_gib():
    out = _run_bomb(1500, warc.DEFAULT_MAX_MEMBER_BYTES)
    _check_bomb(out)
    assert out["seconds"] < 120


# ---- resynchronisation in linear time ------------------------------------------------------------

class _CountingOpen:
    """``open`` that counts the bytes read from the file (the real file, the real reader)."""

    def __init__(self):
        self.read = 0

    def __call__(self, path):
        counter = self
        f = open(path, "rb")
        orig = f.read

        def read(n=-1):
            b = orig(n)
            counter.read += len(b)
            return b

        f.read = read
        return f


@pytest.mark.parametrize("layout", ["plain", "gzip"])
def test_two_thousand_bad_records_in_a_row_resync_in_linear_time(layout, monkeypatch):
    good, _ = _write(_pages(1), layout)
    tail, _ = _write([("response", f"http://example.com/t{i}.html", _page_html(1000 + i) + b" " * 2000) for i in range(1500)], layout)
    if layout == "plain":  # records whose Content-Length is not a number, each with a block
        bad = b"".join(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 1x0\r\n\r\n" + b"junk " * 20 + b"\r\n\r\n"
                       for _ in range(2000))
    else:  # members that start a record, then fail their CRC
        member = gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 5\r\n\r\nhello\r\n\r\n")
        bad = (member[:-8] + bytes(8)) * 2000
    path = _tmp(good + bad + tail, _suffix(layout))
    counting = _CountingOpen()
    monkeypatch.setattr(warc.pio, "open_read", counting)
    t = time.time()
    cands, errors = _rows(path)
    seconds = time.time() - t
    print(f"\n{layout}: 2000 bad records + 1500 good ones ({os.path.getsize(path) / 1e6:.1f} MB) in {seconds:.2f} s, "
          f"{counting.read / os.path.getsize(path):.2f} x the file read")
    assert errors == ["malformed_record"] * 2000
    assert cands == _texts([0] + [1000 + i for i in range(1500)])
    assert counting.read <= 2 * os.path.getsize(path)  # every byte read at most twice: no rescans of the rest
    assert seconds < 30


# ---- property-based: random and broken archives ---------------------------------------------------

def _prop_settings(n: int):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


_prefixes = st.sampled_from([b"", b"WARC/1.0\r\n", b"WARC/1.1\r\nContent-Length: 10\r\n\r\n", b"\x1f\x8b\x08", b"\x1f\x8b\x08\x00" + bytes(6)])


def _random_bytes_prop(prefix: bytes, body: bytes, compress: bool):
    data = prefix + body
    if compress:
        data = gzip.compress(data)[: len(data) // 2 + 10] if len(data) % 3 == 0 else gzip.compress(data)
    path = _tmp(data, ".warc.gz" if compress else ".warc")
    try:
        _rows(path)
    finally:
        os.unlink(path)


_MUTATIONS = st.sampled_from(["longer", "shorter", "bad_header", "garbage_between", "corrupt_member", "truncate"])


def _mutated_prop(layout: str, n: int, k: int, kind: str, d: int, garbage: bytes, cut: float):
    """Break record ``k`` (or cut the file): every other record's candidates still come out."""
    k = k % n
    data, spans = _write(_pages(n), layout)
    raw, _ = _write(_pages(n), "plain") if layout == "whole-gzip" else (data, None)
    expect_error = True
    intact = [i for i in range(n) if i != k]
    if kind == "truncate":
        cutpos = max(1, min(len(data) - 1, int(len(data) * cut)))
        data = data[:cutpos]
        if layout == "whole-gzip":  # which records were inflated before the cut is the reader's business
            intact = None
        else:
            ends = [e - (4 if layout == "plain" else 0) for _, e in spans]
            intact = [i for i in range(n) if ends[i] <= cutpos]
            expect_error = not any(cutpos == s for s, _ in spans)
            if layout == "plain":  # a cut in the blank line after a block loses nothing
                expect_error = not any(e - 4 <= cutpos <= e for _, e in spans)
    else:
        if layout == "whole-gzip":
            data, spans = raw, _write(_pages(n), "plain")[1]
        s, e = spans[k]
        rec = data[s:e] if layout != "gzip" else gzip.decompress(data[s:e])
        if kind in ("longer", "shorter"):
            head, sep, rest = rec.partition(b"Content-Length: ")
            num, crlf, tail = rest.partition(b"\r\n")
            rec = head + sep + str(int(num) + (d if kind == "longer" else -d)).encode() + crlf + tail
        elif kind == "bad_header":
            rec = rec.replace(b"WARC-Type", b"\x00\xff garbage line without a colon\r\nWARC-Type", 1).replace(b"WARC/1.", b"WORC/1.", 1)
        elif kind == "garbage_between":
            intact = list(range(n))
            junk = garbage.replace(b"W", b"w").replace(b"\x1f", b"\x1e") + b"not a record\r\n"
            rec = rec + junk
        if layout == "gzip":
            member = gzip.compress(rec)
            if kind == "corrupt_member":
                member = member[:-8] + bytes(b ^ 0x55 for b in member[-8:-4]) + member[-4:]
            elif kind == "garbage_between":
                member = gzip.compress(rec[: len(rec) - len(junk)]) + junk
            rec = member
        elif kind == "corrupt_member":
            intact, expect_error = list(range(n)), False  # nothing to corrupt: plain bytes are left as they are
        data = data[:s] + rec + data[e:]
        if layout == "whole-gzip":
            data = gzip.compress(data)
    path = _tmp(data, _suffix(layout))
    try:
        cands, errors = _rows(path)
    finally:
        os.unlink(path)
    if intact is None:  # a prefix of the pages, and the cut is reported once
        assert cands == _texts(range(len(cands))) and errors == ["truncated_archive"]
        return
    want = _texts(intact)
    if kind == "truncate":
        assert set(want) <= set(cands) <= set(_texts(range(n)))
        assert errors == (["truncated_archive"] if expect_error else [])
    else:
        assert cands == want, (kind, layout, errors)
        assert bool(errors) == expect_error, (kind, layout, errors)


def _mutated_strategy():
    return dict(layout=st.sampled_from(LAYOUTS), n=st.integers(1, 5), k=st.integers(0, 4), kind=_MUTATIONS,
                d=st.integers(8, 64), garbage=st.binary(min_size=1, max_size=300), cut=st.floats(0.0, 1.0))


@_prop_settings(80)
@given(prefix=_prefixes, body=st.binary(max_size=3000), compress=st.booleans())
def test_random_bytes_never_raise(prefix, body, compress):
    _random_bytes_prop(prefix, body, compress)


@_prop_settings(80)
@given(**_mutated_strategy())
def test_broken_archives_lose_only_the_broken_record(layout, n, k, kind, d, garbage, cut):
    _mutated_prop(layout, n, k, kind, d, garbage, cut)


@_prop_settings(60)
@given(layout=st.sampled_from(LAYOUTS), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8),
       cut=st.floats(0.3, 1.0))
def test_randomly_mutated_archives_never_raise(layout, flips, cut):
    _flipped_prop(layout, flips, cut)


def _flipped_prop(layout, flips, cut):
    data, _ = _write(_pages(4), layout)
    b = bytearray(data)
    for where, x in flips:
        i = min(len(b) - 1, int(where * len(b)))
        b[i] ^= x
    path = _tmp(bytes(b[: max(1, int(len(b) * cut))]), _suffix(layout))
    try:
        cands, _ = _rows(path)
        if layout == "gzip":  # one member per record: a record whose member fails its CRC is not read
            assert set(cands) <= set(_texts(range(4)))
    finally:
        os.unlink(path)


@pytest.mark.slow
@_prop_settings(2000)
@given(prefix=_prefixes, body=st.binary(max_size=3000), compress=st.booleans())
def test_random_bytes_never_raise_2000(prefix, body, compress):
    _random_bytes_prop(prefix, body, compress)


@pytest.mark.slow
@_prop_settings(2000)
@given(**_mutated_strategy())
def test_broken_archives_lose_only_the_broken_record_2000(layout, n, k, kind, d, garbage, cut):
    _mutated_prop(layout, n, k, kind, d, garbage, cut)


@pytest.mark.slow
@_prop_settings(2000)
@given(layout=st.sampled_from(LAYOUTS), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8),
       cut=st.floats(0.3, 1.0))
def test_randomly_mutated_archives_never_raise_2000(layout, flips, cut):
    _flipped_prop(layout, flips, cut)


# ---- property-based: random HTML ------------------------------------------------------------------

_HOSTS = st.sampled_from(["example.com", "a..b", "x" * 64 + ".com", "ex\u00e4mple.de", "[::1]", "[::1", "127.0.0.1:99999",
                          "host:port", "xn--", "-bad-.com", "", "b\u00fccher.example", "\u2603.net", "a" * 300])
_SCHEMES = st.sampled_from(["http://", "https://", "HTTP://", "//", "ftp://", "data:image/png;base64,", "javascript:", "mailto:", ""])
_PATHS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
_ALTS = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from([" ", "\t", "\n"]), max_size=40)
_JUNK = st.text(max_size=40)


@st.composite
def _random_page(draw):
    parts, imgs = [], []
    for _ in range(draw(st.integers(0, 12))):
        what = draw(st.integers(0, 3))
        if what == 0:
            parts.append(htmllib.escape(draw(_JUNK)))
        elif what == 1:
            parts.append(draw(st.sampled_from(["<p>", "</p>", "<div class=x>", "</div>", "<br>", "<table><tr><td>", "</table>"])))
        else:
            src = (draw(_SCHEMES) + draw(_HOSTS) + "/" + draw(_PATHS)) if draw(st.booleans()) else draw(_PATHS)
            alt = draw(_ALTS)
            attrs = f' src="{htmllib.escape(src)}"' if draw(st.integers(0, 5)) else ""
            parts.append(f'<img{attrs} alt="{htmllib.escape(alt)}">')
            imgs.append((src if attrs else "", alt))
    known = draw(st.integers(0, 3))
    for i in range(known):
        parts.append(f'<img src="/known/{i}.jpg" alt="known picture {i}">')
    return "<html><body>" + "".join(parts) + "</body></html>", imgs, known


PAGE = "http://example.com/dir/page.html"


def _html_prop(page):
    html, imgs, known = page
    rejected: list[str] = []
    got = extract_images(html, PAGE, rejected)
    # accounting, computed independently: an <img> with an alt whose src resolves (stdlib urljoin)
    # to an http(s) URL is either a candidate or an invalid_url row
    expected = 0
    for src, alt in imgs:
        src = src.strip()
        if not clean_text(alt) or not src:
            continue
        try:
            url = urljoin(PAGE, src)
        except ValueError:
            expected += 1
            continue
        expected += url.strip().lower().startswith(("http://", "https://"))
    assert len(got) + len(rejected) == expected + known, (got, rejected, imgs)
    assert all(r.startswith("invalid_url:") and len(r) > len("invalid_url:") for r in rejected)
    for i in range(known):
        assert (f"http://example.com/known/{i}.jpg", f"known picture {i}") in got
    for url, alt in got:
        assert url.startswith(("http://", "https://")) and alt == clean_text(alt) and alt
    # the same page through the whole crawl stage
    data, _ = _write([("response", PAGE, html.encode())], "gzip")
    path = _tmp(data, ".warc.gz")
    try:
        rows = list(crawl_file(path))
    finally:
        os.unlink(path)
    assert sorted((r["url"], r["text"]) for k, r in rows if k == "candidate") == sorted(got)
    assert sorted(r["reason"] for k, r in rows if k == "status" and r["status"] == "error") == sorted(rejected)


@_prop_settings(100)
@given(page=_random_page())
def test_random_html_never_raises_and_accounts_for_every_image(page):
    _html_prop(page)


@pytest.mark.slow
@_prop_settings(2000)
@given(page=_random_page())
def test_random_html_never_raises_and_accounts_for_every_image_2000(page):
    _html_prop(page)
