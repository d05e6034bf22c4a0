"""Generate the synthetic web: Common Crawl style WARC snapshots plus an image catalogue.

Deterministic in the config: every random choice is seeded from (seed, year, index), WARC
records are written byte by byte with fixed gzip headers, so the same ``WebConfig`` gives the
same files. Images are not drawn here: the server renders them from the catalogue before it
serves (``server.prerender``).

Outputs under ``out_dir``:
- ``crawl/CC-MAIN-YYYY-WW/segments/<segment>/warc/CC-MAIN-<ts>-<ts>-NNNNN.warc.gz``
- ``catalogue.parquet``: one row per path the server answers, with its planted fault
- ``ground_truth.parquet``: one row per planted (image URL, alt text) candidate
- ``web.json``: config, its hash, files per year, counts, planted malformed records
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import html
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmark_builder.synthetic_web.concepts import COLOURS, FOREIGN, OBJECTS, TEMPLATES, era
from benchmark_builder.synthetic_web.images import ImageParams, image_params, rng_for

CATALOGUE_SCHEMA = pa.schema([  # catalogue.parquet: every path the server answers
    ("path", pa.string()), ("image_id", pa.int64()), ("img_year", pa.int64()), ("size_kind", pa.string()),
    ("format", pa.string()), ("quality", pa.int64()), ("scale", pa.float64()), ("mode", pa.string()),
    ("fault", pa.string()), ("target", pa.string()), ("rehost_of", pa.int64()), ("rehost_kind", pa.string()),
])
TRUTH_SCHEMA = pa.schema([  # ground_truth.parquet: every image slot of every page
    ("year", pa.int64()), ("page_url", pa.string()), ("url", pa.string()), ("text", pa.string()), ("lang", pa.string()),
    ("text_kind", pa.string()), ("url_kind", pa.string()), ("concept", pa.string()), ("image_id", pa.int64()),
    ("fault", pa.string()), ("format", pa.string()), ("rehost_of", pa.int64()), ("rehost_kind", pa.string()),
    ("repeated_url_from", pa.int64()), ("crawl_id", pa.string()), ("crawl_time", pa.timestamp("us", tz="UTC")),
    ("private", pa.bool_()),
])
SNAPSHOT_WEEKS = (4, 17, 30, 43)  # four crawl snapshots a year, as Common Crawl roughly publishes


@dataclass(frozen=True)
class WebConfig:
    seed: int = 0
    years: tuple[int, ...] = tuple(range(2014, 2023))
    pairs_per_year: int = 2000
    port: int = 18919
    host: str = "127.0.0.1"
    # a planted stall ("slow") holds the connection without a byte until the client closes it, or this long:
    # many times any download deadline, so it always ends as ``timeout`` and is never a merely slow answer
    slow_seconds: float = 600.0
    pages_per_file: int = 100
    # faults of served images (fractions of new image URLs)
    faults: dict = field(default_factory=lambda: {
        "http_404": 0.02, "http_500": 0.008, "http_503": 0.008, "slow": 0.006, "truncated": 0.012, "corrupt": 0.01,
        "not_image": 0.01, "too_large": 0.004, "noai": 0.01, "noimageai": 0.008, "noai_other_agent": 0.006,
        "redirect": 0.015, "redirect_chain": 0.006, "redirect_private": 0.004,
    })
    # image variety (not faults: they download fine; some fail DataComp's basic filter)
    variety: dict = field(default_factory=lambda: {
        "small": 0.03, "wide": 0.015, "png": 0.03, "png_rgba": 0.01, "webp": 0.02, "gif": 0.008, "gray": 0.01,
    })
    repeated_url_rate: float = 0.03  # an earlier year's URL crawled again
    rehost_rate: float = 0.05  # an earlier year's image at a new URL
    same_year_copy_rate: float = 0.01  # a byte-identical copy within the year
    private_src_rate: float = 0.005  # <img src> on a private / link-local address
    non_english_rate: float = 0.03
    one_word_rate: float = 0.03

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["years"] = list(self.years)
        return d

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ captions

def caption(params, year: int, r: np.random.Generator, kind: str) -> tuple[str, str]:
    """(alt text, language) for an image, in the wording of ``year``."""
    obj = OBJECTS[params.obj]
    word = obj.words[int(r.integers(len(obj.words)))]
    colour = COLOURS[params.colour][0]
    if kind == "one_word":
        return word, "en"
    if kind == "non_english":
        lang = sorted(FOREIGN)[int(r.integers(len(FOREIGN)))]
        t = FOREIGN[lang][int(r.integers(len(FOREIGN[lang])))]
        return t.format(object=word, colour=colour), lang
    templates = TEMPLATES[era(year)]
    t = templates[int(r.integers(len(templates)))]
    return t.format(object=word, colour=colour, scene=params.scene_name, texture=params.texture_name), "en"


def _alt_markup(text: str, r: np.random.Generator) -> str:
    """Alt text as HTML authors write it: escaped, sometimes with named entities and odd spacing."""
    out = html.escape(text, quote=True)
    if r.random() < 0.15:
        out = out.replace("é", "&eacute;").replace("è", "&egrave;").replace("à", "&agrave;")
    if r.random() < 0.1:
        out = out.replace(" ", "  \n ", 1)
    if r.random() < 0.05:
        out = " " + out + " "
    return out


# ------------------------------------------------------------------ WARC

def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _record(warc_type: str, headers: list[tuple[str, str]], block: bytes) -> bytes:
    head = [f"WARC/1.0", f"WARC-Type: {warc_type}"] + [f"{k}: {v}" for k, v in headers]
    head.append(f"Content-Length: {len(block)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + block + b"\r\n\r\n"


def _record_id(seed: int, *keys) -> str:
    return f"<urn:uuid:{uuid.UUID(hashlib.md5(repr((seed,) + keys).encode()).hexdigest())}>"


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_response(body: bytes, charset: str = "utf-8") -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: text/html; charset={charset}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Server: synthetic-web\r\n\r\n"
    )
    return head.encode("ascii") + body


# ------------------------------------------------------------------ generation

class _Year:
    """Builds one year's pages, catalogue rows and ground truth."""

    def __init__(self, cfg: WebConfig, year: int, history: dict):
        self.cfg, self.year, self.history = cfg, year, history
        self.base = f"http://{cfg.host}:{cfg.port}"
        self.catalogue: list[dict] = []
        self.truth: list[dict] = []
        self.pages: list[dict] = []

    def _serve(self, path, image_id, img_year, size_kind="normal", fmt="jpeg", quality=90, scale=1.0, mode="",
               fault="", target="", rehost_of=None, rehost_kind="") -> None:
        self.catalogue.append(dict(path=path, image_id=image_id, img_year=img_year, size_kind=size_kind, format=fmt,
                                   quality=quality, scale=scale, mode=mode, fault=fault, target=target,
                                   rehost_of=rehost_of, rehost_kind=rehost_kind))

    def _token(self, i: int, salt: str = "") -> str:
        return hashlib.sha1(f"{self.cfg.seed}/{self.year}/{i}/{salt}".encode()).hexdigest()[:12]

    def _pick(self, r, table: dict) -> str:
        u = r.random()
        acc = 0.0
        for name, rate in table.items():
            acc += rate
            if u < acc:
                return name
        return ""

    def build(self) -> None:
        cfg, y = self.cfg, self.year
        n = cfg.pairs_per_year
        earlier_ok = self.history["ok_images"]  # (image_id, img_year, size_kind) of earlier years
        earlier_urls = self.history["urls"]  # (url, year)
        this_year_ok: list[tuple] = []
        n_sites = max(4, n // 60)
        slots = []
        for i in range(n):
            r = rng_for(cfg.seed, y, i, 11)
            site = int(r.integers(n_sites))
            url_kind = ["absolute", "absolute", "absolute", "relative_up", "relative", "protocol_relative", "srcset"][int(r.integers(7))]
            text_kind = "non_english" if r.random() < cfg.non_english_rate else ("one_word" if r.random() < cfg.one_word_rate else "normal")
            token = self._token(i)
            path = self._image_path(r, url_kind, site, token)
            row = dict(year=y, site=site, url_kind=url_kind, text_kind=text_kind, fault="", rehost_of=None, rehost_kind="",
                       repeated_url_from=None, image_id=None, concept=None, format="jpeg", private=False)
            u = r.random()
            t_repeat = cfg.repeated_url_rate
            t_private = t_repeat + cfg.private_src_rate
            t_rehost = t_private + cfg.rehost_rate
            t_copy = t_rehost + cfg.same_year_copy_rate
            if u < t_repeat and earlier_urls:
                url, from_year, image_id, concept = earlier_urls[int(r.integers(len(earlier_urls)))]
                row.update(url=url, url_kind="absolute", repeated_url_from=from_year, image_id=image_id, concept=concept)
                params = image_params(cfg.seed, image_id, int(str(image_id)[:4])) if image_id else None
            elif t_repeat <= u < t_private:
                host = ("10.0.0.7", "169.254.169.254", "192.168.1.20")[int(r.integers(3))]
                row.update(url=f"http://{host}/img/{token}.jpg", url_kind="absolute", private=True, fault="private_address")
                image_id = y * 10**7 + i
                params = image_params(cfg.seed, image_id, y)
                row.update(image_id=image_id, concept=params.object_name)
            elif t_private <= u < t_rehost and earlier_ok:
                image_id, img_year, size_kind, fmt, mode = earlier_ok[int(r.integers(len(earlier_ok)))]
                kind = ("identical", "reencoded", "resized")[int(r.integers(3))]
                if kind != "identical":
                    fmt, mode = "jpeg", ""
                quality, scale = (90, 1.0) if kind == "identical" else ((60, 1.0) if kind == "reencoded" else (90, float(r.uniform(0.6, 0.9))))
                path += ".jpg"
                self._serve(path, image_id, img_year, size_kind, fmt, quality=quality, scale=scale, mode=mode, rehost_of=image_id, rehost_kind=kind)
                params = image_params(cfg.seed, image_id, img_year, size_kind)
                row.update(url=self.base + path, image_id=image_id, concept=params.object_name, rehost_of=image_id, rehost_kind=kind)
            elif t_rehost <= u < t_copy and this_year_ok:
                image_id, img_year, size_kind, fmt, mode = this_year_ok[int(r.integers(len(this_year_ok)))]
                path += ".jpg"
                self._serve(path, image_id, img_year, size_kind, fmt, mode=mode, rehost_of=image_id, rehost_kind="identical")
                params = image_params(cfg.seed, image_id, img_year, size_kind)
                row.update(url=self.base + path, image_id=image_id, concept=params.object_name, rehost_of=image_id, rehost_kind="identical")
            else:
                params = self._fresh_image(r, i, token, path, row, this_year_ok)
            text, lang = caption(params, y, r, text_kind) if params else ("a picture", "en")
            row.update(text=text, lang=lang)
            slots.append(row)
        self._paginate(slots)
        self.history["ok_images"] = earlier_ok + [t for t in this_year_ok]
        self.history["urls"] = earlier_urls + [(s["url"], y, s["image_id"], s["concept"]) for s in slots if s["repeated_url_from"] is None]

    def _image_path(self, r, url_kind: str, site: int, token: str) -> str:
        """The image's path on the server: where its page's URL form points."""
        if url_kind == "relative_up":
            return f"/site-{site}/img/{token}"
        if url_kind == "relative":
            return f"/site-{site}/{self.year}/img/{token}"
        if r.random() < 0.5:
            return f"/cdn/{token[:2]}/{token}"
        return f"/site-{site}/media/{token}"

    def _fresh_image(self, r, i: int, token: str, path: str, row: dict, this_year_ok: list) -> ImageParams:
        """A new image of this year at ``path``: its fault or variety, redirects, catalogue rows."""
        cfg, y = self.cfg, self.year
        image_id = y * 10**7 + i
        fault = self._pick(r, cfg.faults)
        variety = "" if fault else self._pick(r, cfg.variety)
        size_kind = variety if variety in ("small", "wide") else "normal"
        fmt, mode = "jpeg", ""
        if variety in ("png", "png_rgba"):
            fmt, mode = "png", ("RGBA" if variety == "png_rgba" else "")
        elif variety in ("webp", "gif"):
            fmt = variety
        elif variety == "gray":
            mode = "L"
        ext = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif"}[fmt]
        if r.random() < 0.1:
            ext += f"?w={int(r.integers(200, 800))}"
        path += ext
        params = image_params(cfg.seed, image_id, y, size_kind)
        target = ""
        if fault in ("redirect", "redirect_chain"):
            target = f"/r/{token}/final{ext}"
            if fault == "redirect_chain":
                mid = f"/r/{token}/hop"
                self._serve(mid, image_id, y, size_kind, fmt, mode=mode, fault="redirect", target=target)
                target, hop_target = mid, target
                self._serve(hop_target, image_id, y, size_kind, fmt, mode=mode)
            else:
                self._serve(target, image_id, y, size_kind, fmt, mode=mode)
        elif fault == "redirect_private":
            target = f"http://10.0.0.7/img/{token}.jpg"
        self._serve(path, image_id, y, size_kind, fmt, mode=mode, fault=fault, target=target)
        row.update(url=self.base + path, image_id=image_id, concept=params.object_name, fault=fault, format=fmt)
        if not fault or fault in ("redirect", "redirect_chain", "noai_other_agent"):
            this_year_ok.append((image_id, y, size_kind, fmt, mode))
        return params

    def _paginate(self, slots: list[dict]) -> None:
        cfg, y = self.cfg, self.year
        r = rng_for(cfg.seed, y, 99)
        order = r.permutation(len(slots))
        i, p = 0, 0
        while i < len(order):
            k = int(r.integers(3, 9))
            group = [slots[j] for j in order[i : i + k]]
            i += k
            snapshot = int(r.integers(len(SNAPSHOT_WEEKS)))
            week = SNAPSHOT_WEEKS[snapshot]
            start = dt.datetime(y, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(weeks=week - 1)
            crawl_time = start + dt.timedelta(seconds=int(r.integers(0, 14 * 86400)))
            site = group[0]["site"]
            page_url = f"{self.base}/site-{site}/{y}/page-{p:05d}.html"
            for s in group:
                if s["url_kind"] in ("relative_up", "relative") and s["site"] != site:
                    s["url_kind"] = "absolute"
            self.pages.append(dict(page_url=page_url, crawl_time=crawl_time, snapshot=snapshot, site=site, slots=group,
                                   charset="iso-8859-1" if r.random() < 0.02 else "utf-8", index=p))
            for s in group:
                s["page_url"] = page_url
                s["crawl_id"] = f"CC-MAIN-{y}-{week:02d}"
                s["crawl_time"] = crawl_time
            p += 1

    def page_html(self, page: dict) -> bytes:
        r = rng_for(self.cfg.seed, self.year, 7, page["index"])
        base = self.base
        parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"{page['charset']}\"><title>Site {page['site']} page {page['index']}</title></head>",
                 "<body><h1>Gallery</h1>"]
        for s in page["slots"]:
            alt = _alt_markup(s["text"], r)
            url = s["url"]
            kind = s["url_kind"]
            if kind == "relative_up":
                src = "../img/" + url.rsplit("/img/", 1)[1]
            elif kind == "relative":
                src = "img/" + url.rsplit("/img/", 1)[1]
            elif kind == "protocol_relative" and url.startswith("http://"):
                src = url[len("http:"):]
            else:
                src = url
            if kind == "srcset":
                tag = f'<img srcset="{html.escape(src)} 1x, {html.escape(src)}&amp;dpr=2 2x" alt="{alt}">' if "?" in src else \
                      f'<img srcset="{html.escape(src)} 480w" sizes="50vw" alt="{alt}">'
            else:
                tag = f'<img src="{html.escape(src)}" alt="{alt}" loading="lazy">'
            parts.append(f"<figure>{tag}<figcaption>photo</figcaption></figure>")
            # decoys the crawler must skip
            u = r.random()
            if u < 0.15:
                parts.append(f'<img src="{base}/pixel.gif?p={page["index"]}" width="1" height="1" alt="">')
            elif u < 0.25:
                parts.append('<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline icon of a star">')
            elif u < 0.3:
                parts.append('<img src="javascript:void(0)" alt="broken script image">')
            elif u < 0.4:
                parts.append(f'<img src="{base}/site-{page["site"]}/logo.png">')
            elif u < 0.45:
                parts.append(f'<img src="{base}/site-{page["site"]}/spacer.png" alt="   ">')
        parts.append('<p>Contact: <a href="mailto:someone@example.com">mail</a></p></body></html>')
        text = "\n".join(parts)
        return text.encode(page["charset"], errors="xmlcharrefreplace")


def _warc_files(cfg: WebConfig, y: int, pages: list[dict], gen: _Year, out_dir: str, malformed: list) -> list[str]:
    files = []
    for snapshot, week in enumerate(SNAPSHOT_WEEKS):
        snap_pages = sorted((p for p in pages if p["snapshot"] == snapshot), key=lambda p: (p["crawl_time"], p["index"]))
        crawl_id = f"CC-MAIN-{y}-{week:02d}"
        start = dt.datetime(y, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(weeks=week - 1)
        segment = f"{int(start.timestamp())}{snapshot}.{y % 100}"
        chunks = [snap_pages[i : i + cfg.pages_per_file] for i in range(0, len(snap_pages), cfg.pages_per_file)] or [[]]
        for n, chunk in enumerate(chunks):
            t0 = chunk[0]["crawl_time"] if chunk else start
            t1 = chunk[-1]["crawl_time"] if chunk else start
            name = f"{crawl_id}/segments/{segment}/warc/CC-MAIN-{t0:%Y%m%d%H%M%S}-{t1:%Y%m%d%H%M%S}-{n:05d}.warc.gz"
            rel = os.path.join("crawl", name)
            path = os.path.join(out_dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                info = (f"software: synthetic-web\r\nformat: WARC File Format 1.0\r\nisPartOf: {crawl_id}\r\n"
                        f"description: synthetic crawl snapshot {crawl_id}\r\n").encode()
                f.write(_gz(_record("warcinfo", [("WARC-Date", _iso(t0)), ("WARC-Filename", os.path.basename(name)),
                                                 ("WARC-Record-ID", _record_id(cfg.seed, name, "info")),
                                                 ("Content-Type", "application/warc-fields")], info)))
                for page in chunk:
                    date = _iso(page["crawl_time"])
                    rid = _record_id(cfg.seed, page["page_url"], date)
                    req = f"GET {page['page_url'].split(':' + str(cfg.port), 1)[-1]} HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\nUser-Agent: CCBot/2.0\r\n\r\n".encode()
                    f.write(_gz(_record("request", [("WARC-Date", date), ("WARC-Record-ID", _record_id(cfg.seed, page["page_url"], date, "req")),
                                                    ("WARC-Target-URI", page["page_url"]), ("Content-Type", "application/http; msgtype=request")], req)))
                    block = _http_response(gen.page_html(page), page["charset"])
                    f.write(_gz(_record("response", [("WARC-Date", date), ("WARC-Record-ID", rid), ("WARC-Target-URI", page["page_url"]),
                                                     ("Content-Type", "application/http; msgtype=response"),
                                                     ("WARC-Identified-Payload-Type", "text/html")], block)))
                    meta = b"fetchTimeMs: 12\r\n"
                    f.write(_gz(_record("metadata", [("WARC-Date", date), ("WARC-Record-ID", _record_id(cfg.seed, page["page_url"], date, "meta")),
                                                     ("WARC-Target-URI", page["page_url"]), ("WARC-Concurrent-To", rid),
                                                     ("Content-Type", "application/warc-fields")], meta)))
                if snapshot == len(SNAPSHOT_WEEKS) - 1 and n == len(chunks) - 1:
                    _plant_malformed(cfg, y, f, rel, malformed)
            files.append(rel)
    return files


def _plant_malformed(cfg: WebConfig, y: int, f, rel: str, malformed: list) -> None:
    """Rare broken records, as real crawls have: each must become a status row, not a crash."""
    date = f"{y}-12-20T10:00:00Z"
    uri = f"http://{cfg.host}:{cfg.port}/broken/{y}.html"
    # 1. a response whose block is not an HTTP message
    f.write(_gz(_record("response", [("WARC-Date", date), ("WARC-Record-ID", _record_id(cfg.seed, y, "nohttp")), ("WARC-Target-URI", uri),
                                     ("Content-Type", "application/http; msgtype=response")], b"\x00\x01 this is not an HTTP response \xff\xfe")))
    malformed.append({"file": rel, "kind": "not_http"})
    # 2. a record whose Content-Length is not a number
    bad = _record("response", [("WARC-Date", date), ("WARC-Record-ID", _record_id(cfg.seed, y, "badlen")), ("WARC-Target-URI", uri + "?2"),
                               ("Content-Type", "application/http; msgtype=response")], b"HTTP/1.1 200 OK\r\n\r\n<html></html>")
    bad = bad.replace(b"Content-Length: ", b"Content-Length: 12x", 1)
    f.write(_gz(bad))
    malformed.append({"file": rel, "kind": "bad_content_length"})
    if y % 4 == 0:
        # 3. the archive ends mid-record (an interrupted upload)
        page = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><body>" + b"<img src='/x.jpg' alt='cut off picture of a star'>" * 40
        member = _gz(_record("response", [("WARC-Date", date), ("WARC-Record-ID", _record_id(cfg.seed, y, "cut")), ("WARC-Target-URI", uri + "?3"),
                                          ("Content-Type", "application/http; msgtype=response")], page))
        f.write(member[: len(member) // 2])
        malformed.append({"file": rel, "kind": "truncated_archive"})


SERVER_ONLY = ("slow_seconds",)  # config fields that change what the server does, not the generated files


def _same_files(old: dict, new: dict) -> bool:
    return {k: v for k, v in old.items() if k not in SERVER_ONLY} == {k: v for k, v in new.items() if k not in SERVER_ONLY}


def generate_web(out_dir: str, cfg: WebConfig = WebConfig(), in_subprocess: bool = False) -> dict:
    """Generate (or reuse) the synthetic web under ``out_dir``; returns ``web.json``'s content.

    ``in_subprocess``: generate in a child process (a build does), whose memory (a year's pages
    as Python objects, about 1 GB at 100k pairs a year) goes back to the system when it ends
    instead of staying in the build's process for the whole job."""
    web = _existing_web(out_dir, cfg)
    if web is not None:
        return web
    if in_subprocess:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_generate_web_child, out_dir, cfg).result()
    return _generate_web(out_dir, cfg)


def _generate_web_child(out_dir: str, cfg: WebConfig) -> dict:
    from benchmark_builder.synthetic_web.server import _exit_with_parent

    _exit_with_parent()  # a killed build's generation must not go on and race its re-run's
    return _generate_web(out_dir, cfg)


def _existing_web(out_dir: str, cfg: WebConfig) -> dict | None:
    """``web.json`` of the web already under ``out_dir`` when it is ``cfg``'s, None when there is none."""
    manifest_path = os.path.join(out_dir, "web.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            web = json.load(f)
        if web.get("config_hash") == cfg.hash():
            return web
        if _same_files(web.get("config", {}), cfg.to_json()):
            # only how the server behaves changed (a stall's length): the files stay valid
            web = {**web, "config": cfg.to_json(), "config_hash": cfg.hash()}
            tmp = f"{manifest_path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(web, f, indent=2, sort_keys=True)
            os.replace(tmp, manifest_path)
            return web
        raise ValueError(f"{out_dir} holds a synthetic web with another config ({web.get('config_hash')}); "
                         "use another --data-dir or delete it")
    return None


def _generate_web(out_dir: str, cfg: WebConfig) -> dict:
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    history = {"ok_images": [], "urls": []}
    catalogue, truth, files, malformed, counts = [], [], {}, [], {}
    for y in cfg.years:  # each year's rows become Arrow tables at once: a Python dict per row for one year, not for the web
        gen = _Year(cfg, y, history)
        gen.build()
        catalogue.append(pa.Table.from_pylist(gen.catalogue, schema=CATALOGUE_SCHEMA))
        rows = [{k: s.get(k) for k in TRUTH_SCHEMA.names} for p in gen.pages for s in p["slots"]]
        # sorted as the whole truth is, by (year, url, text): a year's rows are all of year y
        assert all(r["year"] == y for r in rows), "a page slot of another year"
        truth.append(pa.Table.from_pylist(sorted(rows, key=lambda t: (t["year"], t["url"], t["text"])), schema=TRUTH_SCHEMA))
        counts[str(y)] = len(rows)
        files[str(y)] = _warc_files(cfg, y, gen.pages, gen, tmp, malformed)
        del gen, rows
    # fixed assets
    catalogue.append(pa.Table.from_pylist([dict(path="/pixel.gif", image_id=0, img_year=0, size_kind="pixel", format="gif", quality=0,
                                                scale=1.0, mode="", fault="", target="", rehost_of=None, rehost_kind="")],
                                          schema=CATALOGUE_SCHEMA))
    cat = pa.concat_tables(catalogue).combine_chunks()
    pq.write_table(cat, os.path.join(tmp, "catalogue.parquet"))
    pq.write_table(pa.concat_tables(truth).combine_chunks(), os.path.join(tmp, "ground_truth.parquet"))
    web = {
        "config": cfg.to_json(), "config_hash": cfg.hash(), "port": cfg.port, "host": cfg.host,
        "warc_files": files, "malformed": malformed,
        "counts": counts,
        "catalogue_paths": cat.num_rows,
    }
    with open(os.path.join(tmp, "web.json"), "w") as f:
        json.dump(web, f, indent=2, sort_keys=True)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return web
