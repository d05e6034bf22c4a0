"""The embedded default gives the same bytes however busy the machine is.

Two years of a small embedded build, three ways: from a cold start (a new data dir: the web
generated and rendered, the server started fresh), beside two CPU-bound processes with the
crawl already done (so the freshly started server takes the first download request at once,
under load), and killed with SIGKILL mid-download and resumed, also beside the CPU hogs (also
from copied crawl output, which keeps the suite fast; the crawl does not depend on timing). All
three must give identical status rows, shard bytes and metadata, with the build's default
download deadline. The independent oracle for each download outcome is the generator's
ground truth: exactly the URLs planted as stalls end as ``timeout``; nothing planted to
succeed times out or fails to connect.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from benchmark_builder.build import BuildConfig, build
from benchmark_builder.synthetic_web import SyntheticWebServer, WebConfig, generate_web
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.options import RunnerConfig
from tests.conftest import kill_when

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YEAR = 2015  # builds 2014 and 2015


def _free_port(first: int = 24000, last: int = 24999) -> int:
    """A free port of a fixed range (the web's URLs hold it), starting where this process's id
    points, so concurrent runs seldom meet."""
    span = last - first + 1
    for i in range(span):
        port = first + (os.getpid() + i) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{last}")


# the build's own download deadline and retries (BuildConfig's defaults), not a test-only margin
SMALL = dict(pairs_per_year=160, pool_shard_size=64, web_port=_free_port(), eval_retrieval_size=20,
             eval_classification_size=15)


def small_cfg(data_dir) -> BuildConfig:
    return BuildConfig(year=YEAR, data_dir=str(data_dir), allow_loopback=True, runner=RunnerConfig(), **SMALL)


@contextlib.contextmanager
def cpu_hogs(n: int = 2):
    """``n`` busy-loop processes, one per core of the 2-core reference machine."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def tree_digest(root: str) -> dict[str, bytes]:
    out = {}
    for sub in ("metadata", "status", "variants", "candidates", "pool"):
        for dirpath, _, files in os.walk(os.path.join(root, sub)):
            for f in files:
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


def assert_same_tree(a_root: str, b_root: str) -> None:
    a, b = tree_digest(a_root), tree_digest(b_root)
    assert sorted(a) == sorted(b), (sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5])
    assert len([k for k in a if k.startswith("variants") and k.endswith(".tar")]) >= 2
    different = [k for k in a if a[k] != b[k]]
    assert not different, different[:10]


def status_rows(layout: Layout) -> list[dict]:
    rows = []
    for y in (2014, YEAR):
        rows += pq.read_table(pio.local_path(pio.join(layout.status(y), "part-00000.parquet"))).to_pylist()
    return sorted(rows, key=lambda r: r["uid"])


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A cold start: a new data dir, the web generated, rendered and served for the first time."""
    cfg = small_cfg(tmp_path_factory.mktemp("cold") / "d")
    build(cfg)
    return cfg, Layout(cfg.data_dir)


def test_download_outcomes_are_the_planted_ones(cold):
    cfg, layout = cold
    truth = pq.read_table(pio.local_path(pio.join(layout.web, "ground_truth.parquet")), columns=["year", "url", "fault"]).to_pylist()
    fault = {(t["year"], t["url"]): t["fault"] for t in truth}
    rows = [r for r in status_rows(layout) if r["stage"] != "timestamp"]  # every candidate that was fetched
    timed_out = {(r["year"], r["url"]) for r in rows if r["reason"] == "timeout"}
    stalls = {(r["year"], r["url"]) for r in rows if fault.get((r["year"], r["url"])) == "slow"}
    assert stalls, "this config plants at least one stall (0.6% of 320 URLs)"
    assert timed_out == stalls
    ordinary = [r for r in rows if fault.get((r["year"], r["url"])) in ("", "noai_other_agent", "redirect", "redirect_chain")]
    assert len(ordinary) > 200
    assert [r for r in ordinary if r["stage"] == "download"] == []  # every one downloaded


def test_build_beside_cpu_hogs_matches_cold_build(cold, tmp_path):
    """Crawl output and web files copied over, rendered images not: the build renders them
    under load, starts a fresh server and sends its first download request at once."""
    _, ref = cold
    cfg = small_cfg(tmp_path / "d")
    layout = Layout(cfg.data_dir)
    _seed_from(ref, layout, rendered=False)
    with cpu_hogs():
        build(cfg)
    assert status_rows(layout) == status_rows(ref)
    assert_same_tree(pio.local_path(ref.root), pio.local_path(layout.root))


def _seed_from(ref: Layout, layout: Layout, rendered: bool) -> None:
    """Copy ``ref``'s web (with or without its rendered images) and crawl output: a build into
    ``layout`` then starts its server fresh and its first request is a download, at once."""
    ignore = None if rendered else shutil.ignore_patterns("rendered")
    shutil.copytree(pio.local_path(ref.web), pio.local_path(layout.web), ignore=ignore)
    for sub in ("candidates", "crawl_status"):
        shutil.copytree(os.path.join(pio.local_path(ref.root), sub), os.path.join(pio.local_path(layout.root), sub))


def test_sigkill_mid_build_beside_cpu_hogs_then_resume_gives_identical_bytes(cold, tmp_path):
    """Kill the build while it downloads, re-run it, both beside CPU hogs: the same shards,
    metadata and status as the clean cold build."""
    _, ref = cold
    data = tmp_path / "killed"
    _seed_from(ref, Layout(str(data)), rendered=True)
    cmd = [sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", str(YEAR), "--data-dir", str(data),
           "--pairs-per-year", str(SMALL["pairs_per_year"]), "--pool-shard-size", str(SMALL["pool_shard_size"]),
           "--timeout", str(BuildConfig.timeout), "--retries", str(BuildConfig.retries), "--web-port", str(SMALL["web_port"]),
           "--eval-retrieval-size", str(SMALL["eval_retrieval_size"]),
           "--eval-classification-size", str(SMALL["eval_classification_size"])]
    with cpu_hogs():
        pool = data / "tic-datacomp" / "pool" / "year=2014" / "shards"
        kill_when(cmd, lambda: pool.exists() and any(pool.glob("*.tar")), "2014's download stage (a pool shard)", 300,
                  poll=0.05, cwd=REPO)
        assert not (data / "tic-datacomp" / "years" / "2014.json").exists()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    assert_same_tree(pio.local_path(ref.root), str(data / "tic-datacomp"))


def test_stall_is_never_answered_and_an_old_web_is_reused(tmp_path):
    """A planted stall sends nothing, even past the old 4 s stall; a web generated with the old
    stall length keeps its files (only web.json's config changes)."""
    d = str(tmp_path / "web")
    old = WebConfig(years=(2014,), pairs_per_year=400, port=_free_port(), slow_seconds=4.0)
    generate_web(d, old)
    before = {f: open(os.path.join(d, f), "rb").read() for f in ("catalogue.parquet", "ground_truth.parquet")}
    new = WebConfig(years=(2014,), pairs_per_year=400, port=old.port)
    assert generate_web(d, new)["config_hash"] == new.hash() != old.hash()
    assert {f: open(os.path.join(d, f), "rb").read() for f in before} == before
    assert json.load(open(os.path.join(d, "web.json")))["config"]["slow_seconds"] == 600.0
    cat = pq.read_table(os.path.join(d, "catalogue.parquet")).to_pylist()
    stall = next(r["path"] for r in cat if r["fault"] == "slow")
    ordinary = next(r["path"] for r in cat if r["fault"] == "")
    with SyntheticWebServer(d) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=6)
        t = time.monotonic()
        conn.request("GET", stall)
        with pytest.raises(TimeoutError):
            conn.getresponse()
        assert time.monotonic() - t >= 5.9
        conn.close()
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=6)
        conn.request("GET", ordinary)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()[:2] == b"\xff\xd8"
        conn.close()
