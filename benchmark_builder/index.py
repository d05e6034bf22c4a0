"""The DuckDB index over a built benchmark's Parquet files, and SQL on it.

``index.duckdb`` holds the uid-keyed tables ``status`` and ``metadata`` materialised, sorted by
year then uid, with an ART index on uid (a uid lookup is an index probe; DuckDB's per-row-group
min/max zonemaps prune a ``year = Y`` filter to that year's row groups: at 1M rows both take a
few ms, ``python -m bench sql``), views over the other Parquet tables, and a ``shards`` table read from
the variants' ``sizes.json``. Every table and view has ``year``. Each writer (build, reshard,
filter, caption, index) rebuilds the index; a query that finds the Parquet files of a
materialised table changed since (size, mtime, file list) reads them directly instead, so an
answer is never stale, only slower, until ``python -m benchmark_builder index`` runs.

- ``candidates``: every crawl candidate;  ``crawl_status``: unreadable records, per file counts
- ``status``: one row per candidate of a built year, kept or dropped with a reason
- ``metadata``: every downloaded sample (the record schema), in any variant or none
- ``samples``: the samples in the default variant's training shards (``shard``/``key`` set)
- ``shards``: variant, split, year, shard file, sample count
- ``index_info``: the benchmark root the paths point into, when the index was built

Every path in the index (the views' Parquet files, ``shards.path``) is absolute, so it opens
from any working directory. A data dir on an object store keeps ``index.duckdb`` there too; its
views name the store's URLs, and DuckDB reads that Parquet through the same fsspec filesystem as
``pipelines.io`` (registered on the connection: DuckDB's own httpfs extension is a download that
machines without network access cannot make). Building or querying such an index copies the
small ``index.duckdb`` to a local temporary file; the Parquet stays on the store and is streamed. After the data dir moved or was copied,
``python -m benchmark_builder index --data-dir D`` rebuilds it there; :func:`query` refuses an
index whose recorded root is not where it now lies. Paths enter SQL only as quoted literals
(:func:`pipelines.safe_inputs.sql_string`), never spliced in.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob as _glob
import hashlib
import json
import os
import shlex
import sys

import duckdb

from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines import schema
from pipelines.safe_inputs import InputError, sql_identifier, sql_string

# the columns a view has while no file of its table exists (nothing built yet, or only empty years)
EMPTY_VIEW_SCHEMAS = {"candidates": schema.CANDIDATE, "crawl_status": schema.CRAWL_STATUS, "status": schema.STATUS,
                      "metadata": schema.SAMPLE, "samples": schema.SAMPLE}


# tables materialised in index.duckdb, sorted by (year, uid) and indexed on uid (their Parquet table has the same name)
MATERIALISED = ("status", "metadata")


def _parquet_files(layout: Layout, table: str) -> list[str]:
    return pio.glob(layout.table_files(table))


def _parquet_select(con, name: str, layout: Layout, table: str, files: list[str]) -> str:
    if not files:
        return _empty_select(con, EMPTY_VIEW_SCHEMAS.get(name))
    if _glob.has_magic(layout.root):  # DuckDB would read '[', '*' or '?' in the root as a pattern: list the files
        src = "[" + ", ".join(sql_string(f) for f in files) + "]"
    else:  # a pattern: a view also sees years added later
        src = sql_string(layout.table_files(table))
    return f"select * from read_parquet({src}, hive_partitioning=false, union_by_name=true)"


def _parquet_view(con, name: str, layout: Layout, table: str, where: str = "", temp: bool = False) -> None:
    select = _parquet_select(con, name, layout, table, _parquet_files(layout, table))
    con.execute(f"create or replace {'temp ' if temp else ''}view {name} as select * from ({select}) {where}")


def _fingerprint(files: list[str]) -> str:
    """The file list with sizes and mtimes of a local table: changes when any file is rewritten."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(pio.local_path(f))
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _materialise(con, name: str, layout: Layout) -> tuple[str, int, str]:
    """``name`` as a table sorted by year and uid, indexed on uid; returns its row of ``index_materialised``."""
    files = _parquet_files(layout, name)
    con.execute(f"create table {name} as select * from ({_parquet_select(con, name, layout, name, files)}) order by year, uid")
    con.execute(f"create index {name}_uid on {name} (uid)")
    return name, len(files), _fingerprint(files) if pio.is_local(layout.root) else ""


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


def connect(database: str, root: str, read_only: bool = False):
    """A DuckDB connection on which the store holding ``root`` (if not local) is readable."""
    con = duckdb.connect(database, read_only=read_only)
    if not pio.is_local(root):
        fs, _ = pio.filesystem(root)
        con.register_filesystem(fs)
    return con


@contextlib.contextmanager
def _local_copy(path: str):
    """A local path of the index file ``path``: itself when local, else a temporary download
    (None when the object does not exist)."""
    if pio.is_local(path):
        yield pio.local_path(path)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tic-index-") as d:
        local = os.path.join(d, "index.duckdb")
        if not pio.exists(path):
            yield None
            return
        pio.download(path, local)
        yield local


@contextlib.contextmanager
def editable(layout: Layout):
    """A local path of ``index.duckdb`` that the block may change: the file itself on a local data
    dir; on a store, a downloaded copy that is uploaded (atomically) only when the block succeeds.
    Hold the data dir's writer lock around it."""
    if pio.is_local(layout.index):
        path = pio.local_path(layout.index)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield path
        return
    import tempfile

    with _local_copy(layout.index) as old, tempfile.TemporaryDirectory(prefix="tic-index-") as d:
        local = os.path.join(d, "index.duckdb")
        if old:
            os.replace(old, local)
        yield local
        _upload(local, layout.index)


def _upload(local: str, url: str) -> None:
    with open(local, "rb") as f, pio.atomic_open(url) as out:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            out.write(chunk)


def build_index(layout: Layout) -> str:
    """(Re)write ``index.duckdb`` atomically; returns its path. Tables other tools added (the
    evaluator's ``results``) are carried over. Call it holding the data dir's writer lock."""
    if not pio.is_local(layout.index):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tic-index-") as d, _local_copy(layout.index) as old:
            local = os.path.join(d, "index.duckdb")
            _write_index(layout, local, old)
            _upload(local, layout.index)
        return layout.index
    path = pio.local_path(layout.index)
    return _write_index(layout, path, path)


def _write_index(layout: Layout, path: str, old: str | None) -> str:
    here = layout.absolute()  # the index records absolute paths
    root = here.root
    tmp = pio.temp_path(path)  # this process's own temp: concurrent callers never share one
    con = connect(tmp, root)
    try:
        _parquet_view(con, "candidates", here, "candidates")
        _parquet_view(con, "crawl_status", here, "crawl_status")
        materialised = [_materialise(con, name, here) for name in MATERIALISED]
        con.execute("create view samples as select * from metadata where shard is not null")
        con.execute("create table index_materialised (name varchar, files bigint, fingerprint varchar)")
        con.executemany("insert into index_materialised values (?, ?, ?)", materialised)
        con.execute(
            "create table shards (variant varchar, split varchar, step varchar, year integer, path varchar, count bigint)"
        )
        rows = _shard_rows(here)
        if rows:
            con.executemany("insert into shards values (?, ?, ?, ?, ?, ?)", rows)
        con.execute("create table index_info (root varchar, built_at varchar)")
        con.execute("insert into index_info values (?, ?)",
                    [root, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")])
        if old and os.path.exists(old):  # keep tables other tools added (e.g. eval results)
            con.execute(f"attach {sql_string(old)} as old (read_only)")
            keep = con.execute(
                "select table_name from information_schema.tables where table_catalog = 'old' and table_type = 'BASE TABLE' "
                "and table_name not in ('shards', 'index_info', 'index_materialised', " + ", ".join(map(sql_string, MATERIALISED)) + ")"
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


def _read_changed_tables_directly(con, layout: Layout) -> None:
    """A materialised table whose Parquet files changed since the index was built (a writer
    updated them, or a build is under way) is shadowed by a temporary view over the files."""
    here = layout.absolute()
    if not pio.is_local(here.root):
        return
    try:
        recorded = dict(con.execute("select name, fingerprint from index_materialised").fetchall())
    except duckdb.Error:  # an index from before materialisation: its views read the files
        return
    changed = [n for n in MATERIALISED if n in recorded and recorded[n] != _fingerprint(_parquet_files(here, n))]
    for name in changed:
        _parquet_view(con, name, here, name, temp=True)
        if name == "metadata":
            _parquet_view(con, "samples", here, "metadata", "where shard is not null", temp=True)
    if changed:
        print(f"note: {', '.join(changed)} changed since {layout.index} was built: reading the Parquet files "
              f"directly (python -m benchmark_builder index --data-dir {shlex.quote(layout.data_dir)} makes it fast again)",
              file=sys.stderr)


def query(layout: Layout, sql: str):
    """Run ``sql`` read-only on the index; returns (column names, rows). SQL that DuckDB refuses
    (a syntax error, an unknown table or column) raises InputError with DuckDB's first line."""
    with _local_copy(layout.index) as path:
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"{layout.index} does not exist: build a year first (make build-tic-datacomp YEAR=2019)")
        con = connect(path, benchmark_root(layout), read_only=True)
        try:
            check_root(con, layout, layout.index)
            _read_changed_tables_directly(con, layout)
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
