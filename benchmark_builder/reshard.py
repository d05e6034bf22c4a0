"""Reshard a variant from a uid subset: download once, filter many times (DataComp's resharder).

The subset comes from a DataComp uid file (``.npy`` of ``u8,u8``, read with the codec in
``pipelines.uid``) or from SQL over the index (``--where "clip_score > 0.3 and year >= 2018"``,
a predicate on the ``metadata`` view). Selected samples are read back from the raw pool shards
and written through the same reshard stage as the build (uid order, img2dataset layout,
``sizes.json``, ``meta.json``, a ``_stats.json`` per shard), one directory per year, as a Beam
pipeline. Held-out evaluation samples and removed duplicates are never written to training
shards even when selected; the report says how many were excluded and why. The variant's
eval sets are the benchmark's (copied), and ``uids.npy`` records exactly what was written.

A uid file may repeat uids: as DataComp's ``resharder.py``, a uid found ``count`` times is
written ``count`` times, keyed ``<uid>-<j>`` (DataComp's resharder keys, used for every variant
written from a selection; a ``rewrite`` keeps the key style the variant was written with).
"""
from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping

import apache_beam as beam
import numpy as np

from benchmark_builder.index import build_index, query
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines import uid as uidcodec
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.safe_inputs import InputError, check_name
from pipelines.sinks import webdataset as wds
from pipelines.transforms import reshard as rs


def select_uids(layout: Layout, uids_file: str | None = None, where: str | None = None) -> collections.Counter:
    """uid -> how many times to write it: a uid file's repeats count (DataComp's upsampling);
    an SQL selection writes each uid once."""
    if bool(uids_file) == bool(where):
        raise ValueError("give exactly one of --uids FILE.npy or --where SQL")
    if uids_file:
        return collections.Counter(uidcodec.decode(uidcodec.load(uids_file)))
    _, rows = query(layout, f"select uid from metadata where {where}")
    return collections.Counter({r[0]: 1 for r in rows})


def _rows_of(path: str, year: int, selected: Mapping, name: str, pool_dir: str):
    table = pio.read_parquet([path])
    rows = [r for r in table.to_pylist() if r["uid"] in selected and not r["dedup_reason"] and (r["split"] or "train") == "train"]
    if not rows:
        return
    shard = os.path.basename(path).removesuffix(".parquet")
    images = {s["key"]: s["jpg"] for s in wds.iter_samples(pio.join(pool_dir, "shards", f"{shard}.tar"))}
    for r in rows:
        yield {**r, "jpg": images[r["uid"]], "filters": [name], "shard": None, "key": None, "copies": selected[r["uid"]]}


def _key_style(layout: Layout, name: str, years: list[int], rewrite: bool) -> str:
    """DataComp's ``<uid>-<j>`` keys for a new variant; a rewrite keeps the variant's own style
    (the build's variants have img2dataset keys, which their metadata rows record)."""
    if rewrite:
        for y in years:
            meta = pio.join(layout.train_shards(name, y), "meta.json")
            if pio.exists(meta):
                return pio.read_json(meta).get("keys", "img2dataset")
        return "img2dataset"
    return "uid"


def built_variants(layout: Layout) -> set[str]:
    """The variants the build writes: the manifest's ``--filter`` shards, and every variant
    directory that no reshard made (no ``reshard.json``: a build still running or killed)."""
    names = set()
    if pio.exists(layout.manifest):
        names |= set((pio.read_json(layout.manifest).get("config") or {}).get("write_variants") or ())
    for d in layout.variant_dirs():
        if pio.isdir(d) and not pio.exists(pio.join(d, "reshard.json")):
            names.add(d.rstrip("/").rsplit("/", 1)[-1])
    return names


def reshard_job(layout: Layout, name: str, files: Mapping[int, list[str]], selected: Mapping[str, int],
                runner: RunnerConfig, samples_per_shard: int = 10_000, keys: str = "uid") -> None:
    """The reshard job of variant ``name``: the ``selected`` rows of ``files`` (year -> metadata
    files; a dry run passes their globs unexpanded) read back from the pool and written as the
    variant's training shards, one directory per year."""
    with pipeline_options(runner, job_name=f"tic-reshard-{name}") as opts:
        with beam.Pipeline(options=opts) as p:
            for y, year_files in sorted(files.items()):
                rows = (
                    p
                    | f"Files{y}" >> beam.Create(year_files)
                    | f"Rows{y}" >> beam.FlatMap(_rows_of, y, selected, name, layout.pool(y))
                )
                _ = rows | f"Write{y}" >> rs.WriteVariant(
                    name, layout.train_shards(name, y), {"variant": name, "year": y, "benchmark": layout.benchmark,
                                                         "keys": keys},
                    rs.ReshardConfig(samples_per_shard, keys=keys),
                )


def reshard(layout: Layout, name: str, selected: Iterable[str] | Mapping[str, int], years: list[int] | None = None,
            runner: RunnerConfig | None = None, samples_per_shard: int = 10_000, default_variant: str = "basic",
            rewrite: bool = False, overwrite: bool = False) -> dict:
    """Write variant ``name`` from ``selected`` uids (a set, or uid -> copies to write).
    ``rewrite=True`` re-writes an existing variant in place (also the build's own), e.g. after
    new annotation columns such as ``caption_generated`` were added to the metadata. A variant the
    build wrote is replaced by another selection only with ``overwrite=True`` (``reshard --overwrite``)."""
    check_name(name, "variant name")
    if not rewrite and not overwrite and name in built_variants(layout):
        raise InputError(f"variant {name!r} was written by the build (variants/{name}); resharding it would replace "
                         "the build's own shards: choose another --name, or pass --overwrite")
    built = layout.built_years()
    years = [y for y in (years or built) if y in built]
    if not years:
        raise FileNotFoundError(f"no built years under {layout.root}; run make build-tic-datacomp first")
    meta_cols = pio.read_parquet(
        [f for y in years for f in pio.glob(pio.join(layout.metadata(y), "*.parquet"))], ["uid", "year", "split", "dedup_reason"]
    ).to_pylist()
    selected = selected if isinstance(selected, Mapping) else collections.Counter(set(selected))
    if any(int(c) < 1 for c in selected.values()):
        raise ValueError("every selected uid is written at least once")
    why = collections.Counter()
    found = set()
    for r in meta_cols:
        if r["uid"] in selected:
            found.add(r["uid"])
            ok = not r["dedup_reason"] and (r["split"] or "train") == "train"
            why["written" if ok else ("excluded_duplicate" if r["dedup_reason"] else "excluded_eval")] += 1
            why["copies_written"] += selected[r["uid"]] if ok else 0
    why["not_in_pool"] = len(set(selected) - found)
    runner = runner or RunnerConfig()
    keys = _key_style(layout, name, years, rewrite)
    for y in years:  # a re-run with another selection must not leave shards of the last one
        pio.remove(layout.train_shards(name, y))
    reshard_job(layout, name, {y: pio.glob(pio.join(layout.metadata(y), "*.parquet")) for y in years}, selected, runner,
                samples_per_shard, keys)
    written = [_json_uid(s) for y in years for tar in pio.glob(pio.join(layout.train_shards(name, y), "*.tar"))
               for s in wds.iter_samples(tar)]
    src = pio.join(layout.variant(default_variant), "eval")
    if name != default_variant and not rewrite and pio.isdir(src):
        pio.copy_tree(src, pio.join(layout.variant(name), "eval"))
    report = {"variant": name, "selected": sum(selected.values()), "distinct": len(selected), **dict(why), "years": years}
    if not rewrite:  # a rewrite keeps the variant's own record of how it was selected
        with pio.atomic_open(pio.join(layout.variant(name), "uids.npy")) as f:
            np.save(f, uidcodec.encode(written))
        pio.write_json(pio.join(layout.variant(name), "reshard.json"), report)
    build_index(layout)
    print(f"variant {name}: {why['written']} samples ({why['copies_written']} with repeats) written under {layout.variant(name)}/train; "
          f"excluded: {why['excluded_eval']} held-out eval, {why['excluded_duplicate']} duplicates; "
          f"{why['not_in_pool']} selected uids not in the pool")
    return report


def _json_uid(sample: dict) -> str:
    import json

    return json.loads(sample["json"])["uid"]
