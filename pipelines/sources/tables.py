"""What every table source shares: candidate and status rows, image locations, reading tables.

A table source (TiC-YFCC's YFCC15M CSV, TiC-RedCaps' annotation files, a plain URL list) turns
one input file into the same rows the WARC crawl yields: ``("candidate", row)`` with a row of
``schema.CANDIDATE`` and ``("status", row)`` with a row of ``schema.CRAWL_STATUS`` for an input
row that is no candidate (outside the benchmark's years, no time, no URL, a URL that URL
normalisation refuses) and a last ``("status", ok)`` row with the file's candidate count. So
everything after the source (timestamp, download or read, dedup, filter, split, write, index)
is shared, and every input row ends as a candidate or a reason.

Columns of a candidate from a table source: ``url`` is the image's http(s) URL, or a
``file://`` URL of the image under ``--image-root`` (read by the download stage, with the same
size and format guards as a fetch); ``text`` the caption; ``crawl_time`` the row's own time
(upload or post time), which decides its year; ``crawl_id`` the source's id of the row
(``yfcc15m:<key>``, ``redcaps:<subreddit>/<image_id>``, ``url-list:<row>``); ``source`` the input
file; ``record_offset`` the row's index in it. The uid is DataComp's md5 of (image, caption)
where the image of a local file is its path relative to the image root, so moving the image
folder keeps every uid.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Iterator

from pipelines.uid import make_uid
from pipelines.urls import is_http_url, normalize_url

UTC = dt.timezone.utc
INPUT_FORMATS = ("warc", "yfcc", "redcaps", "url-list")  # --input-format: WARC/WAT and the table sources


@dataclass(frozen=True)
class TableOptions:
    """How a table source reads its input (``build --input-format ...``)."""
    years: tuple[int, ...] = ()  # the benchmark's years: a row of another year is ``outside_years:<year>``
    image_root: str = ""  # local image folder: images are read there instead of downloaded
    url_col: str = ""  # url-list (and YFCC's download URL column); "": the format's default
    caption_col: str = ""
    time_col: str = ""


def file_url(root: str, rel: str) -> str:
    """``file://`` URL of ``rel`` under the local folder ``root``."""
    from pipelines import io as pio

    return "file://" + os.path.abspath(os.path.join(pio.local_path(root), rel))


def parse_time(value) -> dt.datetime | None:
    """A row's time: Unix seconds (int, float or a numeric string), an ISO date or date-time
    (``2019-03-04``, ``2019-03-04T10:00:00Z``; without a zone: UTC), or a datetime; always in UTC
    (its year is the UTC year). None if unreadable."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN
            return None
        try:
            return dt.datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    if not text:
        return None
    try:
        return dt.datetime.fromtimestamp(float(text), UTC)
    except (OverflowError, OSError, ValueError):
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


class Rows:
    """Builds one input file's rows; counts its candidates for the closing ``ok`` row."""

    def __init__(self, source: str, opts: TableOptions):
        self.source, self.opts, self.n, self.years = source, opts, 0, set()

    def status(self, offset: int | None, record_id: str | None, reason: str, year: int | None = None) -> tuple[str, dict]:
        return "status", {"source": self.source, "record_offset": offset, "record_id": record_id, "status": "error",
                          "reason": reason, "n_candidates": 0, "year": year}

    def candidate(self, offset: int, record_id: str, image: str | None, text: str, when, local: str | None = None
                  ) -> tuple[str, dict]:
        """A candidate, or the status row saying why the input row is none. ``image``: an http(s)
        URL; ``local``: a path under the image root (read instead of ``image`` when a root is set)."""
        t = parse_time(when)
        if t is None:
            return self.status(offset, record_id, "missing_time")
        if self.opts.years and t.year not in self.opts.years:
            return self.status(offset, record_id, f"outside_years:{t.year}", t.year)
        if self.opts.image_root and local:
            url, uid_key = file_url(self.opts.image_root, local), local
        else:
            if not image:
                return self.status(offset, record_id, "missing_url", t.year)
            if not is_http_url(image):
                return self.status(offset, record_id, "invalid_url:scheme", t.year)
            try:
                url = normalize_url(image)
            except Exception as e:  # normalisation's typed errors, IDNA, ports
                url, why = None, getattr(e, "reason", None) or type(e).__name__
            else:
                why = "unparseable"
            if not url:
                return self.status(offset, record_id, f"invalid_url:{why}", t.year)
            uid_key = url
        self.n += 1
        self.years.add(t.year)
        return "candidate", {
            "uid": make_uid(uid_key, text), "url": url, "text": text, "page_url": None, "crawl_id": record_id,
            "crawl_time": t, "source": self.source, "record_offset": offset, "year": t.year, "month": t.month,
        }

    def done(self) -> tuple[str, dict]:
        return "status", {"source": self.source, "record_offset": None, "record_id": None, "status": "ok", "reason": None,
                          "n_candidates": self.n, "year": min(self.years) if self.years else None}


def read_table(path: str, fmt: str = "") -> Iterator[dict]:
    """Rows of a Parquet, CSV or TSV file (by extension, or ``fmt``), every value as read:
    CSV/TSV cells are strings (empty cells are ""), Parquet keeps its types."""
    import pyarrow.csv as pcsv

    from pipelines import io as pio

    kind = fmt or _kind(path)
    if kind == "parquet":
        table = pio.read_parquet([path])
        yield from table.to_pylist()
        return
    if kind not in ("csv", "tsv"):
        raise ValueError(f"{path}: not a .parquet, .csv or .tsv file")
    import pyarrow as pa

    with pio.open_read(path) as f:
        data = f.read()
    opts = pcsv.ReadOptions(block_size=1 << 24)
    parse = pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True)
    table = pcsv.read_csv(pa.BufferReader(data), read_options=opts, parse_options=parse,
                          convert_options=pcsv.ConvertOptions(strings_can_be_null=False,
                                                              column_types=_all_strings(data, parse)))
    yield from table.to_pylist()


def _all_strings(data: bytes, parse) -> dict:
    """Read every CSV column as a string (a YFCC key of digits must not lose its leading zeros)."""
    import csv
    import pyarrow as pa

    first = data.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    return {n: pa.string() for n in next(csv.reader([first], delimiter=parse.delimiter), [])}


def _kind(path: str) -> str:
    low = path.lower()
    for ext, kind in ((".parquet", "parquet"), (".tsv", "tsv"), (".csv", "csv")):
        if low.endswith(ext):
            return kind
    return ""


def cell(row: dict, col: str) -> str:
    """A text cell: None and NaN read as "" (the recipe's empty title/description/usertags)."""
    v = row.get(col)
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return str(v)
