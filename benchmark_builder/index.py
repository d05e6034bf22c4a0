"""The DuckDB index over a built benchmark's Parquet files, and SQL on it.

``index.duckdb`` holds views over the Parquet tables (so it never goes stale as years are
added) and a ``shards`` table read from the variants' ``sizes.json``. Every view has ``year``.

- ``candidates``: every crawl candidate;  ``crawl_status``: unreadable records, per file counts
- ``status``: one row per candidate of a built year, kept or dropped with a reason
- ``metadata``: every downloaded sample (the record schema), in any variant or none
- ``samples``: the samples in the default variant's training shards (``shard``/``key`` set)
- ``shards``: variant, split, year, shard file, sample count
"""
from __future__ import annotations

import json
import os

import duckdb

from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines import schema


# the columns a view has while no file of its table exists (nothing built yet, or only empty years)
EMPTY_VIEW_SCHEMAS = {"candidates": schema.CANDIDATE, "crawl_status": schema.CRAWL_STATUS, "status": schema.STATUS,
                      "metadata": schema.SAMPLE, "samples": schema.SAMPLE}


def _parquet_view(con, name: str, pattern: str, where: str = "") -> None:
    if pio.glob(pattern):
        src = f"read_parquet('{pattern}', hive_partitioning=false, union_by_name=true)"
        con.execute(f"create or replace view {name} as select * from {src} {where}")
    else:
        con.execute(f"create or replace view {name} as {_empty_select(con, EMPTY_VIEW_SCHEMAS.get(name))}")


def _empty_select(con, arrow_schema) -> str:
    """``select`` of no rows with the columns of ``arrow_schema`` in DuckDB's types."""
    if arrow_schema is None:
        return "select null::integer as year where false"
    empty = arrow_schema.empty_table()  # noqa: F841 (read by DuckDB's replacement scan)
    cols = con.execute("describe select * from empty").fetchall()
    return "select " + ", ".join(f'null::{t} as "{c}"' for c, t, *_ in cols) + " where false"


def _shard_rows(layout: Layout) -> list[tuple]:
    rows = []
    for sizes_path in pio.glob(pio.join(layout.root, "variants", "*", "*", "*", "sizes.json")) + pio.glob(
        pio.join(layout.root, "variants", "*", "eval", "*", "*", "sizes.json")
    ):
        parts = sizes_path.split("/")
        if parts[-4] == "eval":
            variant, split, step = parts[-6], f"eval_{parts[-3]}", parts[-2]
        else:
            variant, split, step = parts[-4], parts[-3], parts[-2]
        for shard, count in pio.read_json(sizes_path).items():
            year = int(step) if step.isdigit() else None
            rows.append((variant, split, step, year, os.path.join(os.path.dirname(sizes_path), shard), int(count)))
    for count_path in pio.glob(pio.join(layout.root, "variants", "*", "eval", "*", "*", "test", "count.txt")):
        parts = count_path.split("/")
        variant, kind, step = parts[-6], parts[-4], parts[-3]
        rows.append((variant, f"eval_{kind}", step, int(step) if step.isdigit() else None, os.path.dirname(count_path),
                     int(pio.read_bytes(count_path).decode().strip() or 0)))
    return rows


def build_index(layout: Layout) -> str:
    """(Re)write ``index.duckdb`` atomically; returns its path."""
    path = pio.local_path(layout.index)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    root = os.path.abspath(pio.local_path(layout.root))
    con = duckdb.connect(tmp)
    try:
        _parquet_view(con, "candidates", f"{root}/candidates/*/*.parquet")
        _parquet_view(con, "crawl_status", f"{root}/crawl_status/*/*.parquet")
        _parquet_view(con, "status", f"{root}/status/*/*.parquet")
        _parquet_view(con, "metadata", f"{root}/metadata/*/*.parquet")
        _parquet_view(con, "samples", f"{root}/metadata/*/*.parquet", "where shard is not null")
        con.execute(
            "create table shards (variant varchar, split varchar, step varchar, year integer, path varchar, count bigint)"
        )
        rows = _shard_rows(layout)
        if rows:
            con.executemany("insert into shards values (?, ?, ?, ?, ?, ?)", rows)
        if os.path.exists(path):  # keep tables other tools added (e.g. eval results)
            con.execute(f"attach '{path}' as old (read_only)")
            keep = con.execute(
                "select table_name from information_schema.tables where table_catalog = 'old' and table_type = 'BASE TABLE' "
                "and table_name not in ('shards')"
            ).fetchall()
            for (t,) in keep:
                con.execute(f"create table {t} as select * from old.{t}")
            con.execute("detach old")
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def query(layout: Layout, sql: str):
    """Run ``sql`` read-only on the index; returns (column names, rows)."""
    path = pio.local_path(layout.index)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: build a year first (make build-tic-datacomp YEAR=2019)")
    con = duckdb.connect(path, read_only=True)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    finally:
        con.close()


def format_table(cols: list[str], rows: list[tuple], max_rows: int = 200) -> str:
    shown = [tuple("" if v is None else str(v) for v in r) for r in rows[:max_rows]]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if v.replace(".", "", 1).lstrip("-").isdigit() else v.ljust(w) for v, w in zip(r, widths)) for r in shown]
    if len(rows) > max_rows:
        out.append(f"... {len(rows) - max_rows} more rows")
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def to_json_rows(cols, rows) -> str:
    return "\n".join(json.dumps(dict(zip(cols, r)), default=str) for r in rows)
