"""Build one year of a time-stamped benchmark (and every earlier year it depends on).

The crawl runs once over all inputs and partitions candidates by crawl year. Each year is
then one Beam pipeline: timestamp -> download -> annotate -> dedup -> filter -> write, whose
inputs are that year's candidates plus what earlier years left behind (their URLs and image
hashes), so years are built in order, as make would, and a finished year is never redone.

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
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
import pyarrow as pa

from benchmark_builder.classes import class_list
from benchmark_builder.decontaminate import load_eval_sets
from benchmark_builder.index import build_index
from benchmark_builder.layout import Layout
from benchmark_builder.specs import get_spec
from pipelines import io as pio
from pipelines import neardup, schema
from pipelines.sinks import clip_benchmark
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.stats import StageSummary, mark, reason_family, stage_seconds
from pipelines.transforms import annotate, crawl, dedup, download, filter as filt, reshard, split, timestamp

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    year: int
    data_dir: str = "./data"
    benchmark: str = "tic-datacomp"
    inputs: list[str] = field(default_factory=list)  # WARC/WAT globs; empty: the embedded synthetic web
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
    eval_retrieval_size: int = 1000  # held-out image-text pairs per year
    eval_classification_size: int = 500  # held-out labelled images per year
    classes: str = ""  # class list of the classification sets; "" = synthetic-web or imagenet
    eval_sets: tuple[str, ...] = ()  # NAME=PATH of user evaluation sets to decontaminate against
    near_dup_threshold: int = 20  # Hamming distance on the 256-bit pHash
    near_dup_caption_threshold: int = 32  # looser distance accepted when captions match (MinHash)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    @property
    def synthetic(self) -> bool:
        return not self.inputs

    @property
    def default_variant(self) -> str:
        return self.write_variants[0]

    def output_config(self) -> dict:
        """What determines the output bytes (the runner does not)."""
        d = dataclasses.asdict(self)
        for k in ("runner", "data_dir", "year", "thread_count"):
            d.pop(k)
        return d

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.output_config(), sort_keys=True).encode()).hexdigest()[:16]

    def neardup_config(self) -> neardup.NearDupConfig:
        return neardup.NearDupConfig(threshold=self.near_dup_threshold, caption_threshold=self.near_dup_caption_threshold)

    def class_list(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return class_list(self.classes or ("synthetic-web" if self.synthetic else "imagenet"))

    def split_config(self) -> split.SplitConfig:
        return split.SplitConfig(self.eval_retrieval_size, self.eval_classification_size, self.class_list()[0],
                                 eligible_variant="basic" if "basic" in self.variants else self.default_variant, seed=self.seed)

    def download_config(self) -> download.DownloadConfig:
        return download.DownloadConfig(
            fetch=download.FetchConfig(timeout=self.timeout, retries=self.retries, allow_loopback=self.allow_loopback),
            resize=download.ResizeConfig(image_size=self.image_size, resize_mode=self.resize_mode),
            thread_count=self.thread_count,
            shard_size=self.pool_shard_size,
        )


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except Exception:
        return "unknown"


# ---------------------------------------------------------------- inputs

@contextlib.contextmanager
def input_files(cfg: BuildConfig, layout: Layout) -> Iterator[list[str]]:
    """The archives to crawl; for the synthetic web, generate it and serve its images meanwhile."""
    if not cfg.synthetic:
        files = sorted({f for pattern in cfg.inputs for f in (pio.glob(pattern) or [])})
        if not files:
            raise FileNotFoundError(f"--input matched no files: {cfg.inputs}")
        yield files
        return
    from benchmark_builder.synthetic_web import SyntheticWebServer, WebConfig, generate_web

    t = time.time()
    web = generate_web(layout.web, WebConfig(seed=cfg.seed, pairs_per_year=cfg.pairs_per_year, port=cfg.web_port))
    files = sorted(pio.join(layout.web, f) for y, fs in web["warc_files"].items() if int(y) <= cfg.year for f in fs)
    print(f"synthetic web: {len(files)} WARC files under {layout.web} ({time.time() - t:.1f} s)")
    with SyntheticWebServer(layout.web, subprocess=True, years=[int(y) for y in web["warc_files"] if int(y) <= cfg.year]) as server:
        print(f"synthetic web server: {server.base_url}")
        yield files


# ---------------------------------------------------------------- crawl

def crawl_stage(cfg: BuildConfig, layout: Layout, files: list[str]) -> None:
    marker = pio.join(layout.root, "candidates", "_SUCCESS.json")
    key = hashlib.sha256("\n".join(crawl.source_name(f, layout.web) for f in files).encode()).hexdigest()[:16]
    if pio.exists(marker) and pio.read_json(marker).get("inputs_hash") == key:
        print("crawl: candidates up to date, skipped")
        return
    t = time.time()
    with pipeline_options(cfg.runner, job_name="tic-crawl") as opts:
        with beam.Pipeline(options=opts) as p:
            crawl.crawl_pipeline(p, files, pio.join(layout.root, "candidates"), pio.join(layout.root, "crawl_status"),
                                 source_root=layout.web if cfg.synthetic else None)
    counts = crawl.summarize(pio.join(layout.root, "candidates"), pio.join(layout.root, "crawl_status"), time.time() - t)
    pio.write_json(marker, {"inputs_hash": key, "files": len(files), **counts})


# ---------------------------------------------------------------- one year

def _files(layout: Layout, table: str, years, patterns: bool = False) -> list[str]:
    """Parquet files of ``table`` for ``years``; with ``patterns``, the globs unexpanded (a dry
    run builds the job graph without touching storage)."""
    globs = [pio.join(layout.root, table, f"year={y}", "*.parquet") for y in years]
    return globs if patterns else [f for g in globs for f in pio.glob(g)]


def _read(p, label: str, files: list[str], columns: list[str] | None = None):
    if not files:
        return p | f"No{label}" >> beam.Create([])
    return (
        p
        | f"List{label}" >> beam.Create(files)
        | f"Read{label}" >> beam.FlatMap(lambda path: pio.read_parquet([path], columns).to_pylist())
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
    """Build and submit every job graph with ``--dry_run`` (validates the Dataflow jobs offline)."""
    files = cfg.inputs or [pio.join(layout.web, "crawl", "*.warc.gz")]
    with pipeline_options(cfg.runner, job_name="tic-crawl") as opts:
        p = beam.Pipeline(options=opts)
        crawl.crawl_pipeline(p, files, pio.join(layout.root, "candidates"), pio.join(layout.root, "crawl_status"))
        p.run()
    for y in years:
        year_pipeline_run(cfg, layout, y)
    print(f"dry run: {1 + len(years)} job graphs built and validated for {cfg.runner.runner}; nothing ran")
    return {"dry_run": True, "jobs": 1 + len(years)}


def build_year(cfg: BuildConfig, layout: Layout, year: int, eval_refs: list | None = None) -> dict:
    t0 = time.time()
    timings = year_pipeline_run(cfg, layout, year, eval_refs)
    return _finish_year(cfg, layout, year, time.time() - t0, timings)


NEARDUP_COLUMNS = ["uid", "phash", "first_seen", "text", "split", "year", "dedup_reason"]


def write_eval_sets(rows: list[dict], out_dirs: list[str], kind: str, classnames, templates) -> int:
    """One year's held-out set of ``kind`` in clip_benchmark's layout, in uid order."""
    samples = []
    for r in sorted(rows, key=lambda r: r["uid"]):
        sample = {"key": r["uid"], "jpg": r["jpg"], "json": {k: r.get(k) for k in reshard.SHARD_JSON_FIELDS if k != "key"}}
        if kind == "retrieval":
            sample["txt"] = r.get("text") or ""
        else:
            sample["cls"] = int(r["label"])
        samples.append(sample)
    for d in out_dirs:
        clip_benchmark.write_eval_set(d, kind, samples, list(classnames), list(templates))
    return len(samples)


def year_pipeline_run(cfg: BuildConfig, layout: Layout, year: int, eval_refs: list | None = None) -> dict[str, float]:
    """Run year ``year``'s pipeline; returns the busy seconds of each stage."""
    earlier_years = [y for y in get_spec(cfg.benchmark).years if y < year]
    lazy = cfg.runner.dry_run
    candidates_files = _files(layout, "candidates", [year], lazy)
    dl_cfg = cfg.download_config()
    variant_dir = layout.train_shards(cfg.default_variant, year)
    with pipeline_options(cfg.runner, job_name=f"tic-year-{year}") as opts:
        p = beam.Pipeline(options=opts)
        cands = _read(p, "Candidates", candidates_files)
        earlier_urls = _read(p, "EarlierUrls", _files(layout, "candidates", earlier_years, lazy), ["url", "year"]) | (
            "UrlYear" >> beam.Map(lambda r: (r["url"], r["year"]))
        )
        stamped = (cands, earlier_urls) | "Timestamp" >> timestamp.AssignFirstSeen(year)
        kept = stamped.kept | "MarkTimestamp" >> beam.Map(mark, timestamp.STAGE)

        downloaded = kept | "Download" >> download.DownloadShards(layout.pool(year), dl_cfg)
        annotated = (
            downloaded.samples
            | "Annotate" >> annotate.Annotate()
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
        splitted = filtered | "Split" >> split.AssignSplits(cfg.split_config()) | "MarkSplit" >> beam.Map(mark, split.STAGE)

        meta = {"variant": cfg.default_variant, "year": year, "benchmark": cfg.benchmark}
        placed = splitted | "Write" >> reshard.WriteVariant(
            cfg.default_variant, variant_dir, meta, reshard.ReshardConfig(cfg.samples_per_shard)
        )
        for extra in cfg.write_variants[1:]:
            _ = splitted | f"Write_{extra}" >> reshard.WriteVariant(
                extra, layout.train_shards(extra, year), {**meta, "variant": extra},
                reshard.ReshardConfig(cfg.samples_per_shard),
            )
        classnames, templates = cfg.class_list()
        for kind in ("retrieval", "classification"):
            _ = (
                splitted
                | f"Eval_{kind}" >> beam.Filter(lambda r, k: r["split"] == f"eval_{k}", kind)
                | f"EvalList_{kind}" >> beam.combiners.ToList()
                | f"WriteEval_{kind}" >> beam.Map(
                    write_eval_sets, [layout.eval_set(v, kind, year) for v in cfg.write_variants], kind, classnames, templates
                )
            )

        metadata_dir = layout.metadata(year)
        _ = (
            placed
            | "ByPoolShard" >> beam.Map(lambda r: (r["pool_shard"], r))
            | "GroupPoolShard" >> beam.GroupByKey()
            | "WriteMetadata" >> beam.MapTuple(
                lambda shard, rows: _write_table(rows, pio.join(metadata_dir, f"{shard}.parquet"), schema.SAMPLE)
            )
        )
        statuses = (
            (
                stamped.status,
                downloaded.status,
                placed | "FinalStatus" >> beam.Map(final_status, cfg.default_variant),
            )
            | "AllStatus" >> beam.Flatten()
            | "StatusList" >> beam.combiners.ToList()
            | "WriteStatus" >> beam.Map(
                lambda rows: _write_table(rows, pio.join(layout.status(year), "part-00000.parquet"), schema.STATUS)
            )
        )
        _ = placed | "MarkWrite" >> beam.Map(mark, reshard.STAGE)
        result = p.run()
        result.wait_until_finish()
    return stage_seconds(result)


def _finish_year(cfg: BuildConfig, layout: Layout, year: int, seconds: float, timings: dict | None = None) -> dict:
    """Check the accounting, print the stage summaries and write the year's manifest (last)."""
    n_candidates = len({u for f in _files(layout, "candidates", [year]) for u in pio.read_parquet(f, ["uid"]).column("uid").to_pylist()})
    status = pio.read_parquet(pio.join(layout.status(year), "part-00000.parquet"))
    if status.num_rows != n_candidates:
        raise RuntimeError(f"year {year}: {n_candidates} candidates but {status.num_rows} status rows: rows were lost")
    dupes = status.num_rows - len(set(status.column("uid").to_pylist()))
    if dupes:
        raise RuntimeError(f"year {year}: {dupes} candidates have more than one status row")
    summaries = StageSummary.from_status_table(status, order=[timestamp.STAGE, "download", dedup.STAGE, filt.STAGE, reshard.STAGE])
    for s in summaries:
        s.seconds = (timings or {}).get(s.stage)
    print(f"\n=== year {year}: {n_candidates} candidates, {seconds:.1f} s, {n_candidates / max(seconds, 1e-9):.0f} rows/s")
    print(StageSummary.render_all(summaries, seconds=seconds))
    variant_dir = layout.train_shards(cfg.default_variant, year)
    sizes = pio.read_json(pio.join(variant_dir, "sizes.json"))
    meta = pio.read_parquet(_files(layout, "metadata", [year]), ["split", "dedup_reason"])
    splits = collections.Counter(
        sp for sp, dr in zip(meta.column("split").to_pylist(), meta.column("dedup_reason").to_pylist()) if not dr
    )
    leakage = dict(collections.Counter(
        dr.partition(":")[2] for dr in meta.column("dedup_reason").to_pylist() if dr and dr.startswith("eval_overlap:")
    ).most_common())
    print(f"split: train {splits.get('train', 0)}, eval_retrieval {splits.get('eval_retrieval', 0)}, "
          f"eval_classification {splits.get('eval_classification', 0)}"
          + (f"; removed as evaluation overlap: {leakage}" if leakage else ""))
    eval_files = [f for kind in ("retrieval", "classification")
                  for f in pio.glob(pio.join(layout.eval_set(cfg.default_variant, kind, year), "**", "*"))]
    files = sorted(
        _files(layout, "metadata", [year]) + _files(layout, "status", [year])
        + [pio.join(variant_dir, s) for s in sizes] + [f for f in eval_files if os.path.isfile(pio.local_path(f))]
    )
    manifest = {
        "year": year,
        "config_hash": cfg.config_hash(),
        "code_version": code_version(),
        "seconds": round(seconds, 2),
        "counts": {
            "candidates": n_candidates,
            "kept": int(sum(1 for s in status.column("status").to_pylist() if s == "kept")),
            "dropped_by_reason": _reason_counts(status),
            "shards": len(sizes),
            "samples": int(sum(sizes.values())),
            "splits": dict(sorted(splits.items())),
            "eval_overlap": leakage,
        },
        "content_sha256": {os.path.relpath(f, pio.local_path(layout.root)): _sha256_file(f) for f in files},
    }
    pio.write_json(layout.year_manifest(year), manifest)
    return manifest


def _reason_counts(status: pa.Table) -> dict:
    counts = collections.Counter(
        reason_family(r) for st, r in zip(status.column("status").to_pylist(), status.column("reason").to_pylist()) if st == "dropped"
    )
    return dict(counts.most_common())


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(pio.local_path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def year_done(cfg: BuildConfig, layout: Layout, year: int) -> bool:
    path = layout.year_manifest(year)
    return pio.exists(path) and pio.read_json(path).get("config_hash") == cfg.config_hash()


# ---------------------------------------------------------------- whole build

def build(cfg: BuildConfig) -> dict:
    spec = get_spec(cfg.benchmark)
    if cfg.year not in spec.years:
        raise ValueError(f"{cfg.benchmark} covers years {spec.years[0]}..{spec.years[-1]}; got --year {cfg.year}")
    cfg.runner.validate()  # a bad runner config fails before any work
    layout = Layout(cfg.data_dir, cfg.benchmark)
    years = [y for y in spec.years if y <= cfg.year]
    t0 = time.time()
    if cfg.runner.dry_run:
        return dry_run(cfg, layout, years)
    todo = [y for y in years if not year_done(cfg, layout, y)]
    stale = pio.remove_stale_temps(layout.root)
    if stale:
        print(f"removed {stale} temp file(s) of an interrupted run")
    if todo:
        with input_files(cfg, layout) as files:
            crawl_stage(cfg, layout, files)
            eval_refs, eval_report = load_eval_sets(cfg.eval_sets, cfg.download_config().resize, cfg.neardup_config())
            for y in years:
                if y in todo:
                    build_year(cfg, layout, y, eval_refs)
                else:
                    print(f"year {y}: up to date, skipped")
    else:
        print(f"years {years[0]}..{years[-1]}: up to date, nothing to do")
    index = build_index(layout)
    manifest = {
        "benchmark": cfg.benchmark,
        "config": cfg.output_config(),
        "config_hash": cfg.config_hash(),
        "code_version": code_version(),
        "years": {str(y): pio.read_json(layout.year_manifest(y)) for y in years},
    }
    if todo or not pio.exists(layout.manifest):
        pio.write_json(layout.manifest, manifest)
    seconds = time.time() - t0
    print(f"\nbuilt {cfg.benchmark} up to {cfg.year} in {seconds:.1f} s")
    print(f"  shards:   {os.path.abspath(pio.local_path(layout.train_shards(cfg.default_variant, cfg.year)))}")
    print(f"  metadata: {os.path.abspath(pio.local_path(layout.metadata(cfg.year)))}")
    print(f"  index:    {os.path.abspath(index)}")
    print('  query:    make sql Q="select year, count(*) from samples group by 1"')
    return manifest
