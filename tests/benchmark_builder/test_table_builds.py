"""Whole builds from the table sources: TiC-YFCC and TiC-RedCaps on the embedded fixtures (a
YFCC15M CSV and RedCaps annotation files whose URLs point at the loopback image server), and
TiC-RedCaps from a local image folder (``--image-root``).

Oracles: the counts per year come from the fixture files themselves, read here with the
standard library (the upload time of each row, its year in UTC), and the local-folder build's
outcome of each annotation is known from how its image was written.
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import glob
import io
import json
import math
import os
import socket
from urllib.parse import quote_plus, unquote_plus

import duckdb
import numpy as np
from PIL import Image

from benchmark_builder.build import BuildConfig, build
from benchmark_builder.layout import Layout
from pipelines.sinks import clip_benchmark
from pipelines.sinks import webdataset as wds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sql(data_dir, benchmark, q):
    con = duckdb.connect(os.path.join(str(data_dir), benchmark, "index.duckdb"), read_only=True)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def _utc_year(seconds) -> int:
    return dt.datetime.fromtimestamp(float(seconds), dt.timezone.utc).year


def _check_accounting(data_dir, benchmark, want_by_year: dict[int, int], outside: collections.Counter):
    status = dict(sql(data_dir, benchmark, "select year, count(*) from status group by 1"))
    cands = dict(sql(data_dir, benchmark, "select year, count(distinct uid) from candidates group by 1"))
    assert status == cands == want_by_year  # status rows = candidates = the fixture's rows of each year
    got_outside = collections.Counter(dict(sql(
        data_dir, benchmark, "select reason, count(*) from crawl_status where status = 'error' group by 1")))
    assert got_outside == outside


def _check_held_out(data_dir, benchmark, years):
    """1% of each year's eligible pairs (ceil) are the retrieval set; none of them is trained on."""
    layout = Layout(str(data_dir), benchmark)
    for y in years:
        eligible = sql(data_dir, benchmark, f"select count(*) from metadata where year = {y} and dedup_reason is null "
                                            "and list_contains(filters, 'basic')")[0][0]
        ev = clip_benchmark.read_eval_set(layout.eval_set("basic", "retrieval", y))
        assert ev["count"] == math.ceil(0.01 * eligible) and ev["count"] >= 1
        held = {s["key"] for shard in ev["shards"] for s in wds.iter_samples(shard)}
        train = {s["key"] for t in glob.glob(os.path.join(layout.train_shards("basic", y), "*.tar")) for s in wds.iter_samples(t)}
        assert train and not held & train
        assert not os.path.exists(layout.eval_set("basic", "classification", y)) or \
            clip_benchmark.read_eval_set(layout.eval_set("basic", "classification", y))["count"] == 0


def test_tic_yfcc_on_the_embedded_csv(tmp_path):
    cfg = BuildConfig(year=2014, data_dir=str(tmp_path), benchmark="tic-yfcc", pairs_per_year=40, web_port=_free_port(),
                      allow_loopback=True, years="2013-2014", thread_count=8)
    build(cfg)
    with open(tmp_path / "synthetic-web-tic-yfcc" / "fixtures" / "yfcc15m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["key", "dateuploaded", "title", "description", "usertags", "downloadurl"]
    by_year = collections.defaultdict(set)
    for r in rows:
        by_year[_utc_year(r["dateuploaded"])].add(r["key"])  # key = md5(url, caption): one per candidate
    assert {2003, 2015} <= set(by_year)  # the fixture plants rows outside TiC-YFCC's years, by crawl order
    want = {y: len(k) for y, k in by_year.items() if y in (2013, 2014)}
    # every CSV row outside the years is one crawl_status row, a repeated (url, caption) row too (the
    # web repeats some pairs in later steps, and both rows of a pair may be uploaded outside the years)
    outside = collections.Counter(f"outside_years:{y}" for y in map(_utc_year, (r["dateuploaded"] for r in rows))
                                  if y not in (2013, 2014))
    _check_accounting(tmp_path, "tic-yfcc", want, outside)
    _check_held_out(tmp_path, "tic-yfcc", (2013, 2014))
    manifest = json.loads((tmp_path / "tic-yfcc" / "manifest.json").read_text())
    assert manifest["year_range"] == "2013-2014" and manifest["time_steps"] == "2013-2014"
    # captions went through the recipe: URL-unquoted (no '+' for spaces), entities unescaped, HTML
    # tags removed; the planted descriptions' captions are written out by hand
    plain = {"": "", quote_plus("taken with my new camera &amp; lens"): "taken with my new camera & lens",
             quote_plus('<a href="http://www.flickr.com/photos/someone/">my <b>photostream</b></a>'): "my photostream"}
    want_text = collections.defaultdict(set)
    for r in rows:
        want_text[r["downloadurl"]].add(f"{unquote_plus(r['title'])}. {plain[r['description']]}. {unquote_plus(r['usertags'])}")
    kept = sql(tmp_path, "tic-yfcc", "select url, text from metadata")
    assert kept and all(t in want_text[u] for u, t in kept)
    marked = [t for _, t in kept if "my photostream" in t]
    assert 1 <= len(marked) and not any("<" in t for t in marked)  # the fixture plants it on clean rows of every step


def test_tic_redcaps_on_the_embedded_annotations(tmp_path):
    cfg = BuildConfig(year=2020, data_dir=str(tmp_path), benchmark="tic-redcaps", pairs_per_year=40, web_port=_free_port(),
                      allow_loopback=True, years="2019-2020", thread_count=8)
    build(cfg)
    files = sorted(glob.glob(str(tmp_path / "synthetic-web-tic-redcaps" / "fixtures" / "annotations" / "*_*.json")))
    by_year, n = collections.defaultdict(set), 0
    for f in files:
        doc = json.load(open(f))
        name_year = int(os.path.basename(f)[:-5].rsplit("_", 1)[1])
        for a in doc["annotations"]:
            assert _utc_year(a["created_utc"]) == name_year  # RedCaps names each file by its posts' year
            by_year[name_year].add((a["url"], " ".join(a["caption"].split())))
            n += 1
    want = {y: len(k) for y, k in by_year.items() if y in (2019, 2020)}
    outside = collections.Counter({f"outside_years:{y}": sum(1 for f in files if f.endswith(f"_{y}.json")
                                                             for _ in json.load(open(f))["annotations"])
                                   for y in by_year if y not in (2019, 2020)})
    _check_accounting(tmp_path, "tic-redcaps", want, outside)
    _check_held_out(tmp_path, "tic-redcaps", (2019, 2020))
    got = sql(tmp_path, "tic-redcaps", "select count(*) from crawl_status where status = 'ok'")[0][0]
    assert got == len(files) and n == sum(len(v) for v in by_year.values())


def _jpeg(n: int, size=(320, 240)) -> bytes:
    blocks = np.random.default_rng(500 + n).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blocks).resize(size, Image.NEAREST).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_tic_redcaps_from_a_local_image_folder(tmp_path):
    """Six posts of 2018 whose images lie in ``<subreddit>/<image_id>.jpg``: four distinct 320x240
    JPEGs, one missing file, one text file; the images are read, never fetched (no server runs)."""
    root, ann = tmp_path / "images", tmp_path / "annotations"
    (root / "pics").mkdir(parents=True)
    ann.mkdir()
    t = dt.datetime(2018, 4, 1, tzinfo=dt.timezone.utc).timestamp()
    posts = []
    for i in range(6):
        image_id = f"p{i:05d}"
        posts.append({"image_id": image_id, "subreddit": "pics", "caption": f"a photo of my garden in spring number {i}",
                      "created_utc": t + 3600 * i, "url": f"http://203.0.113.9/{image_id}.jpg"})
        if i < 4:
            (root / "pics" / f"{image_id}.jpg").write_bytes(_jpeg(i))
        elif i == 5:
            (root / "pics" / f"{image_id}.jpg").write_text("not an image at all")
    (ann / "pics_2018.json").write_text(json.dumps({"info": {}, "annotations": posts}))
    data = tmp_path / "data"
    cfg = BuildConfig(year=2018, data_dir=str(data), benchmark="tic-redcaps", inputs=[str(ann / "*.json")],
                      image_root=str(root), years="2018-2018", thread_count=4)
    build(cfg)
    reasons = dict(sql(data, "tic-redcaps", "select url, coalesce(reason, status) from status"))
    base = f"file://{root}/pics"
    assert {u: r for u, r in reasons.items() if r != "kept"} == {
        f"{base}/p00004.jpg": "file_not_found", f"{base}/p00005.jpg": "decode_error"}
    assert sorted(u for u, r in reasons.items() if r == "kept") == [f"{base}/p0000{i}.jpg" for i in range(4)]
    shards = glob.glob(str(data / "tic-redcaps" / "variants" / "basic" / "train" / "2018" / "*.tar"))
    ev = clip_benchmark.read_eval_set(Layout(str(data), "tic-redcaps").eval_set("basic", "retrieval", 2018))
    assert ev["count"] == 1  # ceil(1% of 4)
    assert sum(1 for s in shards for _ in wds.iter_samples(s)) == 3
