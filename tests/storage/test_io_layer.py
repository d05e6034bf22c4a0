"""pipelines.io on each store (emulators from tests/storage/conftest.py), against the local layer as
the oracle: a write whose block raises publishes nothing; listing, hashing, deleting and Parquet
agree with a local directory holding the same files; DuckDB reads the store's Parquet."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from pipelines import io as pio

FILES = {"a/x.bin": b"hello", "a/b/y.bin": b"\x00" * (3 << 20) + b"tail", "c.json": b"{}\n"}


def _fill(root: str) -> None:
    for rel, data in FILES.items():
        pio.write_bytes(pio.join(root, rel), data)


def test_failed_write_publishes_no_object(bucket):
    target = pio.join(bucket, "out", "part.bin")
    with pytest.raises(RuntimeError):
        with pio.atomic_open(target) as f:
            f.write(b"x" * (1 << 20))  # a partial object, if it were published
            raise RuntimeError("the writer failed mid-way")
    assert not pio.exists(target)
    assert pio.glob(pio.join(bucket, "**", "*")) == []
    pio.write_bytes(target, b"complete")
    assert pio.read_bytes(target) == b"complete"
    with pytest.raises(RuntimeError):  # a failed rewrite leaves the old object as it was
        with pio.atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("again")
    assert pio.read_bytes(target) == b"complete"


def test_listing_hashing_and_deleting_agree_with_a_local_dir(bucket, tmp_path):
    local, remote = str(tmp_path / "d"), pio.join(bucket, "d")
    _fill(local)
    _fill(remote)
    for pattern in ("*", "a/*.bin", "**/*.bin", "a/**/*"):
        got = [pio.relpath(f, remote) for f in pio.glob(pio.join(remote, pattern)) if pio.isfile(f)]
        want = [pio.relpath(f, local) for f in pio.glob(pio.join(local, pattern)) if pio.isfile(f)]
        assert got == want, pattern
    for rel, data in FILES.items():  # streamed from the store, checked against hashlib on the bytes
        assert pio.sha256(pio.join(remote, rel)) == hashlib.sha256(data).hexdigest()
    assert pio.isdir(pio.join(remote, "a")) and not pio.isfile(pio.join(remote, "a"))
    pio.copy_tree(pio.join(remote, "a"), pio.join(remote, "copy"))
    assert {pio.relpath(f, pio.join(remote, "copy")) for f in pio.glob(pio.join(remote, "copy", "**", "*"))
            if pio.isfile(f)} == {"x.bin", "b/y.bin"}
    pio.remove(pio.join(remote, "a"))
    assert not pio.exists(pio.join(remote, "a", "x.bin")) and pio.exists(pio.join(remote, "c.json"))
    pio.remove(pio.join(remote, "absent"))  # nothing to delete: no error


def test_parquet_and_duckdb_over_the_store(bucket):
    from benchmark_builder.index import connect

    rows = {2014: 3, 2015: 5}
    for y, n in rows.items():
        pio.write_parquet(pio.join(bucket, "t", f"year={y}", "part.parquet"), pa.table({"year": [y] * n, "v": list(range(n))}))
    table = pio.read_parquet(pio.join(bucket, "t", "*", "*.parquet"))
    assert table.num_rows == 8
    con = connect(":memory:", bucket)
    got = con.execute(f"select year, count(*), sum(v) from read_parquet('{bucket}/t/*/*.parquet') group by 1 order by 1").fetchall()
    con.close()
    assert got == [(y, n, sum(range(n))) for y, n in rows.items()]
