"""Crawl stage: HTML and WAT extraction rules, broken archives, the CLI."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys

import pyarrow.parquet as pq
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines.sources.warc import RecordError, iter_records
from pipelines.transforms.crawl import crawl_file, extract_images

PAGE = "http://Example.com:80/site/2019/page.html"

HTML = """<html><head><base href="http://cdn.example.com/assets/"></head><body>
<img src="a.jpg" alt="a red star on the sea">
<img src="//img.example.org/b.jpg" alt="Fish &amp; chips &quot;special&quot; &eacute;t&eacute;">
<img src="/c.jpg" alt="   spaced
   out   alt  ">
<img srcset="d-small.jpg 480w, d-large.jpg 1080w" alt="srcset only picture">
<img data-src="e.jpg" alt="lazy loaded picture">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">
<img src="javascript:void(0)" alt="script">
<img src="mailto:x@example.com" alt="mail">
<img src="pixel.gif" width="1" height="1" alt="tracker">
<img src="noalt.jpg">
<img src="emptyalt.jpg" alt="  ">
</body></html>"""


def test_extract_images_rules():
    got = extract_images(HTML, PAGE)
    assert got == [
        ("http://cdn.example.com/assets/a.jpg", "a red star on the sea"),
        ("http://img.example.org/b.jpg", 'Fish & chips "special" été'),
        ("http://cdn.example.com/c.jpg", "spaced out alt"),
        ("http://cdn.example.com/assets/d-small.jpg", "srcset only picture"),
        ("http://cdn.example.com/assets/e.jpg", "lazy loaded picture"),
    ]


def test_relative_urls_without_base_resolve_against_page():
    got = extract_images('<img src="../img/x.jpg" alt="one two three"><img src="img/y.jpg" alt="four five six">', PAGE)
    assert [u for u, _ in got] == ["http://example.com/site/img/x.jpg", "http://example.com/site/2019/img/y.jpg"]


def _response(writer, uri, html: bytes, charset="utf-8", date="2019-03-04T05:06:07Z"):
    headers = StatusAndHeaders("200 OK", [("Content-Type", f"text/html; charset={charset}")], protocol="HTTP/1.1")
    rec = writer.create_warc_record(uri, "response", payload=io.BytesIO(html), http_headers=headers,
                                    warc_headers_dict={"WARC-Date": date})
    writer.write_record(rec)


def _wat(writer, uri, links, date="2019-03-04T05:06:07Z"):
    env = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": uri, "WARC-Date": date, "WARC-Type": "response"},
                        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Head": {"Base": "http://cdn.example.com/assets/"},
                                                                                           "Links": links}}}}}
    rec = writer.create_warc_record(uri, "metadata", payload=io.BytesIO(json.dumps(env).encode()),
                                    warc_content_type="application/json", warc_headers_dict={"WARC-Date": date})
    writer.write_record(rec)


def test_wat_gives_the_same_candidates_as_the_warc(tmp_path):
    warc, wat = tmp_path / "CC-MAIN-2019-13-x.warc.gz", tmp_path / "CC-MAIN-2019-13-x.warc.wat.gz"
    with open(warc, "wb") as f:
        _response(WARCWriter(f, gzip=True), PAGE, HTML.encode())
    links = [{"path": "IMG@/src", "url": "a.jpg", "alt": "a red star on the sea"},
             {"path": "IMG@/src", "url": "//img.example.org/b.jpg", "alt": 'Fish & chips "special" été'},
             {"path": "IMG@/src", "url": "/c.jpg", "alt": "   spaced\n   out   alt  "},
             {"path": "IMG@/src", "url": "d-small.jpg", "alt": "srcset only picture"},
             {"path": "IMG@/src", "url": "e.jpg", "alt": "lazy loaded picture"},
             {"path": "IMG@/src", "url": "data:image/png;base64,xx", "alt": "inline"},
             {"path": "A@/href", "url": "other.html", "text": "a link"}]
    with open(wat, "wb") as f:
        _wat(WARCWriter(f, gzip=True), PAGE, links)
    a = [r for k, r in crawl_file(str(warc)) if k == "candidate"]
    b = [r for k, r in crawl_file(str(wat)) if k == "candidate"]
    assert len(a) == 5
    key = lambda r: (r["uid"], r["url"], r["text"], r["page_url"], r["crawl_time"], r["crawl_id"])
    assert sorted(map(key, a)) == sorted(map(key, b))
    assert a[0]["crawl_id"] == "CC-MAIN-2019-13" and a[0]["year"] == 2019 and a[0]["month"] == 3
    assert a[0]["page_url"] == "http://example.com/site/2019/page.html"


def test_bad_wat_json_is_a_status_row(tmp_path):
    p = tmp_path / "bad.wat.gz"
    with open(p, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warc_record(PAGE, "metadata", payload=io.BytesIO(b"{not json"),
                                            warc_content_type="application/json", warc_headers_dict={"WARC-Date": "2019-01-01T00:00:00Z"}))
        _wat(w, PAGE, [{"path": "IMG@/src", "url": "z.jpg", "alt": "still read after the bad one"}])
    rows = list(crawl_file(str(p)))
    assert [r["reason"] for k, r in rows if k == "status" and r["status"] == "error"] == ["bad_wat_json"]
    assert [r["text"] for k, r in rows if k == "candidate"] == ["still read after the bad one"]


def test_non_utf8_page_is_decoded_with_its_charset(tmp_path):
    p = tmp_path / "latin.warc.gz"
    html = '<meta charset="iso-8859-1"><img src="x.jpg" alt="caf\u00e9 au lait on a table">'.encode("iso-8859-1")
    with open(p, "wb") as f:
        _response(WARCWriter(f, gzip=True), PAGE, html, charset="iso-8859-1")
    texts = [r["text"] for k, r in crawl_file(str(p)) if k == "candidate"]
    assert texts == ["caf\u00e9 au lait on a table"]


def _three_pages(tmp_path, name="x.warc.gz"):
    p = tmp_path / name
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    offsets = []
    for i in range(3):
        offsets.append(buf.tell())
        _response(w, f"http://example.com/p{i}.html", f'<img src="i{i}.jpg" alt="picture number {i} here">'.encode())
    return p, buf.getvalue(), offsets


def test_malformed_record_in_the_middle_does_not_lose_the_rest(tmp_path):
    p, data, offsets = _three_pages(tmp_path)
    start, end = offsets[1], offsets[2]
    raw = gzip.decompress(data[start:end]).replace(b"Content-Length: ", b"Content-Length: 9x", 1)
    p.write_bytes(data[:start] + gzip.compress(raw) + data[end:])
    rows = list(crawl_file(str(p)))
    texts = sorted(r["text"] for k, r in rows if k == "candidate")
    assert "picture number 0 here" in texts and "picture number 2 here" in texts
    errors = [r for k, r in rows if k == "status" and r["status"] == "error"]
    assert errors and all(e["reason"] in ("malformed_record", "http_parse_error") for e in errors)


def test_truncated_archive_keeps_earlier_records_and_says_so(tmp_path):
    p, data, offsets = _three_pages(tmp_path)
    p.write_bytes(data[: offsets[2] + (len(data) - offsets[2]) // 2])
    recs = list(iter_records(str(p)))
    assert [r.reason for r in recs if isinstance(r, RecordError)] == ["truncated_archive"]
    rows = list(crawl_file(str(p)))
    assert sorted(r["text"] for k, r in rows if k == "candidate") == ["picture number 0 here", "picture number 1 here"]
    ok = [r for k, r in rows if k == "status" and r["status"] == "ok"]
    assert ok[0]["n_candidates"] == 2


def test_missing_file_is_a_status_row(tmp_path):
    rows = list(crawl_file(str(tmp_path / "nope.warc.gz")))
    assert rows[0][1]["reason"] == "unreadable_file"


def test_cli_writes_partitioned_candidates_and_status(tmp_path):
    p, data, _ = _three_pages(tmp_path, "CC-MAIN-2019-09-seg.warc.gz")
    p.write_bytes(data)
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) - 40])
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "pipelines", "crawl", "--input", str(tmp_path / "*.warc.gz"), "--output", str(out)],
                         capture_output=True, text=True, check=True)
    assert "=== crawl: 2 files" in res.stdout
    cands = pq.read_table(out / "year=2019" / "part-00000.parquet")
    assert cands.num_rows == 5 and set(cands.column("crawl_id").to_pylist()) == {"CC-MAIN-2019-09", "cut"}
    status = pq.read_table(out / "crawl_status" / "year=2019" / "part-00000.parquet").to_pylist()
    assert any(r["reason"] == "truncated_archive" for r in status)


def test_image_urls_normalisation_refuses_are_status_rows(tmp_path):
    p = tmp_path / "bad-urls.warc.gz"
    html = ('<img src="http://example.com:99999/port.jpg" alt="a port out of range">'
            '<img src="http://[::1/open-bracket.jpg" alt="an unclosed IPv6 bracket">'
            '<img src="ok.jpg" alt="a fine picture after them">').encode()
    with open(p, "wb") as f:
        _response(WARCWriter(f, gzip=True), PAGE, html)
    rows = list(crawl_file(str(p)))
    assert [r["text"] for k, r in rows if k == "candidate"] == ["a fine picture after them"]
    errors = [r for k, r in rows if k == "status" and r["status"] == "error"]
    assert len(errors) == 2 and all(r["reason"].startswith("invalid_url:") and r["record_id"] for r in errors)
    assert errors[1]["reason"] == "invalid_url:unresolvable"
