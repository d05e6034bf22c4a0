"""The downloaded pool as input of post-build annotation stages (CLIP scoring, captioning).

Each year's pool is raw WebDataset shards (every downloaded image) with one metadata Parquet
file per shard. ``pool_samples`` yields the rows of one metadata file that survived
deduplication together with their image bytes; ``update_metadata`` writes annotation columns
back into that file (atomically, whole file), so stages that group their results by pool shard
touch each file once.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

from pipelines import io as pio
from pipelines import schema
from pipelines.sinks import webdataset as wds


def pool_samples(metadata_path: str, pool_dir: str) -> Iterable[dict]:
    table = pio.read_parquet([metadata_path])
    rows = [r for r in table.to_pylist() if not r.get("dedup_reason")]
    if not rows:
        return
    shard = os.path.basename(metadata_path).removesuffix(".parquet")
    images = {s["key"]: s["jpg"] for s in wds.iter_samples(pio.join(pool_dir, "shards", f"{shard}.tar"))}
    for r in rows:
        yield {"uid": r["uid"], "url": r.get("url"), "text": r.get("text"), "year": r["year"], "shard": shard,
               "jpg": images[r["uid"]], "metadata_path": metadata_path}


def images_of(rows: Iterable[dict], pool_dirs: dict) -> dict[str, bytes]:
    """uid -> jpg bytes of downloaded rows (each with ``year`` and ``pool_shard``), read back from
    their pool shards (``pool_dirs``: year -> pool dir), one tar at a time. The build's samples
    carry no image bytes past the download stage: its joins and shuffles move metadata only,
    and the writers of shards and evaluation sets read the images they write."""
    want: dict[tuple, set] = {}
    for r in rows:
        want.setdefault((r["year"], r["pool_shard"]), set()).add(r["uid"])
    out = {}
    for (year, shard), uids in sorted(want.items()):
        out.update(_shard_images(pool_dirs, year, shard, uids))
    return out


def _shard_images(pool_dirs: dict, year, shard: str, uids: set) -> dict[str, bytes]:
    """uid -> jpg bytes of ``uids`` in one pool shard's tar."""
    return {s["key"]: s["jpg"] for s in wds.iter_samples(pio.join(pool_dirs[year], "shards", f"{shard}.tar"), keys=("jpg",))
            if s["key"] in uids}


def images_in_order(rows: list[dict], pool_dirs: dict) -> Iterator[bytes]:
    """The jpg bytes of each of ``rows`` in order, read back from their pool shards like
    ``images_of``, holding one pool shard's wanted images at a time: rows in uid order (a
    variant's order) visit each pool shard once, since a year's pool shards are cut by uid."""
    want: dict[tuple, set] = {}
    for r in rows:
        want.setdefault((r["year"], r["pool_shard"]), set()).add(r["uid"])
    at, images = None, {}
    for r in rows:
        where = (r["year"], r["pool_shard"])
        if where != at:
            at, images = where, {}  # the shard before is released first
            images = _shard_images(pool_dirs, *where, want[where])
        yield images[r["uid"]]


def update_metadata(metadata_path: str, updates: dict[str, dict]) -> int:
    """Set columns per uid (``{uid: {column: value}}``) in one metadata file; returns rows updated."""
    rows = pio.read_parquet([metadata_path]).to_pylist()
    n = 0
    for r in rows:
        u = updates.get(r["uid"])
        if u:
            r.update(u)
            n += 1
    pio.write_parquet(metadata_path, schema.to_table(rows, schema.SAMPLE))
    return n
