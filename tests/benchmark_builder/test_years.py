"""Years from the user, empty years, retrying transient failures, config changes.

Input: WARC files written here (real WARC bytes, warcio) whose pages link images on a small
HTTP server on a free loopback port. Every image is distinct (random blocks), 320x240, with an
English caption, so the expected outcome of each candidate is known without running the code:
served -> kept (by dedup and the basic filter), 503 -> ``http_503``, loopback without
``--allow-loopback`` -> ``blocked_address:loopback``.
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import numpy as np
import pytest
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from benchmark_builder.build import BuildConfig, build, retry_failed
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.reasons import TRANSIENT, is_transient
from pipelines.sinks import webdataset as wds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_YEAR = 24
OBJECTS = ["bicycle", "teapot", "lighthouse", "guitar", "sailboat", "umbrella", "tractor", "violin"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_bytes(n: int) -> bytes:
    """A distinct 320x240 JPEG per n: 8x6 random colour blocks (far apart in pHash)."""
    r = np.random.default_rng(1000 + n)
    blocks = r.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(blocks).resize((320, 240), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def caption(n: int) -> str:
    return f"a photo of a {COLOURS[n % len(COLOURS)]} {OBJECTS[n % len(OBJECTS)]} standing next to the old house number {n}"


class ImageServer:
    """Serves /img/<n>.jpg; paths in ``fail_503`` answer 503; every requested path is logged."""

    def __init__(self):
        self.fail_503: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                if self.path in server.fail_503:
                    body, code, ctype = b"busy", 503, "text/plain"
                elif self.path.startswith("/img/") and self.path.endswith(".jpg"):
                    body, code, ctype = image_bytes(int(self.path[5:-4])), 200, "image/jpeg"
                else:
                    body, code, ctype = b"no", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", _free_port()), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/img/{n}.jpg"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    yield s
    s.close()


def write_warc(path, server: ImageServer, year: int, images: range, alt=caption) -> str:
    """One WARC of ``year``: pages of 4 images each, WARC-Date in ``year``."""
    ids = list(images)
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for p in range(0, len(ids), 4):
            imgs = "".join(f'<img src="{server.url(n)}" alt="{alt(n)}">' for n in ids[p:p + 4])
            html = f"<html><body><h1>page {p}</h1>{imgs}</body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            rec = w.create_warc_record(f"http://pages.example.org/{year}/p{p}.html", "response", payload=io.BytesIO(html),
                                       http_headers=headers,
                                       warc_headers_dict={"WARC-Date": f"{year}-0{1 + p % 9}-15T10:00:00Z"})
            w.write_record(rec)
    return str(path)


SMALL = dict(pool_shard_size=16, timeout=3.0, retries=0, eval_retrieval_size=3, eval_classification_size=2, thread_count=8)


def cfg_for(data_dir, inputs, year=2024, years="2023-2024", **kw) -> BuildConfig:
    return BuildConfig(year=year, data_dir=str(data_dir), inputs=[str(i) for i in inputs], years=years,
                       **{**SMALL, "allow_loopback": True, **kw})


def cli(*args, data_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "NO_GCE_CHECK": "true"}
    return subprocess.run([sys.executable, "-m", "benchmark_builder", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def sql(data_dir, q):
    con = duckdb.connect(os.path.join(str(data_dir), "tic-datacomp", "index.duckdb"), read_only=True)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def year_manifest(data_dir, year) -> dict:
    return json.load(open(os.path.join(str(data_dir), "tic-datacomp", "years", f"{year}.json")))


# ---------------------------------------------------------------- vocabulary


def test_transient_reasons():
    assert set(TRANSIENT) == {"timeout", "shard_deadline", "http_429", "http_5xx", "connection_error", "connection_reset"}
    for r in ("timeout", "shard_deadline", "http_429", "http_500", "http_503", "http_599", "connection_error",
              "connection_reset", "timeout:read"):
        assert is_transient(r), r
    for r in (None, "http_404", "http_499", "http_600", "http_5xx_not", "blocked_address:loopback", "decode_error",
              "opt_out:noai", "duplicate_of:abc", "dns_error"):
        assert not is_transient(r), r


def test_year_range_grammar_and_conflicts(tmp_path):
    from benchmark_builder.specs import get_spec, parse_time_steps, parse_years, resolve_spec

    assert parse_years("2023-2024") == (2023, 2024) and parse_years("2030") == (2030,)
    for bad in ("2024-2023", "20x3", "2023-", "99-100"):
        with pytest.raises(ValueError):
            parse_years(bad)
    default = resolve_spec("tic-datacomp")
    assert default == get_spec("tic-datacomp")  # default unchanged
    assert [s.name for s in resolve_spec("tic-datacomp", "2013-2018").time_steps] == ["2013", "2014-2016", "2017", "2018"]
    assert [s.years for s in resolve_spec("tic-datacomp", "2023-2024", "2023-2024").time_steps] == [(2023, 2024)]
    with pytest.raises(ValueError, match="outside"):
        resolve_spec("tic-datacomp", "2023-2024", "2022,2023")
    assert parse_time_steps("2014-2016,2017")[0].years == (2014, 2015, 2016)  # the trainer's grammar, one parser
    from training.data import parse_time_steps as trainer_parser

    assert trainer_parser is parse_time_steps


# ---------------------------------------------------------------- empty years, through the CLI


def test_new_years_with_an_empty_year_build_and_account(tmp_path, server, capsys):
    warc = write_warc(tmp_path / "CC-MAIN-2024-10-one.warc.gz", server, 2024, range(PER_YEAR))
    d = tmp_path / "d"
    res = cli("build", "tic-datacomp", "--year", "2024", "--years", "2023-2024", "--input", warc, "--allow-loopback",
              "--eval-retrieval-size", "3", "--eval-classification-size", "2", "--pool-shard-size", "16", data_dir=d)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "year 2023: empty (no candidates)" in res.stdout
    m2023, m2024 = year_manifest(d, 2023), year_manifest(d, 2024)
    assert m2023["empty"] and m2023["counts"]["candidates"] == 0 and m2023["counts"]["shards"] == 0
    assert json.load(open(d / "tic-datacomp/variants/basic/train/2023/sizes.json")) == {}
    # 2024: every candidate has exactly one status row; every image is served, distinct, English, 320x240: all kept
    assert sql(d, "select count(*), count(distinct uid) from status where year = 2024")[0] == (PER_YEAR, PER_YEAR)
    assert sql(d, "select count(*) from candidates where year = 2024")[0][0] == PER_YEAR
    assert m2024["counts"]["kept"] == PER_YEAR and not m2024["empty"]
    held_out = sum(m2024["counts"]["splits"].get(k, 0) for k in ("eval_retrieval", "eval_classification"))
    assert sql(d, "select count(*) from samples where year = 2024")[0][0] == PER_YEAR - held_out == m2024["counts"]["samples"]
    assert sql(d, "select count(*) from status where year = 2023")[0][0] == 0
    manifest = json.load(open(d / "tic-datacomp/manifest.json"))
    assert manifest["year_range"] == "2023-2024" and manifest["time_steps"] == "2023,2024"
    assert sorted(manifest["years"]) == ["2023", "2024"]

    # the data dir now refuses another range, naming both, in one line (the same CLI, in-process: it fails
    # before any work)
    from benchmark_builder.__main__ import main

    capsys.readouterr()
    assert main(["build", "tic-datacomp", "--year", "2022", "--years", "2014-2022", "--input", warc, "--data-dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "2023-2024" in err and "2014-2022" in err
    # ... and a year outside it without --years
    assert main(["build", "tic-datacomp", "--year", "2025", "--input", warc, "--data-dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert "2023-2024" in err and "--years" in err
    # readers take the recorded range; a conflicting one is refused (training too)
    assert main(["reshard", "--name", "sub", "--where", "true", "--years", "2014", "--data-dir", str(d)]) == 2
    assert "2023-2024" in capsys.readouterr().err
    from training.__main__ import parse as train_args

    with pytest.raises(SystemExit):
        train_args(["--data-dir", str(d), "--years", "2014-2022"])
    assert "2023-2024" in capsys.readouterr().err
    assert train_args(["--data-dir", str(d), "--years", "2023-2024"])[0].years == "2023-2024"


def test_year_where_every_download_is_blocked(tmp_path, server):
    warc = write_warc(tmp_path / "CC-MAIN-2024-10-blocked.warc.gz", server, 2024, range(100, 100 + PER_YEAR))
    d = tmp_path / "d"
    res = cli("build", "tic-datacomp", "--year", "2024", "--years", "2023-2024", "--input", warc,
              "--eval-retrieval-size", "3", "--eval-classification-size", "2", data_dir=d)  # no --allow-loopback
    assert res.returncode == 0, res.stderr[-3000:]
    assert "year 2024: empty (no image downloaded); 24 candidates accounted for" in res.stdout
    assert sql(d, "select reason, count(*) from status where year = 2024 group by 1") == [("blocked_address:loopback", PER_YEAR)]
    assert year_manifest(d, 2024)["counts"]["dropped_by_reason"] == {"blocked_address:loopback": PER_YEAR}
    # views over zero metadata files keep their columns
    assert sql(d, "select count(uid), count(shard) from samples")[0] == (0, 0)
    assert sql(d, "select count(*) from metadata where year = 2024 and width > 0")[0][0] == 0
    assert not {f"/img/{n}.jpg" for n in range(100, 100 + PER_YEAR)} & set(server.requests)  # nothing was fetched
    from benchmark_builder.__main__ import main

    assert main(["report", "--data-dir", str(d)]) == 0  # the per-stage report over an all-blocked year


# ---------------------------------------------------------------- appending a year


def _snapshot(root, year):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if f"year={year}" in p or f"/{year}/" in p or p.endswith(f"/{year}.json"):
                out[p] = (os.path.getmtime(p), open(p, "rb").read())
    return out


def test_appending_a_year_reuses_every_earlier_output(tmp_path, server, capsys):
    # 2023: every image downloads, none survives the basic filter (two-word captions): an empty year
    w23 = write_warc(tmp_path / "CC-MAIN-2023-06-a.warc.gz", server, 2023, range(200, 216), alt=lambda n: f"picture {n}")
    w24 = write_warc(tmp_path / "CC-MAIN-2024-10-b.warc.gz", server, 2024, range(300, 316))
    d = tmp_path / "d"
    out = build(cfg_for(d, [w23], year=2023, years="2023"))
    assert out["years"]["2023"]["empty"] and out["years"]["2023"]["counts"]["dropped_by_reason"] == {"caption_too_few_words": 16}
    root = str(d / "tic-datacomp")
    before = _snapshot(root, 2023)
    assert len(before) > 8
    server.requests.clear()
    build(cfg_for(d, [w23, w24], year=2024, years="2023-2024"))
    assert _snapshot(root, 2023) == before  # not one file of 2023 rewritten
    assert sorted(server.requests) == sorted(f"/img/{n}.jpg" for n in range(300, 316))  # only 2024 fetched
    assert year_manifest(d, 2024)["counts"]["kept"] == 16
    assert json.load(open(os.path.join(root, "manifest.json")))["year_range"] == "2023-2024"
    assert sql(d, "select year, count(*) from status group by 1 order by 1") == [(2023, 16), (2024, 16)]
    # training and evaluation skip the empty year with one line each
    from eval.datasets import benchmark_sets
    from training.data import time_step_sources

    sources = time_step_sources(str(d), "basic")
    assert [s.name for s in sources] == ["2024"]
    sets = benchmark_sets(str(d))
    assert 2023 not in sets["retrieval"] and 2024 in sets["retrieval"]
    printed = capsys.readouterr().out
    assert "time step 2023: 0 training samples in variant 'basic', skipped" in printed
    assert "evaluation set retrieval/2023: 0 samples, skipped" in printed


# ---------------------------------------------------------------- retry-failed


def test_retry_failed_refetches_only_transient_failures(tmp_path, server, capsys):
    ids = range(400, 400 + PER_YEAR)
    warc = write_warc(tmp_path / "CC-MAIN-2024-10-r.warc.gz", server, 2024, ids)
    failing = {f"/img/{n}.jpg" for n in ids if n % 4 == 1}  # 6 URLs answer 503 the first time
    server.fail_503 = set(failing)
    d = tmp_path / "d"
    cfg = cfg_for(d, [warc])
    build(cfg)
    assert year_manifest(d, 2024)["counts"]["dropped_by_reason"] == {"http_503": len(failing)}
    server.fail_503 = set()
    server.requests.clear()
    capsys.readouterr()
    out = retry_failed(cfg)
    printed = capsys.readouterr().out
    assert sorted(server.requests) == sorted(failing)  # only the transient failures were fetched again
    assert out["before"] == {"http_503": len(failing)} and out["after"] == {}
    assert any(line.split() == ["http_503", str(len(failing)), "0"] for line in printed.splitlines()), printed
    assert year_manifest(d, 2024)["counts"]["kept"] == PER_YEAR
    # downstream re-derived: the recovered images are in the index and the shards, once
    assert sql(d, "select count(*), count(distinct uid) from status where year = 2024")[0] == (PER_YEAR, PER_YEAR)
    assert sql(d, "select count(*) from status where status = 'kept'")[0][0] == PER_YEAR
    assert sql(d, "select count(*) - count(distinct uid) from metadata")[0][0] == 0
    n_samples = sql(d, "select count(*) from samples")[0][0]
    assert n_samples == sum(s["count"] for s in [json.load(open(d / "tic-datacomp/variants/basic/train/2024/meta.json"))])
    pool = [s["key"] for t in sorted(pio.glob(str(d / "tic-datacomp/pool/year=2024/shards/*.tar"))) for s in wds.iter_samples(t)]
    assert len(pool) == len(set(pool)) == PER_YEAR
    # a second retry, through the CLI (make retry-failed), finds nothing transient and fetches nothing
    server.requests.clear()
    res = cli("build", "tic-datacomp", "--year", "2024", "--years", "2023-2024", "--input", warc, "--allow-loopback",
              "--retry-failed", "--pool-shard-size", "16", "--eval-retrieval-size", "3", "--eval-classification-size", "2",
              "--timeout", "9", data_dir=d)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "retry-failed: 0 transient failure(s) fetched again" in res.stdout and "nothing to do" in res.stdout
    assert server.requests == []


# ---------------------------------------------------------------- config changes


def _jpeg_sizes(paths):
    out = []
    for t in paths:
        for s in wds.iter_samples(t):
            out.append(Image.open(io.BytesIO(s["jpg"])).size)
    return out


def test_rebuild_with_another_image_size_replaces_every_output(tmp_path, server):
    ids = range(500, 500 + PER_YEAR)
    warc = write_warc(tmp_path / "CC-MAIN-2024-10-c.warc.gz", server, 2024, ids)
    d = tmp_path / "d"
    root = d / "tic-datacomp"
    build(cfg_for(d, [warc], pool_shard_size=16, write_variants=("basic", "none")))
    assert set(_jpeg_sizes(pio.glob(str(root / "pool/year=2024/shards/*.tar")))) == {(256, 192)}
    assert len(pio.glob(str(root / "metadata/year=2024/*.parquet"))) == 2
    assert sql(d, "select distinct variant from shards order by 1") == [("basic",), ("none",)]

    build(cfg_for(d, [warc], pool_shard_size=8, image_size=128))  # another size, shard size and variants
    pool_tars = pio.glob(str(root / "pool/year=2024/shards/*.tar"))
    assert len(pool_tars) == 3 and set(_jpeg_sizes(pool_tars)) == {(128, 96)}
    train = pio.glob(str(root / "variants/basic/train/2024/*.tar"))
    assert train and set(_jpeg_sizes(train)) == {(128, 96)}
    eval_tars = pio.glob(str(root / "variants/basic/eval/*/2024/test/*.tar"))
    assert set(_jpeg_sizes(eval_tars)) == {(128, 96)}
    assert not os.path.exists(root / "variants/none/train/2024")  # a variant no longer written is gone
    assert len(pio.glob(str(root / "metadata/year=2024/*.parquet"))) == 3
    for view in ("status", "metadata", "samples", "candidates"):
        assert sql(d, f"select count(*) - count(distinct uid) from {view}")[0][0] == 0, view
    assert sql(d, "select count(*) from metadata")[0][0] == PER_YEAR
    assert sql(d, "select max(greatest(width, height)) from metadata")[0][0] == 128
    assert sql(d, "select distinct variant from shards") == [("basic",)]
    assert sql(d, "select sum(count) from shards where split = 'train'")[0][0] == sql(d, "select count(*) from samples")[0][0]
