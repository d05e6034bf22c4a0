"""The index's materialised tables: ``status`` and ``metadata`` hold exactly the Parquet files'
rows, sorted by year and uid; a Parquet file rewritten after the index was built is read directly (never
a stale answer) until ``build_index`` runs again."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.sql_speed import write_root
from benchmark_builder.index import build_index, query
from benchmark_builder.layout import Layout
from pipelines import io as pio


def _read(files):
    return pa.concat_tables([pq.ParquetFile(f).read() for f in files])


def test_materialised_tables_hold_the_parquet_rows_sorted_by_uid(tmp_path):
    layout = Layout(str(tmp_path))
    uids = write_root(layout.root, 2000, 300)
    build_index(layout)
    files = pio.glob(pio.join(layout.root, "metadata", "*", "*.parquet"))
    direct = _read(files)
    cols, rows = query(layout, "select uid, year, clip_score from metadata")
    assert [(r[1], r[0]) for r in rows] == sorted((r[1], r[0]) for r in rows)  # table order: year, then uid
    assert sorted(r[0] for r in rows) == sorted(uids)
    by_uid = dict(zip(direct["uid"].to_pylist(), zip(direct["year"].to_pylist(), direct["clip_score"].to_pylist())))
    assert {r[0]: (r[1], r[2]) for r in rows} == by_uid
    _, per_year = query(layout, "select year, count(*) from status group by 1 order by 1")
    status = _read(pio.glob(pio.join(layout.root, "status", "*", "*.parquet")))
    years = status["year"].to_pylist()
    assert per_year == sorted((y, years.count(y)) for y in set(years))
    _, kinds = query(layout, "select table_name, table_type from information_schema.tables where table_name in "
                             "('status', 'metadata', 'samples') order by 1")
    assert kinds == [("metadata", "BASE TABLE"), ("samples", "VIEW"), ("status", "BASE TABLE")]


def test_rewritten_parquet_is_read_directly_until_reindexed(tmp_path, capsys):
    layout = Layout(str(tmp_path))
    uids = write_root(layout.root, 600, 200)
    build_index(layout)
    target = sorted(uids)[7]
    path = next(f for f in pio.glob(pio.join(layout.root, "metadata", "*", "*.parquet"))
                if target in pq.ParquetFile(f).read(columns=["uid"])["uid"].to_pylist())
    t = pq.ParquetFile(path).read()
    t = t.set_column(t.schema.get_field_index("caption_generated"), "caption_generated",
                     pc.if_else(pc.equal(t["uid"], target), "a new caption", t["caption_generated"]))
    pio.write_parquet(path, t)  # as update_metadata does after captioning
    _, rows = query(layout, f"select caption_generated from metadata where uid = '{target}'")
    assert rows == [("a new caption",)]
    assert "changed since" in capsys.readouterr().err
    _, rows = query(layout, f"select count(*) from samples where caption_generated = 'a new caption'")
    assert rows == [(1,)]
    capsys.readouterr()
    build_index(layout)
    _, rows = query(layout, f"select caption_generated from metadata where uid = '{target}'")
    assert rows == [("a new caption",)] and capsys.readouterr().err == ""
