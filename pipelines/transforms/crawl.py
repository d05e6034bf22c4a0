"""Crawl stage: WARC pages and Common Crawl WAT metadata -> image-text candidates; the table
sources (``--input-format yfcc | redcaps | url-list``, ``pipelines/sources/``) go through the same
stage, so every input format writes the same candidates and crawl_status tables.

From HTML (``response`` records) every ``<img>`` with a non-empty alt text becomes a candidate:
its URL resolved against the page (and ``<base href>``), entities decoded, whitespace
collapsed. The image URL is ``src``, else ``data-src`` (lazy loading), else the first
``srcset`` candidate (the one authors list as the default). Skipped: data:, javascript:,
blob: and other non-http(s) sources, empty alts, and 1x1 tracking pixels. WAT ``metadata``
records give the same from their ``IMG@/src`` links.

Nothing raises out of this stage for any archive bytes: every failure becomes a ``crawl_status``
row with a machine-readable reason and the file goes on. Reasons: ``malformed_record``,
``truncated_archive``, ``record_too_large``, ``unreadable_file`` (the reader, see
``pipelines.sources.warc``), ``http_parse_error`` (a response block that is not HTTP),
``decode_error`` (no charset decodes the page; it is read with replacement characters),
``bad_wat_json``, ``missing_warc_date``, ``invalid_url:<why>`` (one row per image URL that URL
normalisation refuses: a bad port, an IDNA failure, ...) and ``crawl_error:<ExceptionType>`` as
the last resort for anything else.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Iterator

import apache_beam as beam
from selectolax.lexbor import LexborHTMLParser

from pipelines import io as pio
from pipelines import schema
from pipelines.sources import redcaps, urllist, yfcc
from pipelines.sources.tables import INPUT_FORMATS, TableOptions
from pipelines.sources.warc import (DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_RECORD_BYTES, RecordError, iter_records,
                                    parse_warc_date)
from pipelines.stats import StageSummary
from pipelines.uid import make_uid
from pipelines.urls import is_http_url, normalize_url, resolve

STAGE = "crawl"
_WS = re.compile(r"\s+")
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)
_HTTP_CHARSET = re.compile(r"charset=([A-Za-z0-9_\-]+)", re.I)
_WHY = re.compile(r"[^A-Za-z0-9_.-]+")


def clean_text(text: str | None) -> str:
    return _WS.sub(" ", text or "").strip()


def decode_html(payload: bytes, content_type: str | None) -> tuple[str, str | None]:
    """(text, problem): charset from the HTTP header, then ``<meta charset>``, then UTF-8."""
    tried = []
    m = _HTTP_CHARSET.search(content_type or "")
    if m:
        tried.append(m.group(1))
    m = _META_CHARSET.search(payload[:4096])
    if m:
        tried.append(m.group(1).decode("ascii", "ignore"))
    for enc in tried + ["utf-8"]:
        try:
            return payload.decode(enc), None
        except (LookupError, ValueError):  # unknown codec, bytes it cannot decode (UnicodeError)
            continue
    return payload.decode("utf-8", errors="replace"), "decode_error"


def _first_srcset(srcset: str) -> str | None:
    for cand in srcset.split(","):
        url = cand.strip().split(" ")[0].strip()
        if url:
            return url
    return None


def _is_pixel(attrs: dict) -> bool:
    return str(attrs.get("width", "")).strip() in ("0", "1") and str(attrs.get("height", "")).strip() in ("0", "1")


def _why(e: Exception) -> str:
    why = getattr(e, "reason", None) or getattr(e, "why", None) or type(e).__name__
    return _WHY.sub("_", str(why)).strip("_")[:60] or type(e).__name__


def candidate_url(src: str | None, base: str, rejected: list[str] | None = None) -> str | None:
    """The normalised absolute http(s) URL of an image source found on the page at ``base``.

    None for sources that are not web images (data:, javascript:, ...) and for URLs that URL
    normalisation refuses; the latter add ``invalid_url:<why>`` to ``rejected``."""
    src = (src or "").strip()
    if not src:
        return None
    url = resolve(src, base)
    if url is None:
        if rejected is not None:
            rejected.append("invalid_url:unresolvable")
        return None
    if not is_http_url(url):
        return None
    try:
        out = normalize_url(url)
        why = "unparseable"
    except Exception as e:  # normalisation's typed errors, IDNA, ports, anything else
        out, why = None, _why(e)
    if not out and rejected is not None:
        rejected.append(f"invalid_url:{why}")
    return out or None


def extract_images(html: str, page_url: str, rejected: list[str] | None = None) -> list[tuple[str, str]]:
    """(absolute normalised image URL, alt text) for every usable ``<img>`` of the page; each
    image URL that normalisation refuses adds its ``invalid_url:<why>`` to ``rejected``."""
    tree = LexborHTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = resolve(base_node.attributes.get("href") or "", page_url) or page_url
    out = []
    for node in tree.css("img"):
        attrs = node.attributes
        alt = clean_text(attrs.get("alt"))
        if not alt or _is_pixel(attrs):
            continue
        src = (attrs.get("src") or "").strip() or (attrs.get("data-src") or "").strip()
        if not src and attrs.get("srcset"):
            src = _first_srcset(attrs["srcset"]) or ""
        url = candidate_url(src, base, rejected)
        if url:
            out.append((url, alt))
    return out


def extract_wat_images(payload: bytes, rejected: list[str] | None = None) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """(page URL, WARC-Date, images) from a Common Crawl WAT JSON record (``rejected`` as in
    ``extract_images``)."""
    env = json.loads(payload)["Envelope"]
    header = env.get("WARC-Header-Metadata", {})
    page_url = header.get("WARC-Target-URI")
    html_meta = env.get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {}).get("HTML-Metadata", {})
    base = html_meta.get("Head", {}).get("Base") or page_url
    if base and page_url:
        base = resolve(base, page_url)
    out = []
    for link in html_meta.get("Links", []) or []:
        if not str(link.get("path", "")).upper().startswith("IMG@"):
            continue
        alt = clean_text(link.get("alt"))
        if not alt:
            continue
        url = candidate_url(link.get("url") or "", base or "", rejected)
        if url:
            out.append((url, alt))
    return page_url, header.get("WARC-Date"), out


def crawl_id_of(path: str, warcinfo: dict | None = None) -> str:
    m = _CRAWL_ID.search(path)
    if m:
        return m.group(0)
    if warcinfo and warcinfo.get("isPartOf"):
        return warcinfo["isPartOf"]
    return os.path.basename(path).split(".")[0]


def _warcinfo_fields(payload: bytes) -> dict:
    out = {}
    for line in payload.decode("utf-8", "replace").splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def source_name(path: str, root: str | None) -> str:
    """``path`` relative to ``root`` when inside it (so outputs do not depend on where data lives)."""
    if root and pio.is_local(path) and pio.is_local(root):
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if not rel.startswith(".."):
            return rel
    return path


def _page_images(rec, rejected: list[str]) -> tuple[str | None, object, list[tuple[str, str]], str | None] | str | None:
    """(page URL, crawl time, images, problem) of a record; None when it holds no page; a reason
    when it holds a page that cannot be read. ``problem``: a reason to report for a page that
    still gives its images."""
    if rec.warc_type == "response":
        if not rec.http_ok:
            return "http_parse_error"
        ctype = rec.http_headers.get("content-type", "")
        if rec.http_status != 200 or ("html" not in ctype.lower() and not rec.payload.lstrip()[:20].lower().startswith((b"<!doctype", b"<html"))):
            return None
        html, problem = decode_html(rec.payload, ctype)
        return rec.target_uri, rec.date, extract_images(html, rec.target_uri or "", rejected), problem
    if rec.warc_type == "metadata" and rec.payload.lstrip()[:1] == b"{":
        try:
            page_url, date, images = extract_wat_images(rec.payload, rejected)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            rejected.clear()
            return "bad_wat_json"
        return page_url, parse_warc_date(date) or rec.date, images, None
    return None


def _page_norm(page_url) -> str | None:
    try:
        return normalize_url(page_url) or page_url
    except Exception:  # the page's own URL is only recorded, never fetched
        return page_url if isinstance(page_url, str) else None


def crawl_file(path: str, source_root: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
               max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> Iterator[tuple[str, dict]]:
    """("candidate", row) and ("status", row) for one WARC/WAT file; never raises on bad input.
    The last row is the file's ("status", ok) row with its candidate count."""
    source = source_name(path, source_root)
    crawl_id = crawl_id_of(path)
    n_total, years = 0, set()

    def _status(offset, record_id, reason):
        return {"source": source, "record_offset": offset, "record_id": record_id, "status": "error", "reason": reason,
                "n_candidates": 0, "year": _file_year(crawl_id, years)}

    records = iter_records(path, max_record_bytes=max_record_bytes, max_member_bytes=max_member_bytes)
    offset = None
    while True:
        try:
            rec = next(records)
        except StopIteration:
            break
        except Exception as e:  # a reader bug must not cost the file its accounting
            yield "status", _status(offset, None, f"crawl_error:{type(e).__name__}")
            break
        offset = rec.offset
        if isinstance(rec, RecordError):
            yield "status", _status(rec.offset, rec.record_id, rec.reason)
            continue
        rejected: list[str] = []
        try:
            if rec.warc_type == "warcinfo":
                crawl_id = crawl_id_of(path, _warcinfo_fields(rec.payload))
                continue
            page = _page_images(rec, rejected)
            if page is None:
                continue
            if isinstance(page, str):
                yield "status", _status(rec.offset, rec.record_id, page)
                continue
            page_url, when, images, problem = page
            page_norm = _page_norm(page_url)
        except Exception as e:  # a parser bug must not lose the rest of the file
            yield "status", _status(rec.offset, rec.record_id, f"crawl_error:{type(e).__name__}")
            continue
        if problem:
            yield "status", _status(rec.offset, rec.record_id, problem)
        for reason in rejected:
            yield "status", _status(rec.offset, rec.record_id, reason)
        if when is None:
            yield "status", _status(rec.offset, rec.record_id, "missing_warc_date")
            continue
        for url, text in images:
            n_total += 1
            years.add(when.year)
            yield "candidate", _candidate_row(url, text, page_norm, crawl_id, when, source, rec.offset)
    yield "status", {"source": source, "record_offset": None, "record_id": None, "status": "ok", "reason": None,
                     "n_candidates": n_total, "year": _file_year(crawl_id, years)}


def _file_year(crawl_id: str, years: set) -> int | None:
    """A file's year: its earliest candidate's, else its crawl's (CC-MAIN-YYYY-..), else None."""
    m = re.search(r"CC-MAIN-(\d{4})", crawl_id)
    return min(years) if years else (int(m.group(1)) if m else None)


def _candidate_row(url: str, text, page_norm, crawl_id: str, when, source: str, offset: int) -> dict:
    return {"uid": make_uid(url, text), "url": url, "text": text, "page_url": page_norm, "crawl_id": crawl_id,
            "crawl_time": when, "source": source, "record_offset": offset, "year": when.year, "month": when.month}


TABLE_FORMATS = {m.NAME: m.read_file for m in (yfcc, redcaps, urllist)}
assert INPUT_FORMATS == ("warc",) + tuple(TABLE_FORMATS)  # the CLI's choices (sources/tables.py) name every reader


def read_file(path: str, source_root: str | None = None, fmt: str = "warc", opts: TableOptions | None = None
              ) -> Iterator[tuple[str, dict]]:
    """("candidate", row) and ("status", row) for one input file of format ``fmt``."""
    if fmt == "warc":
        yield from crawl_file(path, source_root)
        return
    yield from TABLE_FORMATS[fmt](path, source_name(path, source_root), opts or TableOptions())


def check_inputs(files: list[str], fmt: str, opts: TableOptions | None = None) -> None:
    """Refuse a table input whose columns or structure are not its format's (ValueError naming
    the file and what is missing), before any pipeline runs. WARC files need no check: any
    bytes become crawl_status rows."""
    if fmt == "warc":
        return
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown --input-format {fmt!r}; known: {', '.join(INPUT_FORMATS)}")
    for f in files:
        try:
            next(iter(TABLE_FORMATS[fmt](f, f, opts or TableOptions())), None)
        except ValueError:
            raise
        except Exception as e:  # unreadable file, bad JSON, bad CSV quoting
            raise ValueError(f"{f}: cannot be read as {fmt}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


class _CrawlFile(beam.DoFn):
    def __init__(self, source_root: str | None = None, fmt: str = "warc", opts: TableOptions | None = None):
        self.source_root, self.fmt, self.opts = source_root, fmt, opts

    def process(self, path):
        for kind, row in read_file(path, self.source_root, self.fmt, self.opts):
            if kind == "candidate":
                yield row
            else:
                yield beam.pvalue.TaggedOutput("status", row)


class ReadCandidates(beam.PTransform):
    """File paths -> tagged outputs ``candidates`` (main) and ``status`` (crawl_status rows)."""

    def __init__(self, files: list[str], source_root: str | None = None, fmt: str = "warc", opts: TableOptions | None = None):
        super().__init__()
        self.files = list(files)
        self.source_root, self.fmt, self.opts = source_root, fmt, opts

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "Spread" >> beam.Reshuffle()
            | "Crawl" >> beam.ParDo(_CrawlFile(self.source_root, self.fmt, self.opts)).with_outputs("status", main="candidates")
        )


def _write_year(year, rows, out_dir: str, table_schema, sort_key) -> int:
    rows = sorted(rows, key=sort_key)
    pio.write_parquet(pio.join(out_dir, f"year={year}", "part-00000.parquet"), schema.to_table(rows, table_schema))
    return len(rows)


class WriteByYear(beam.PTransform):
    """Rows -> ``out_dir/year=YYYY/part-00000.parquet``, sorted for byte-reproducible files."""

    def __init__(self, out_dir: str, table_schema, sort_key):
        super().__init__()
        self.out_dir, self.table_schema, self.sort_key = out_dir, table_schema, sort_key

    def expand(self, rows):
        out_dir, table_schema, sort_key = self.out_dir, self.table_schema, self.sort_key
        return (
            rows
            | "ByYear" >> beam.Map(lambda r: (r["year"] if r["year"] is not None else 0, r))
            | "GroupYear" >> beam.GroupByKey()
            | "WriteYear" >> beam.MapTuple(lambda y, rs: _write_year(y, rs, out_dir, table_schema, sort_key))
        )


def candidate_order(row):
    return (row["crawl_time"], row["uid"], row["source"], row["record_offset"])


def status_order(row):
    return (row["source"], row["record_offset"] if row["record_offset"] is not None else -1, row["status"], row["reason"] or "")


def crawl_pipeline(p, files: list[str], candidates_dir: str, status_dir: str, source_root: str | None = None,
                   fmt: str = "warc", opts: TableOptions | None = None) -> None:
    """Wire the crawl stage into pipeline ``p``: read files, write candidates and crawl status.
    ``source_root``: record sources relative to it (the synthetic web's directory); ``fmt``: the
    input format (``INPUT_FORMATS``), ``opts`` a table source's options."""
    read = p | "ReadCandidates" >> ReadCandidates(files, source_root, fmt, opts)
    _ = read.candidates | "WriteCandidates" >> WriteByYear(candidates_dir, schema.CANDIDATE, candidate_order)
    _ = read.status | "WriteCrawlStatus" >> WriteByYear(status_dir, schema.CRAWL_STATUS, status_order)


def summarize(candidates_dir: str, status_dir: str, seconds: float) -> dict:
    """Print the crawl summary from what was written; return its counts."""
    cands = pio.read_parquet(pio.join(candidates_dir, "*", "*.parquet"), ["year"])
    status = pio.read_parquet(pio.join(status_dir, "*", "*.parquet"))
    n_cand = cands.num_rows if cands is not None else 0
    summary = StageSummary(STAGE, seconds=seconds)
    errors: dict[str, int] = {}
    n_files = 0
    if status is not None:
        for st, reason in zip(status.column("status").to_pylist(), status.column("reason").to_pylist()):
            if st == "ok":
                n_files += 1
            else:
                errors[reason] = errors.get(reason, 0) + 1
    summary.add("kept", None, n_cand)
    for reason, n in errors.items():
        summary.add("dropped", f"record:{reason}", n)
    by_year: dict[int, int] = {}
    if cands is not None:
        for y in cands.column("year").to_pylist():
            by_year[y] = by_year.get(y, 0) + 1
    print(f"\n=== crawl: {n_files} files, {n_cand} candidates, {sum(errors.values())} records or rows dropped (unreadable, outside the years), {seconds:.1f} s")
    print(StageSummary.render_all([summary]))
    print("candidates by year: " + ", ".join(f"{y}: {n}" for y, n in sorted(by_year.items())))
    return {"files": n_files, "candidates": n_cand, "record_errors": errors, "by_year": {str(k): v for k, v in sorted(by_year.items())}}
