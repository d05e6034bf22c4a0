"""How a year's build cost grows with its size: one year of the embedded web at 10k, 30k and 100k pairs.

Each size is a fresh data dir built with ``build tic-datacomp --year 2014 --pairs-per-year N``
on Beam's local runner with two worker processes (``--direct_num_workers=2
--direct_running_mode=multi_processing``). Figures per size: the whole command's wall time
(synthetic web generation and rendering included), the build job's wall time and each stage's
busy seconds and rows/s (from the year's manifest, ``years/2014.json``), and the peak memory of
the whole process tree (the build, its Beam workers and the web server), sampled every 0.5 s
from ``/proc/<pid>/smaps_rollup`` as PSS (shared pages, such as the server's memory-mapped
images, counted once in all) and as the largest single process RSS. The scaling exponent is
log(t_large / t_small) / log(n_large / n_small) of the job's wall time (1.0 = linear; target
<= 1.1 between 10k and 100k); peak memory target: under 4 GiB at 100k.

    python -m bench scale                       # 10k, 30k, 100k
    python -m bench.scale --sizes 10000,30000   # a subset
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YEAR = 2014
BEAM = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.setdefault(ppid, []).append(int(name))
    return out


def _memory(pid: int, field: str) -> int:
    """``field`` (Pss, Rss) of one process in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> tuple[int, int]:
    """(PSS of ``root`` and every descendant, largest single RSS among them), in bytes."""
    kids, todo, pids = _children(), [root], []
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += kids.get(p, [])
    return sum(_memory(p, "Pss") for p in pids), max((_memory(p, "Rss") for p in pids), default=0)


def run(n: int, keep: str | None = None) -> dict:
    data = keep or tempfile.mkdtemp(prefix=f"bench-scale-{n}-")
    cmd = [sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", str(YEAR), "--data-dir", data,
           "--pairs-per-year", str(n), "--web-port", str(_free_port()), *BEAM]
    peak = {"pss": 0, "rss": 0}
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            pss, rss = tree_memory(proc.pid)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()
    proc.wait()
    stop.set()
    sampler.join()
    wall = time.time() - t
    if proc.returncode:
        sys.stdout.write(out[-3000:])
        raise SystemExit(f"error: the build of {n} pairs failed (exit {proc.returncode})")
    with open(os.path.join(data, "tic-datacomp", "years", f"{YEAR}.json")) as f:
        manifest = json.load(f)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return {"pairs": n, "wall_s": wall, "job_s": manifest["seconds"], "stages": manifest.get("stages", []),
            "candidates": manifest["counts"]["candidates"], "peak_pss_bytes": peak["pss"], "peak_rss_bytes": peak["rss"]}


def exponent(a: dict, b: dict, key: str) -> float:
    return math.log(b[key] / a[key]) / math.log(b["pairs"] / a["pairs"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench scale")
    ap.add_argument("--sizes", default="10000,30000,100000", help="pairs per year, comma-separated")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        print(f"error: --sizes must be comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        raise SystemExit(2)
    results = []
    for n in sizes:
        r = run(n)
        results.append(r)
        print(f"\n{n:>7,} pairs: {r['candidates']:,} candidates, command {r['wall_s']:.1f} s, build job {r['job_s']:.1f} s, "
              f"peak memory {r['peak_pss_bytes'] / 2**30:.2f} GiB PSS (largest process {r['peak_rss_bytes'] / 2**30:.2f} GiB RSS)")
        report.table(["stage", "in", "seconds", "rows/s"],
                     [[s["stage"], s["in"], s.get("seconds"), s["in"] / s["seconds"] if s.get("seconds") else None] for s in r["stages"]])
    result = {"benchmark": "scale", "year": YEAR, "beam_args": BEAM, "sizes": results}
    if len(results) >= 2:
        a, b = results[0], results[-1]
        result["exponent_job"] = exponent(a, b, "job_s")
        result["exponent_wall"] = exponent(a, b, "wall_s")
        print(f"\nscaling exponent {a['pairs']:,} -> {b['pairs']:,} pairs: build job {result['exponent_job']:.3f}, "
              f"whole command {result['exponent_wall']:.3f} (target <= 1.1)")
    print(f"peak memory at {results[-1]['pairs']:,} pairs: {results[-1]['peak_pss_bytes'] / 2**30:.2f} GiB PSS (target < 4 GiB at 100k)")
    report.save("scale", result)
    return result


if __name__ == "__main__":
    main()
