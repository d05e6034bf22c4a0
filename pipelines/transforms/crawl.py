"""Crawl stage: WARC pages and Common Crawl WAT metadata -> image-text candidates.

From HTML (``response`` records) every ``<img>`` with a non-empty alt text becomes a candidate:
its URL resolved against the page (and ``<base href>``), entities decoded, whitespace
collapsed. The image URL is ``src``, else ``data-src`` (lazy loading), else the first
``srcset`` candidate (the one authors list as the default). Skipped: data:, javascript:,
blob: and other non-http(s) sources, empty alts, and 1x1 tracking pixels. WAT ``metadata``
records give the same from their ``IMG@/src`` links.

Every unreadable record becomes a ``crawl_status`` row and the file goes on.
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
from pipelines.sources.warc import Record, RecordError, iter_records
from pipelines.stats import StageSummary
from pipelines.uid import make_uid
from pipelines.urls import is_http_url, normalize_url, resolve

STAGE = "crawl"
_WS = re.compile(r"\s+")
_CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)
_HTTP_CHARSET = re.compile(r"charset=([A-Za-z0-9_\-]+)", re.I)


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
        except (LookupError, UnicodeDecodeError):
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


def extract_images(html: str, page_url: str) -> list[tuple[str, str]]:
    """(absolute normalised image URL, alt text) for every usable ``<img>`` of the page."""
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
        url = resolve(src, base)
        if not is_http_url(url):
            continue
        url = normalize_url(url)
        if url:
            out.append((url, alt))
    return out


def extract_wat_images(payload: bytes) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """(page URL, WARC-Date, images) from a Common Crawl WAT JSON record."""
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
        url = resolve(link.get("url") or "", base or "")
        if alt and is_http_url(url):
            url = normalize_url(url)
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


def crawl_file(path: str, source_root: str | None = None) -> Iterator[tuple[str, dict]]:
    """("candidate", row) and ("status", row) for one WARC/WAT file; never raises on bad input."""
    from pipelines.sources.warc import parse_warc_date

    source = source_name(path, source_root)
    crawl_id = crawl_id_of(path)
    n_total, years = 0, set()

    def file_year():
        m = re.search(r"CC-MAIN-(\d{4})", crawl_id)
        return min(years) if years else (int(m.group(1)) if m else None)

    def _status(path, offset, record_id, status, reason, n):
        return {"source": source, "record_offset": offset, "record_id": record_id, "status": status, "reason": reason,
                "n_candidates": n, "year": file_year()}

    for rec in iter_records(path):
        if isinstance(rec, RecordError):
            yield "status", _status(path, rec.offset, rec.record_id, "error", rec.reason, 0)
            continue
        if rec.warc_type == "warcinfo":
            crawl_id = crawl_id_of(path, _warcinfo_fields(rec.payload))
            continue
        try:
            if rec.warc_type == "response":
                if not rec.http_ok:
                    yield "status", _status(path, rec.offset, rec.record_id, "error", "http_parse_error", 0)
                    continue
                ctype = rec.http_headers.get("content-type", "")
                if rec.http_status != 200 or ("html" not in ctype.lower() and not rec.payload.lstrip()[:20].lower().startswith((b"<!doctype", b"<html"))):
                    continue
                html, problem = decode_html(rec.payload, ctype)
                if problem:
                    yield "status", _status(path, rec.offset, rec.record_id, "error", problem, 0)
                page_url, when, images = rec.target_uri, rec.date, extract_images(html, rec.target_uri or "")
            elif rec.warc_type == "metadata" and rec.payload.lstrip()[:1] == b"{":
                try:
                    page_url, date, images = extract_wat_images(rec.payload)
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    yield "status", _status(path, rec.offset, rec.record_id, "error", "bad_wat_json", 0)
                    continue
                when = parse_warc_date(date) or rec.date
            else:
                continue
        except Exception as e:  # a parser bug must not lose the rest of the file
            yield "status", _status(path, rec.offset, rec.record_id, "error", f"malformed_record", 0)
            continue
        if when is None:
            yield "status", _status(path, rec.offset, rec.record_id, "error", "missing_warc_date", 0)
            continue
        page_norm = normalize_url(page_url) or page_url
        for url, text in images:
            n_total += 1
            years.add(when.year)
            yield "candidate", {
                "uid": make_uid(url, text), "url": url, "text": text, "page_url": page_norm, "crawl_id": crawl_id,
                "crawl_time": when, "source": source, "record_offset": rec.offset, "year": when.year, "month": when.month,
            }
    yield "status", _status(path, None, None, "ok", None, n_total)


class _CrawlFile(beam.DoFn):
    def __init__(self, source_root: str | None = None):
        self.source_root = source_root

    def process(self, path):
        for kind, row in crawl_file(path, self.source_root):
            if kind == "candidate":
                yield row
            else:
                yield beam.pvalue.TaggedOutput("status", row)


class ReadCandidates(beam.PTransform):
    """File paths -> tagged outputs ``candidates`` (main) and ``status`` (crawl_status rows)."""

    def __init__(self, files: list[str], source_root: str | None = None):
        super().__init__()
        self.files = list(files)
        self.source_root = source_root

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self.files)
            | "Spread" >> beam.Reshuffle()
            | "Crawl" >> beam.ParDo(_CrawlFile(self.source_root)).with_outputs("status", main="candidates")
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


def crawl_pipeline(p, files: list[str], candidates_dir: str, status_dir: str, source_root: str | None = None) -> None:
    """Wire the crawl stage into pipeline ``p``: read files, write candidates and crawl status.
    ``source_root``: record sources relative to it (the synthetic web's directory)."""
    read = p | "ReadCandidates" >> ReadCandidates(files, source_root)
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
    print(f"\n=== crawl: {n_files} files, {n_cand} candidates, {sum(errors.values())} unreadable records, {seconds:.1f} s")
    print(StageSummary.render_all([summary]))
    print("candidates by year: " + ", ".join(f"{y}: {n}" for y, n in sorted(by_year.items())))
    return {"files": n_files, "candidates": n_cand, "record_errors": errors, "by_year": {str(k): v for k, v in sorted(by_year.items())}}
