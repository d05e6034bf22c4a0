"""The record schema: every table the pipeline writes, in one place.

Tables (all Parquet, hive-partitioned by ``year=YYYY``):

- ``candidates``: one row per (image URL, alt text) pair found by the crawl stage.
- ``crawl_status``: one row per archive record the crawl stage could not read (and one per
  file with its record count), so a malformed record is visible instead of silently skipped.
- ``pool/status``: one row per candidate sent to the download stage, with the download's
  outcome (img2dataset's per-shard status parquet); the pool shard's tar holds the images.
- ``status``: one row per candidate of the year, its final outcome: ``kept`` or ``dropped``
  with a machine-readable ``reason`` (``seen_before:2017``, ``http_404``, ``decode_error``,
  ``duplicate_of:<uid>``, ``caption_too_short`` ...) and the ``stage`` that decided it.
- ``samples`` (``metadata/``): one row per downloaded and decoded image, the record schema of
  docs/architecture.md. ``filters`` lists the variants that keep it; ``shard``/``key`` locate it in the
  default variant's training shards (null when that variant drops it).

Every writer imports its schema from here; the DuckDB index reads the same files.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Iterable

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

CANDIDATE = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),  # normalised absolute image URL
        ("text", pa.string()),  # alt text, entities decoded, whitespace collapsed
        ("page_url", pa.string()),
        ("crawl_id", pa.string()),  # e.g. CC-MAIN-2019-04
        ("crawl_time", TS),  # WARC-Date of the page record
        ("source", pa.string()),  # archive path the record came from
        ("record_offset", pa.int64()),
        ("year", pa.int32()),  # year of the crawl snapshot
        ("month", pa.int32()),
    ]
)

CRAWL_STATUS = pa.schema(
    [
        ("source", pa.string()),
        ("record_offset", pa.int64()),
        ("record_id", pa.string()),
        ("status", pa.string()),  # ok | error
        ("reason", pa.string()),
        ("n_candidates", pa.int64()),
        ("year", pa.int32()),
    ]
)

STATUS = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("year", pa.int32()),
        ("status", pa.string()),  # kept | dropped
        ("reason", pa.string()),  # null when kept
        ("stage", pa.string()),  # stage that decided: timestamp, download, dedup, filter, write
        ("http_status", pa.int32()),
        ("error_message", pa.string()),
    ]
)

POOL_STATUS = pa.schema(
    list(CANDIDATE)
    + [
        ("first_seen", TS),
        ("pool_shard", pa.string()),
        ("status", pa.string()),  # success | error  (img2dataset's status column)
        ("reason", pa.string()),
        ("http_status", pa.int32()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
    ]
)

SAMPLE = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("caption_generated", pa.string()),
        ("page_url", pa.string()),
        ("crawl_id", pa.string()),
        ("first_seen", TS),
        ("year", pa.int32()),
        ("month", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),  # of the downloaded bytes, before re-encoding
        ("phash", pa.string()),  # 256-bit DCT perceptual hash, 64 hex chars (imagehash, hash_size 16)
        ("language", pa.string()),
        ("language_score", pa.float32()),
        ("clip_score", pa.float32()),
        ("clip_model", pa.string()),
        ("cluster_id", pa.int64()),
        ("filters", pa.list_(pa.string())),
        ("dedup_reason", pa.string()),  # duplicate_of:<uid> | near_duplicate_of:<uid> | eval_overlap:<set> | null
        ("duplicates", pa.list_(pa.string())),  # uids this sample's duplicates had (kept row records them)
        ("split", pa.string()),  # train | eval_retrieval | eval_classification
        ("label", pa.int32()),
        ("shard", pa.string()),
        ("key", pa.string()),
    ]
)

# A sample built from a DataComp pool (benchmark_builder/from_pool.py) keeps DataComp's own
# columns beside the record schema; the index reads both kinds of files (union by name).
DATACOMP_COLUMNS = [
    ("clip_b32_similarity_score", pa.float32()),
    ("clip_l14_similarity_score", pa.float32()),
    ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
    ("pool_shard", pa.string()),  # the DataComp pool shard (NNNNNNNN) the sample was read from
    ("copies", pa.int32()),  # times the released uid file lists it (DataComp's resharder upsampling)
]
DATACOMP_SAMPLE = pa.schema(list(SAMPLE) + DATACOMP_COLUMNS)

SPLITS = ("train", "eval_retrieval", "eval_classification")


def _coerce(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_timestamp(typ) and isinstance(value, str):
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> table of exactly ``schema``; missing fields are null, extra ones an error."""
    rows = list(rows)
    names = set(schema.names)
    for r in rows:
        extra = set(r) - names
        if extra:
            raise KeyError(f"fields not in schema: {sorted(extra)}")
    cols = {
        f.name: pa.array([_coerce(r.get(f.name), f.type) for r in rows], type=f.type) for f in schema
    }
    return pa.table(cols, schema=schema)


def project(row: dict, schema: pa.Schema) -> dict:
    """The part of ``row`` that ``schema`` holds (for writing a wide in-flight row)."""
    return {name: row.get(name) for name in schema.names}
