"""The embedded inputs of the table sources, written from the synthetic web's planted pairs.

Each row is one (image URL, alt text, crawl time) of ``ground_truth.parquet``, so its URL
points at the loopback image server with the web's planted faults (404s, stalls, corrupt
bodies, HTML served as an image, ...) and its caption drifts with its year as the web does.
The web behind TiC-YFCC's and TiC-RedCaps' fixtures has one year per time step
(2014, 2015, ...); the pairs of the web's k-th year become the benchmark's k-th time step.

- **TiC-YFCC**: ``yfcc15m.csv`` in YFCC15M's columns (``key``, ``dateuploaded`` as Unix seconds,
  ``title``, ``description``, ``usertags``, ``downloadurl``). The upload year is one of the step's
  years (by hash); the caption is split over title, description and usertags and written as
  YFCC writes them: URL-quoted (``+`` for spaces), with HTML in some descriptions; every fiftieth
  of a step's other rows by crawl order (about 2% of the rows, at least one a step from eight
  such rows on) is uploaded in 2003 or 2015, outside TiC-YFCC, and must end as ``outside_years``.
- **TiC-RedCaps**: ``annotations/<subreddit>_<year>.json`` in RedCaps' format (``info`` and
  ``annotations``: ``image_id``, ``subreddit``, ``caption``, ``created_utc``, ``url``, ``author``,
  ``id``); years 2017..2020 by step, about 1% posted a year before their step's (2016 for the
  first step: outside TiC-RedCaps).
- **URL list**: ``url-list.parquet`` with ``url``, ``caption``, ``time`` (the crawl time) of the
  web's pairs up to the built year (TiC-DataComp's web).

Deterministic in the web: the same web gives the same bytes, and a file is rewritten only
when its bytes change.
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import io
import json
import os
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq

from benchmark_builder.specs import get_spec
from pipelines import io as pio

FIRST_WEB_YEAR = 2014
SUBREDDITS = ("itookapicture", "earthporn", "pics", "mildlyinteresting", "foodporn", "cityporn")
_UTC = dt.timezone.utc


def web_years(benchmark: str, fmt: str) -> tuple[int, ...]:
    """The synthetic web years behind a benchmark's fixture: one per time step for TiC-YFCC and
    TiC-RedCaps; () for TiC-DataComp's own web."""
    if fmt in ("yfcc", "redcaps"):
        return tuple(range(FIRST_WEB_YEAR, FIRST_WEB_YEAR + len(get_spec(benchmark).time_steps)))
    return ()


def _h(*parts) -> int:
    return int(hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _moved(t: dt.datetime, year: int) -> dt.datetime:
    """``t`` at the same offset into ``year`` as into its own year (clipped to the year's end)."""
    start = dt.datetime(t.year, 1, 1, tzinfo=_UTC)
    offset = (t if t.tzinfo else t.replace(tzinfo=_UTC)) - start
    end = dt.datetime(year + 1, 1, 1, tzinfo=_UTC) - dt.timedelta(seconds=1)
    return min(dt.datetime(year, 1, 1, tzinfo=_UTC) + offset, end)


def _truth(web_dir: str) -> list[dict]:
    rows = pq.read_table(os.path.join(pio.local_path(web_dir), "ground_truth.parquet"),
                         columns=["year", "url", "text", "crawl_time", "fault", "lang", "text_kind",
                                  "repeated_url_from"]).to_pylist()
    return sorted(rows, key=lambda r: (r["year"], r["crawl_time"], r["url"], r["text"]))


def _put(path: str, data: bytes) -> str:
    if not pio.exists(path) or pio.read_bytes(path) != data:
        pio.write_bytes(path, data)
    return path


def _clean(r: dict) -> bool:
    """A planted row meant to be kept: no fault, English, an ordinary caption, a first-seen URL."""
    return not r.get("fault") and r.get("lang") == "en" and r.get("text_kind") == "normal" and r.get("repeated_url_from") is None


def yfcc_rows(truth: list[dict], benchmark: str = "tic-yfcc") -> list[dict]:
    """YFCC15M's CSV rows of the web's candidates. Every tenth clean row of a time step (by crawl
    order, the same for every port) has an HTML description, and the sixth of each ten an escaped
    one, so the caption recipe is exercised whatever the URLs hash to; rows kept for that are
    never moved outside the years. Of a step's other rows, by crawl order too, the eighth of
    every fifty is uploaded outside TiC-YFCC's years, in 2003 or 2015 by turns (the first step's
    first in 2003, the second step's in 2015, ...), so a fixture with eight or more such rows in
    each step plants both years whatever the port (a URL hash deciding it planted neither in 8% of
    the ports at 40 pairs a step)."""
    steps = get_spec(benchmark).time_steps
    out, rank, other = [], collections.Counter(), collections.Counter()
    for r in truth:
        k = r["year"] - FIRST_WEB_YEAR
        if not 0 <= k < len(steps):
            continue
        h = _h("yfcc", r["url"], r["text"])
        years = steps[k].years
        kind = -1
        if _clean(r):
            kind, rank[k] = rank[k] % 10, rank[k] + 1
        year = years[h % len(years)]
        if kind not in (0, 5):
            if other[k] % 50 == 7:
                year = (2003, 2015)[(k + other[k] // 50) % 2]
            other[k] += 1
        words = r["text"].split()
        cut = max(1, len(words) - (h >> 8) % 3) if len(words) > 2 else len(words)
        title, rest = " ".join(words[:cut]), words[cut:]
        description = {0: '<a href="http://www.flickr.com/photos/someone/">my <b>photostream</b></a>',
                       5: "taken with my new camera &amp; lens"}.get(kind, "")
        out.append({
            "key": hashlib.md5(f"{r['url']}\x00{r['text']}".encode()).hexdigest(),
            "dateuploaded": str(int(_moved(r["crawl_time"], year).timestamp())),
            "title": quote_plus(title),
            "description": quote_plus(description),
            "usertags": ",".join(quote_plus(w) for w in rest),
            "downloadurl": r["url"],
        })
    return out


def redcaps_files(truth: list[dict], benchmark: str = "tic-redcaps") -> dict[str, dict]:
    steps = get_spec(benchmark).time_steps
    files: dict[str, list] = {}
    for r in truth:
        k = r["year"] - FIRST_WEB_YEAR
        if not 0 <= k < len(steps):
            continue
        h = _h("redcaps", r["url"], r["text"])
        year = steps[k].years[0] - 1 if h % 100 == 0 else steps[k].years[h % len(steps[k].years)]
        sub = SUBREDDITS[(h >> 8) % len(SUBREDDITS)]
        image_id = _base36(h >> 16)[:6].rjust(6, "0")
        files.setdefault(f"{sub}_{year}", []).append({
            "image_id": image_id, "author": f"user{(h >> 40) % 997}", "url": r["url"], "raw_caption": r["text"],
            "caption": r["text"].lower(), "subreddit": sub, "score": int((h >> 20) % 500),
            "created_utc": float(int(_moved(r["crawl_time"], year).timestamp())), "permalink": f"/r/{sub}/comments/{image_id}/",
        })
    return {name: {"info": {"url": "https://redcaps.xyz", "version": "1.0", "subreddit": name.rsplit("_", 1)[0],
                            "year": int(name.rsplit("_", 1)[1])}, "annotations": anns}
            for name, anns in sorted(files.items())}


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, d = divmod(n, 36)
        out = digits[d] + out
    return out or "0"


def write_fixture(web_dir: str, fmt: str, benchmark: str, up_to_year: int | None = None) -> list[str]:
    """Write ``fmt``'s fixture under ``<web_dir>/fixtures/``; returns the files to read."""
    truth = _truth(web_dir)
    root = pio.join(web_dir, "fixtures")
    if fmt == "yfcc":
        rows = yfcc_rows(truth, benchmark)
        buf = io.BytesIO()
        import csv

        text = io.TextIOWrapper(buf, encoding="utf-8", newline="")
        w = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["key"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        text.flush()
        return [_put(pio.join(root, "yfcc15m.csv"), buf.getvalue())]
    if fmt == "redcaps":
        return [_put(pio.join(root, "annotations", f"{name}.json"), json.dumps(doc, indent=1, sort_keys=True).encode())
                for name, doc in redcaps_files(truth, benchmark).items()]
    if fmt == "url-list":
        rows = [{"url": r["url"], "caption": r["text"], "time": r["crawl_time"]} for r in truth
                if up_to_year is None or r["year"] <= up_to_year]
        table = pa.Table.from_pylist(rows, schema=pa.schema([("url", pa.string()), ("caption", pa.string()),
                                                            ("time", pa.timestamp("us", tz="UTC"))]))
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        return [_put(pio.join(root, "url-list.parquet"), buf.getvalue().to_pybytes())]
    raise ValueError(f"no embedded fixture for input format {fmt!r}")
