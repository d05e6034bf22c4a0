"""SQL on a 1M-row index: uid lookups and year-pruned aggregates against raw DuckDB over the
same Parquet files, unsorted.

Writes a synthetic benchmark root with ``--rows`` metadata rows and as many status rows
(schemas of ``pipelines.schema``, uids random 128-bit hex as the build's, nine years,
``--rows-per-file`` rows per Parquet file in random uid order as the pool shards write them),
builds ``index.duckdb`` with ``benchmark_builder.index.build_index`` and times, median and
spread of ``--repeat`` runs each:

- ``lookup``: ``select * from metadata where uid = ?`` (a uid that exists, a new one each run)
- ``aggregate``: ``select language, count(*), avg(clip_score) from metadata where year = 2019 group by 1``
- ``status``: ``select reason, count(*) from status where year = 2019 and status = 'dropped' group by 1``

on a read-only connection to the index (as ``make sql`` opens it), and the same SQL on an
in-memory DuckDB over ``read_parquet`` of the files (the peer). ``make sql`` also pays the
connection (``open``, timed too) and the interpreter's start-up.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa

from bench import report

YEARS = tuple(range(2014, 2023))
QUERIES = {
    "lookup": "select * from metadata where uid = '{uid}'",
    "aggregate": "select language, count(*), avg(clip_score) from metadata where year = 2019 group by 1",
    "status": "select reason, count(*) from status where year = 2019 and status = 'dropped' group by 1",
}


def write_root(root: str, rows: int, rows_per_file: int, seed: int = 0) -> np.ndarray:
    """Metadata and status Parquet files of ``rows`` samples under ``root``; returns the uids."""
    from pipelines import io as pio
    from pipelines import schema

    rng = np.random.default_rng(seed)
    uids = np.array([f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**63, size=(rows, 2), dtype=np.int64)])
    years = rng.choice(np.array(YEARS, dtype=np.int32), size=rows)
    langs = np.array(["en", "de", "fr", "es", "ja", "zh"])
    reasons = np.array(["http_404", "decode_error", "timeout", "seen_before:2015", "caption_too_few_words"])
    for y in YEARS:
        idx = np.flatnonzero(years == y)  # random order within the year, as pool shards hold them
        for k, start in enumerate(range(0, len(idx), rows_per_file)):
            part = idx[start:start + rows_per_file]
            n = len(part)
            u = pa.array(uids[part])
            url = pa.array([f"http://img{i % 97}.example/{uids[i][:12]}.jpg" for i in part])
            cols = {"uid": u, "url": url, "text": pa.array([f"a photo of sample {i}" for i in part]),
                    "year": pa.array(np.full(n, y, np.int32)), "month": pa.array(rng.integers(1, 13, n).astype(np.int32)),
                    "width": pa.array(np.full(n, 256, np.int32)), "height": pa.array(np.full(n, 192, np.int32)),
                    "language": pa.array(langs[rng.integers(0, len(langs), n)]),
                    "clip_score": pa.array(rng.random(n).astype(np.float32)),
                    "split": pa.array(np.full(n, "train")), "shard": pa.array([f"{k:05d}.tar"] * n),
                    "key": pa.array(uids[part])}
            table = pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in schema.SAMPLE},
                             schema=schema.SAMPLE)
            pio.write_parquet(pio.join(root, "metadata", f"year={y}", f"{k:05d}.parquet"), table)
            dropped = rng.random(n) < 0.3
            st = {"uid": u, "url": url, "year": pa.array(np.full(n, y, np.int32)),
                  "status": pa.array(np.where(dropped, "dropped", "kept")),
                  "reason": pa.array([r if d else None for r, d in zip(reasons[rng.integers(0, len(reasons), n)], dropped)]),
                  "stage": pa.array(np.where(dropped, "download", "write"))}
            table = pa.table({f.name: st.get(f.name, pa.nulls(n, f.type)).cast(f.type) for f in schema.STATUS},
                             schema=schema.STATUS)
            pio.write_parquet(pio.join(root, "status", f"year={y}", f"{k:05d}.parquet"), table)
    return uids


def _time(con, sql: str) -> float:
    t = time.perf_counter()
    con.execute(sql).fetchall()
    return (time.perf_counter() - t) * 1000


def _stats(ms: list[float]) -> dict:
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


def run(rows: int, rows_per_file: int, repeat: int, data_dir: str) -> dict:
    import duckdb

    from benchmark_builder.index import build_index
    from benchmark_builder.layout import Layout
    from pipelines.safe_inputs import sql_string

    layout = Layout(data_dir, "tic-datacomp")
    t = time.perf_counter()
    uids = write_root(layout.root, rows, rows_per_file)
    written = time.perf_counter() - t
    t = time.perf_counter()
    build_index(layout)
    indexed = time.perf_counter() - t
    pick = np.random.default_rng(1).choice(uids, size=repeat + 1, replace=False)
    opens = []
    for _ in range(repeat):
        t = time.perf_counter()
        duckdb.connect(layout.index, read_only=True).close()
        opens.append((time.perf_counter() - t) * 1000)
    ours = duckdb.connect(layout.index, read_only=True)
    peer = duckdb.connect()
    for table in ("metadata", "status"):
        peer.execute(f"create view {table} as select * from read_parquet("
                     f"{sql_string(os.path.join(layout.root, table, '*', '*.parquet'))}, hive_partitioning=false)")
    times: dict = {}
    for name, sql in QUERIES.items():
        for who, con in (("ours", ours), ("peer", peer)):
            _time(con, sql.format(uid=pick[-1]))  # first run: file metadata and caches, not counted
            times[(name, who)] = [_time(con, sql.format(uid=pick[i])) for i in range(repeat)]
    for name, sql in QUERIES.items():  # the same answers
        q = sql.format(uid=pick[0]) + (" order by all" if "group by" in sql else "")
        a, b = ours.execute(q).fetchall(), peer.execute(q).fetchall()
        assert sorted(map(repr, a)) == sorted(map(repr, b)), (name, a[:3], b[:3])
    ours.close()
    peer.close()
    figures = {name: {"ours": _stats(times[(name, "ours")]), "raw_duckdb_unsorted_parquet": _stats(times[(name, "peer")])}
               for name in QUERIES}
    for f in figures.values():
        f["speedup"] = f["raw_duckdb_unsorted_parquet"]["median_ms"] / f["ours"]["median_ms"]
    files = len(glob.glob(os.path.join(layout.root, "metadata", "*", "*.parquet")))
    return {"rows": rows, "files_per_table": files, "write_s": written, "index_s": indexed,
            "open": _stats(opens), "queries": figures,
            "index_mb": os.path.getsize(layout.index) / 2**20}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench sql", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-file", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--data-dir", default=None, help="where to write the synthetic root (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    data_dir = a.data_dir or tempfile.mkdtemp(prefix="bench-sql-")
    try:
        result = run(a.rows, a.rows_per_file, a.repeat, data_dir)
    finally:
        if a.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{result['rows']:,} metadata + {result['rows']:,} status rows in {result['files_per_table']} Parquet files each: "
          f"written in {result['write_s']:.1f} s, index built in {result['index_s']:.1f} s ({result['index_mb']:.0f} MB); "
          f"opening the index {result['open']['median_ms']:.1f} ms")
    report.table(["query", "ours ms", "(min-max)", "raw DuckDB ms", "(min-max)", "speedup"],
                 [[name, f"{o['median_ms']:.1f}", f"({o['min_ms']:.1f}-{o['max_ms']:.1f})", f"{p['median_ms']:.1f}",
                   f"({p['min_ms']:.1f}-{p['max_ms']:.1f})", f"{f['speedup']:.1f}x"]
                  for name, f in result["queries"].items()
                  for o, p in [(f["ours"], f["raw_duckdb_unsorted_parquet"])]])
    result["targets_met"] = (result["queries"]["lookup"]["ours"]["median_ms"] < 20
                             and result["queries"]["aggregate"]["ours"]["median_ms"] < 50)
    print(f"targets (lookup < 20 ms, year aggregate < 50 ms, medians): {'met' if result['targets_met'] else 'NOT met'}")
    report.save("sql", result)
    return result


if __name__ == "__main__":
    main()
