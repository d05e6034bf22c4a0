"""How long the embedded web's server takes to answer under the download stage's load.

``python -m bench.web_latency [--hogs 2] [--draw] [--workers 2] [--timeout 2] [--year 2014]``

Starts the synthetic web server fresh (cold: a new process, nothing cached but the rendered
store) and, the moment ``start()`` returns, fetches every image URL of one year of the default
web (4,000 pairs) the way the download stage does: 8 pool shards at once, 32 threads each (256
requests in flight), each image then decoded and resized in the same process. ``--hogs N``
runs N busy-loop processes beside it; ``--draw`` skips pre-rendering (images drawn on request,
the server before this change). Prints the fetch latency (request sent -> body read, client
side, so it includes the client's own GIL waits) of the URLs meant to succeed and every
``timeout`` by planted fault, as JSON. A probe process beside the load (one thread, one
request at a time, so its own GIL is never contended) measures what a socket deadline sees:
request sent -> response read.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq

from benchmark_builder.synthetic_web import SyntheticWebServer, WebConfig, generate_web
from pipelines.fetch import FetchConfig, Fetcher
from pipelines.resize import resize_image
from pipelines.transforms.download import DownloadConfig

OK_FAULTS = ("", "noai_other_agent", "redirect", "redirect_chain")


def measure(web_dir: str, year: int, timeout: float, hogs: int, workers: int, draw: bool) -> dict:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        truth = pq.read_table(os.path.join(web_dir, "ground_truth.parquet")).to_pylist()
        rows = [t for t in truth if t["year"] == year and t["url"].startswith("http://127.0.0.1")]
        cfg = DownloadConfig(fetch=FetchConfig(timeout=timeout, retries=0, allow_loopback=True))
        t0 = time.time()
        server = SyntheticWebServer(web_dir, subprocess=True, workers=workers, years=[] if draw else [year]).start()
        started = time.time() - t0
        fetcher = Fetcher(cfg.fetch)
        results = []

        def one(row):
            t = time.monotonic()
            res = fetcher.fetch(row["url"])
            results.append((time.monotonic() - t, res.reason, row["fault"]))
            if res.ok:
                resize_image(res.body, cfg.resize)

        def shard(part):
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(one, part))

        ordinary = [r["url"] for r in rows if r["fault"] == ""]
        probe = subprocess.Popen([sys.executable, "-m", "bench.web_latency", "--probe", *ordinary[::7]],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        t1 = time.time()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(shard, [rows[i: i + 500] for i in range(0, len(rows), 500)]))
        wall = time.time() - t1
        probed = sorted(json.loads(probe.communicate(b"stop\n")[0]))
        server.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    ok = sorted(s for s, reason, fault in results if fault in OK_FAULTS)
    q = lambda p: round(ok[min(len(ok) - 1, int(p * len(ok)))], 3)
    return {"year": year, "urls": len(rows), "hogs": hogs, "workers": workers, "drawn_on_request": draw, "timeout": timeout,
            "server_start_s": round(started, 2), "wall_s": round(wall, 1), "load_average": os.getloadavg()[0],
            "ok_fetch_s": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0)},
            "probe_s": {"n": len(probed), "p50": round(probed[len(probed) // 2], 3), "p99": round(probed[int(0.99 * len(probed))], 3),
                        "max": round(probed[-1], 3)},
            "ok_failed": dict(collections.Counter(reason for _, reason, fault in results if fault in OK_FAULTS and reason)),
            "timeouts_by_fault": dict(collections.Counter(fault or "none" for _, reason, fault in results if reason == "timeout"))}


def probe(urls: list[str]) -> None:
    """Fetch ``urls`` one at a time, round and round, until a line arrives on stdin; print the latencies."""
    import http.client
    import select
    from urllib.parse import urlsplit

    out, i = [], 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        u = urlsplit(urls[i % len(urls)])
        i += 1
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        t = time.monotonic()
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
        conn.getresponse().read()
        out.append(time.monotonic() - t)
        conn.close()
    print(json.dumps(out))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        return probe(argv[1:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--web-dir", default=os.path.join(tempfile.gettempdir(), "web-latency-web"))
    ap.add_argument("--year", type=int, default=2014)
    ap.add_argument("--port", type=int, default=24101)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--hogs", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--draw", action="store_true")
    args = ap.parse_args(argv)
    generate_web(args.web_dir, WebConfig(years=(args.year,), pairs_per_year=4000, port=args.port))
    if args.draw:  # a copy without the rendered store: every image drawn on request
        import shutil

        shutil.rmtree(args.web_dir + "-drawn", ignore_errors=True)
        shutil.copytree(args.web_dir, args.web_dir + "-drawn", ignore=shutil.ignore_patterns("rendered"))
        args.web_dir += "-drawn"
    print(json.dumps(measure(args.web_dir, args.year, args.timeout, args.hogs, args.workers, args.draw)))


if __name__ == "__main__":
    main()
