"""Reshard stage: write one filter variant's samples as WebDataset shards.

Samples are ordered by uid (DataComp's subset order), cut into shards of at most
``samples_per_shard`` (10,000 by default, as DataComp's resharder), and written in the
img2dataset layout with reproducible tars, a ``_stats.json`` per shard, ``sizes.json`` and
``meta.json`` for the directory. Every sample's ``shard`` and ``key`` go back into its
metadata row.

Upsampling, as DataComp's ``resharder.py``: a row with ``copies = c`` (the number of times its
uid occurs in a subset file, ``count = b - a`` of the two binary searches there) is written
``c`` times, consecutively in uid order. Keys are img2dataset's (shard id + index, the build's
own variants) or, with ``ReshardConfig(keys="uid")``, DataComp's resharder keys
``<uid>-<j>`` for copy ``j`` (0-based), so every copy is a distinct WebDataset sample.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import apache_beam as beam

from pipelines import io as pio
from pipelines.sinks import webdataset as wds

STAGE = "write"

# What a shard's <key>.json carries (img2dataset's fields plus the time stamp).
SHARD_JSON_FIELDS = (
    "uid", "url", "text", "caption_generated", "page_url", "crawl_id", "first_seen", "year", "month",
    "width", "height", "original_width", "original_height", "sha256", "phash", "language", "clip_score",
    "clip_model", "split", "label", "key",
)


# DataComp's per-sample scores, carried into <key>.json when the row has them (pool builds)
EXTRA_JSON_FIELDS = ("clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes")

KEY_STYLES = ("img2dataset", "uid")


@dataclass(frozen=True)
class ReshardConfig:
    samples_per_shard: int = 10_000
    shard_digits: int = 5  # digits of the shard id inside a sample key, as img2dataset
    keys: str = "img2dataset"  # or "uid": DataComp's resharder keys <uid>-<j>

    def __post_init__(self):
        if self.keys not in KEY_STYLES:
            raise ValueError(f"unknown key style {self.keys!r}; known: {KEY_STYLES}")


def locate(sorted_uids: list[str], uid: str, cfg: ReshardConfig, copy: int = 0) -> tuple[str, str]:
    """(shard name, sample key) of copy ``copy`` of ``uid`` in the variant's uid-sorted order
    (``sorted_uids`` holds a uid once per copy)."""
    i = bisect.bisect_left(sorted_uids, uid) + copy
    if copy < 0 or i >= len(sorted_uids) or sorted_uids[i] != uid:
        raise KeyError(uid if not copy else f"{uid} copy {copy}")
    shard, idx = divmod(i, cfg.samples_per_shard)
    if cfg.keys == "uid":
        return wds.shard_name(shard), f"{uid}-{copy}"
    return wds.shard_name(shard), wds.sample_key(shard, idx, cfg.samples_per_shard, cfg.shard_digits)


def copies(row: dict) -> int:
    """How many times ``row`` is written (1 unless a subset file repeats its uid)."""
    c = row.get("copies")
    return 1 if c is None else int(c)


def shard_sample(row: dict) -> dict:
    meta = {k: row.get(k) for k in SHARD_JSON_FIELDS}
    meta.update({k: row[k] for k in EXTRA_JSON_FIELDS if k in row})
    meta["status"] = "success"
    sample = {"key": row["key"], "jpg": row["jpg"], "txt": row.get("text") or "", "json": meta}
    if row.get("label") is not None:
        sample["cls"] = int(row["label"])
    return sample


def write_shard_group(out_dir: str, shard: str, rows: list[dict], variant: str, pool_dirs: dict | None = None) -> tuple[str, int]:
    rows = sorted(rows, key=lambda r: (r["uid"], r.get("copy") or 0))  # the variant's order: uid, then copy
    if pool_dirs is not None:  # rows without image bytes: read them from the pool shards as the tar is written
        from pipelines.transforms.pool import images_in_order

        samples = (shard_sample({**r, "jpg": jpg}) for r, jpg in zip(rows, images_in_order(rows, pool_dirs)))
    else:
        samples = (shard_sample(r) for r in rows)
    stats = {
        "count": len(rows),
        "successes": len(rows),
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "variant": variant,
        "years": sorted({r.get("year") for r in rows if r.get("year") is not None}),
    }
    wds.write_shard(out_dir, int(shard), samples, stats)
    return f"{shard}.tar", len(rows)


def write_directory_files(out_dir: str, sizes: list[tuple[str, int]], meta: dict) -> None:
    sizes = dict(sorted(sizes))
    pio.write_json(pio.join(out_dir, "sizes.json"), sizes)
    pio.write_json(pio.join(out_dir, "meta.json"), {**meta, "count": sum(sizes.values()), "shards": len(sizes)})


class WriteVariant(beam.PTransform):
    """Filtered samples (with ``jpg``, or with ``pool_shard`` and ``pool_dirs``: year -> pool dir to
    read the images from) -> shards under ``out_dir``; returns samples with shard/key.

    The output carries every input row (kept by ``variant`` or not) with ``shard``/``key`` set
    for the kept ones, so the caller can write the metadata from it.
    """

    def __init__(self, variant: str, out_dir: str, meta: dict, cfg: ReshardConfig = ReshardConfig(), pool_dirs: dict | None = None):
        super().__init__()
        self.variant, self.out_dir, self.meta, self.cfg, self.pool_dirs = variant, out_dir, meta, cfg, pool_dirs

    def expand(self, samples):
        variant, out_dir, cfg, meta, pool_dirs = self.variant, self.out_dir, self.cfg, self.meta, self.pool_dirs
        kept = samples | "Kept" >> beam.Filter(in_variant, variant)
        order = (
            kept
            | "Uids" >> beam.FlatMap(lambda r: [r["uid"]] * copies(r))
            | "AllUids" >> beam.combiners.ToList()
            | "Sort" >> beam.Map(sorted)
        )

        def place(row, sorted_uids):
            out = dict(row)
            out["split"] = out.get("split") or "train"
            if in_variant(out, variant):
                out["shard"], out["key"] = locate(sorted_uids, row["uid"], cfg)
            else:
                out["shard"], out["key"] = None, None
            return out

        def copies_of(row, sorted_uids):  # the first copy is ``row`` itself
            yield row
            for j in range(1, copies(row)):
                shard, key = locate(sorted_uids, row["uid"], cfg, j)
                yield {**row, "shard": shard, "key": key, "copy": j}

        placed = samples | "Place" >> beam.Map(place, beam.pvalue.AsSingleton(order))
        sizes = (
            placed
            | "InVariant" >> beam.Filter(lambda r: r["shard"] is not None)
            | "Copies" >> beam.FlatMap(copies_of, beam.pvalue.AsSingleton(order))
            | "ByShard" >> beam.Map(lambda r: (r["shard"], r))
            | "GroupShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.MapTuple(lambda shard, rows: write_shard_group(out_dir, shard, list(rows), variant, pool_dirs))
            | "AllSizes" >> beam.combiners.ToList()
        )
        _ = sizes | "DirFiles" >> beam.Map(write_directory_files_if_any, out_dir, meta)
        return placed


def in_variant(row: dict, variant: str) -> bool:
    """Training shards hold the variant's samples minus every held-out evaluation sample."""
    return variant in row["filters"] and (row.get("split") or "train") == "train"


def write_directory_files_if_any(sizes, out_dir, meta):
    pio.makedirs(out_dir)
    write_directory_files(out_dir, sizes, meta)


def write_variant_dir(out_dir: str, variant: str, rows: list[dict], meta: dict, cfg: ReshardConfig) -> list[tuple[str, str, str]]:
    """One variant directory written in one call: what ``WriteVariant`` does with a whole
    PCollection, for rows already grouped by directory. Returns (uid, shard, key) of each row's
    first copy."""
    rows = sorted((r for r in rows if in_variant(r, variant)), key=lambda r: r["uid"])
    sorted_uids = [r["uid"] for r in rows for _ in range(copies(r))]
    by_shard: dict[str, list[dict]] = {}
    placed = []
    for r in rows:
        for j in range(copies(r)):
            shard, key = locate(sorted_uids, r["uid"], cfg, j)
            by_shard.setdefault(shard, []).append({**r, "shard": shard, "key": key, "copy": j})
            if j == 0:
                placed.append((r["uid"], shard, key))
    sizes = [write_shard_group(out_dir, shard, group, variant) for shard, group in sorted(by_shard.items())]
    write_directory_files_if_any(sizes, out_dir, meta)
    return placed


class WriteVariantDirs(beam.PTransform):
    """Rows -> many variant directories in one job graph (a pool build writes every year at once).
    ``targets``: (variant, group) -> (out_dir, meta); ``group_of(row)`` names a row's group (its
    year). Every target directory is written, empty ones too. Returns (uid, (variant, shard, key))."""

    def __init__(self, targets: dict, group_of, cfg: ReshardConfig = ReshardConfig()):
        super().__init__()
        self.targets, self.group_of, self.cfg = targets, group_of, cfg

    def expand(self, rows):
        targets, group_of, cfg = self.targets, self.group_of, self.cfg
        variants = sorted({v for v, _ in targets})
        keyed = rows | "ByTarget" >> beam.FlatMap(
            lambda r: [((v, group_of(r)), r) for v in variants if (v, group_of(r)) in targets and in_variant(r, v)])
        everyone = rows.pipeline | "Targets" >> beam.Create(sorted(targets, key=str)) | "EmptyOf" >> beam.Map(lambda t: (t, None))

        def write(item):
            (variant, group), values = item
            out_dir, meta = targets[(variant, group)]
            return [(u, (variant, s, k)) for u, s, k in
                    write_variant_dir(out_dir, variant, [r for r in values if r is not None], meta, cfg)]

        return ((keyed, everyone) | "AllTargets" >> beam.Flatten() | "GroupTarget" >> beam.GroupByKey()
                | "WriteDir" >> beam.FlatMap(write))
