"""The DuckDB index over a built benchmark's Parquet files, and SQL on it.

``index.duckdb`` holds views over the Parquet tables (so it never goes stale as years are
added) and a ``shards`` table read from the variants' ``sizes.json``. Every view has ``year``.

- ``candidates``: every crawl candidate;  ``crawl_status``: unreadable records, per file counts
- ``status``: one row per candidate of a built year, kept or dropped with a reason
- ``metadata``: every downloaded sample (the record schema), in any variant or none
- ``samples``: the samples in the default variant's training shards (``shard``/``key`` set)
- ``shards``: variant, split, year, shard file, sample count
- ``index_info``: the benchmark root the paths point into, when the index was built

Every path in the index (the views' Parquet files, ``shards.path``) is absolute, so it opens
from any working directory. After the data dir moved or was copied,
``python -m benchmark_builder index --data-dir D`` rebuilds it there; :func:`query` refuses an
index whose recorded root is not where it now lies. Paths enter SQL only as quoted literals
(:func:`pipelines.safe_inputs.sql_string`), never spliced in.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob as _glob
import json
import os
import shlex

import duckdb

from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines import schema
from pipelines.safe_inputs import InputError, sql_identifier, sql_string

# the columns a view has while no file of its table exists (nothing built yet, or only empty years)
EMPTY_VIEW_SCHEMAS = {"candidates": schema.CANDIDATE, "crawl_status": schema.CRAWL_STATUS, "status": schema.STATUS,
                      "metadata": schema.SAMPLE, "samples": schema.SAMPLE}


def _parquet_view(con, name: str, layout: Layout, table: str, where: str = "") -> None:
    files = pio.glob(layout.table_files(table))
    if not files:
        con.execute(f"create or replace view {name} as {_empty_select(con, EMPTY_VIEW_SCHEMAS.get(name))}")
        return
    if _glob.has_magic(layout.root):  # DuckDB would read '[', '*' or '?' in the root as a pattern: list the files
        src = "[" + ", ".join(sql_string(f) for f in files) + "]"
    else:  # a pattern: the view also sees years added later
        src = sql_string(layout.table_files(table))
    con.execute(f"create or replace view {name} as select * from "
                f"read_parquet({src}, hive_partitioning=false, union_by_name=true) {where}")


def _empty_select(con, arrow_schema) -> str:
    """``select`` of no rows with the columns of ``arrow_schema`` in DuckDB's types."""
    if arrow_schema is None:
        return "select null::integer as year where false"
    empty = arrow_schema.empty_table()  # noqa: F841 (read by DuckDB's replacement scan)
    cols = con.execute("describe select * from empty").fetchall()
    return "select " + ", ".join(f'null::{t} as "{c}"' for c, t, *_ in cols) + " where false"


def benchmark_root(layout: Layout) -> str:
    """The benchmark root as recorded in the index: absolute for a local data dir."""
    return layout.absolute().root


def _shard_rows(layout: Layout) -> list[tuple]:
    rows = []
    for sizes_path in pio.glob(layout.any_variant("*", "*", "sizes.json")) + pio.glob(
        layout.any_variant("eval", "*", "*", "sizes.json")
    ):
        parts = sizes_path.split("/")
        if parts[-4] == "eval":
            variant, split, step = parts[-6], f"eval_{parts[-3]}", parts[-2]
        else:
            variant, split, step = parts[-4], parts[-3], parts[-2]
        for shard, count in pio.read_json(sizes_path).items():
            year = int(step) if step.isdigit() else None
            rows.append((variant, split, step, year, os.path.join(os.path.dirname(sizes_path), shard), int(count)))
    for count_path in pio.glob(layout.any_variant("eval", "*", "*", "test", "count.txt")):
        parts = count_path.split("/")
        variant, kind, step = parts[-6], parts[-4], parts[-3]
        rows.append((variant, f"eval_{kind}", step, int(step) if step.isdigit() else None, os.path.dirname(count_path),
                     int(pio.read_bytes(count_path).decode().strip() or 0)))
    return rows


def build_index(layout: Layout) -> str:
    """(Re)write ``index.duckdb`` atomically; returns its path. Tables other tools added (the
    evaluator's ``results``) are carried over. Call it holding the data dir's writer lock."""
    path = pio.local_path(layout.index)
    here = layout.absolute()  # the index records absolute paths
    root = here.root
    tmp = pio.temp_path(path)  # this process's own temp: concurrent callers never share one
    con = duckdb.connect(tmp)
    try:
        _parquet_view(con, "candidates", here, "candidates")
        _parquet_view(con, "crawl_status", here, "crawl_status")
        _parquet_view(con, "status", here, "status")
        _parquet_view(con, "metadata", here, "metadata")
        _parquet_view(con, "samples", here, "metadata", "where shard is not null")
        con.execute(
            "create table shards (variant varchar, split varchar, step varchar, year integer, path varchar, count bigint)"
        )
        rows = _shard_rows(here)
        if rows:
            con.executemany("insert into shards values (?, ?, ?, ?, ?, ?)", rows)
        con.execute("create table index_info (root varchar, built_at varchar)")
        con.execute("insert into index_info values (?, ?)",
                    [root, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")])
        if os.path.exists(path):  # keep tables other tools added (e.g. eval results)
            con.execute(f"attach {sql_string(path)} as old (read_only)")
            keep = con.execute(
                "select table_name from information_schema.tables where table_catalog = 'old' and table_type = 'BASE TABLE' "
                "and table_name not in ('shards', 'index_info')"
            ).fetchall()
            for (t,) in keep:
                con.execute(f"create table {sql_identifier(t)} as select * from old.{sql_identifier(t)}")
            con.execute("detach old")
        con.close()
        os.replace(tmp, path)
    finally:
        con.close()
        for leftover in (tmp, tmp + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return path


def check_root(con, layout: Layout, path: str) -> None:
    """Refuse an index whose paths point into another copy of the benchmark (the data dir moved)."""
    try:
        (recorded,) = con.execute("select root from index_info").fetchone()
    except duckdb.Error:  # not written by build_index (e.g. only eval results so far): nothing to check
        return
    here = benchmark_root(layout)
    if recorded != here and os.path.realpath(recorded) != os.path.realpath(here):
        raise InputError(f"{path} lists the files of {recorded}, not of {here} (the data dir "
                         f"moved or was copied): run python -m benchmark_builder index --data-dir {shlex.quote(layout.data_dir)}")


def query(layout: Layout, sql: str):
    """Run ``sql`` read-only on the index; returns (column names, rows). SQL that DuckDB refuses
    (a syntax error, an unknown table or column) raises InputError with DuckDB's first line."""
    path = pio.local_path(layout.index)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: build a year first (make build-tic-datacomp YEAR=2019)")
    con = duckdb.connect(path, read_only=True)
    try:
        check_root(con, layout, path)
        try:
            cur = con.execute(sql)
            return [d[0] for d in cur.description] if cur.description else [], cur.fetchall()
        except duckdb.Error as e:
            raise InputError(f"sql: {str(e).splitlines()[0]}") from None
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
