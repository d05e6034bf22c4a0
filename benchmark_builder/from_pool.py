"""TiC-DataComp from a DataComp pool and TiC-CLIP's released uid files, in one command.

``python -m benchmark_builder build tic-datacomp --from datacomp --pool POOL --tic-uids DIR``
(``make build-tic-datacomp FROM=datacomp POOL=... TIC_UIDS=...``; both default to the embedded
fixture, ``benchmark_builder/synthetic_web/datacomp_pool.py``). The reference recipe (patch
DataComp, run ``resharder.py`` once per year and per evaluation set, convert with shell scripts)
becomes one pass into the crawl path's layout (``benchmark_builder/layout.py``):

- every pool sample (a row of a ``NNNNNNNN.parquet``) gets a time step from the released uid
  files: the year of ``YYYY.npy`` (``--granularity yearly``) or the month of ``YYYY/YYYYMM.npy``
  (``monthly``); ``evaluation uids`` (the two pickles) are held out: TiC-DataComp-Retrieval and
  TiC-DataCompNet sets per year in clip_benchmark's layout, DataCompNet labelled through
  ImageNet's synset order; training = uid file minus evaluation uids;
- ``candidates`` and ``status`` each have one row per pool sample (``candidates``: uid, url, text,
  the pool shard as ``crawl_id`` and its Parquet file as ``source``); ``status``: ``kept``, or
  ``dropped`` with a reason
  (``not_in_tic_uids`` (stage ``select``, year null), ``not_downloaded:<img2dataset status>``,
  ``pool_shard_missing``, ``pool_shard_unreadable``, ``image_missing_in_shard`` (stage ``pool``),
  the default variant's filter reason (stage ``filter``));
- variants as tags, as in the crawl path: ``none`` (TiC's released training set), ``basic``
  (DataComp's basic filter on the metadata, the same rule as the crawl path:
  ``pipelines.transforms.filter.basic_reason`` with fastText language ID), ``bestpool`` (the
  training uids inside a DataComp bestpool uid file, ``--bestpool-uids``);
- shards are written by the project's reshard stage (``pipelines.transforms.reshard``) with
  DataComp's resharder keys ``<uid>-<j>``: a uid repeated c times in a uid file is written c
  times; metadata keeps DataComp's columns and scores (``clip_score`` is the L/14 score);
- ``years/YYYY.json``, ``manifest.json`` and ``index.duckdb`` as the crawl path writes them.

TiC-CLIP's uid files already are the benchmark's sets (its own dedup and time stamps), so the
crawl path's timestamp, download and dedup stages do not run here. A build replaces every output
of an earlier pool build in the data dir (the fixture takes seconds; a real pool one pass).

Scale: the released training uid files (which index DataComp's 12.8B-sample pool whatever the
pool's size) stay sorted ``u8,u8`` arrays, memory-mapped when local (16 bytes a uid, only the
pages a lookup touches), looked up per pool shard by binary search as DataComp's resharder does.
The first pass (which sample goes where) runs in the launching process and holds the benchmark
rows' metadata as Python objects: fine for pools of a few million samples (DataComp small);
DataComp medium and larger need that pass inside the Beam job as well (not done).
The second pass (images, shards, eval sets, metadata) is one Beam job reading each pool tar once.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field

import apache_beam as beam
import numpy as np
from PIL import Image

from benchmark_builder.build import remove_tree, write_eval_sets
from benchmark_builder.classes import class_list
from benchmark_builder.index import build_index
from benchmark_builder.inputs import default_input
from benchmark_builder.layout import Layout
from benchmark_builder.specs import format_years, resolve_spec
from pipelines import io as pio
from pipelines import schema
from pipelines import uid as uidcodec
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.provenance import code_version
from pipelines.safe_inputs import InputError
from pipelines.sources import datacomp as dc
from pipelines.stats import StageSummary
from pipelines.transforms import annotate
from pipelines.transforms import filter as filt
from pipelines.transforms import reshard as rs

SOURCE = "datacomp"
STAGES = ("select", "pool", filt.STAGE, rs.STAGE)
UNASSIGNED = "unassigned"  # status/<this>/: pool samples in no uid file (year null)


@dataclass
class PoolBuildConfig:
    pool: str = ""  # "": the embedded fixture
    tic_uids: str = ""
    data_dir: str = "./data"
    benchmark: str = "tic-datacomp"
    granularity: str = "yearly"  # or monthly
    bestpool_uids: str = ""
    write_variants: tuple[str, ...] = ("basic",)
    years: tuple[int, ...] = dc.TIC_YEARS
    samples_per_shard: int = 10_000
    lid: str = "fasttext"
    lid_model: str = ""
    seed: int = 0
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    @property
    def default_variant(self) -> str:
        return self.write_variants[0]

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("none", "basic") + (("bestpool",) if self.bestpool_uids else ()) + self.write_variants))

    def output_config(self) -> dict:
        d = asdict(self)
        for k in ("runner", "data_dir"):
            d.pop(k)
        d["source"] = SOURCE
        d["years"] = list(self.years)
        d["write_variants"] = list(self.write_variants)
        return d


def _time_steps(cfg: PoolBuildConfig) -> str:
    return f"monthly:{cfg.years[0]}-{cfg.years[-1]}" if cfg.granularity == "monthly" else ""


# ---------------------------------------------------------------- inputs

@dataclass
class TicInputs:
    """The released files as read: the training uid files stay sorted ``u8,u8`` arrays (memory
    maps when local; looked up per pool shard by binary search, as DataComp's resharder does), the
    two evaluation pickles (thousands of uids a year) are dicts."""
    train: list[tuple[int, int | None, np.ndarray]]  # (year, month, sorted uids) in time order
    retrieval: dict[str, int]  # uid -> year
    labels: dict[str, tuple[int, int]]  # uid -> (year, ImageNet class id)
    listed: dict[int, int]  # year -> uids listed in the training files (with repeats)
    sizes: dict[str, int] | None
    bestpool: np.ndarray | None  # sorted uids of the bestpool file

    def lookup(self, uids: list[str]) -> dict[str, tuple[int, int | None, int]]:
        """uid -> (year, month, copies) of the ``uids`` listed in a training file; a uid of two
        files takes the earlier one."""
        query = uidcodec.encode(uids, sort=False)
        out: dict[str, tuple[int, int | None, int]] = {}
        for y, m, arr in self.train:
            copies = uidcodec.counts(arr, query)
            for i in np.flatnonzero(copies):
                out.setdefault(uids[i], (y, m, int(copies[i])))
        return out

    def in_bestpool(self, uids: list[str]) -> set[str]:
        if self.bestpool is None:
            return set()
        hit = uidcodec.counts(self.bestpool, uidcodec.encode(uids, sort=False))
        return {u for u, c in zip(uids, hit) if c}


def read_inputs(cfg: PoolBuildConfig) -> TicInputs:
    synsets = dc.synset_index()
    if cfg.granularity == "monthly":
        train = [(y, m, arr) for (y, m), arr in sorted(dc.read_monthly_uids(cfg.tic_uids, cfg.years).items())]
        sizes = dc.read_sizes(cfg.tic_uids, dc.MONTHLY_DIR)
    else:
        train = [(y, None, arr) for y, arr in sorted(dc.read_yearly_uids(cfg.tic_uids, cfg.years).items())]
        sizes = dc.read_sizes(cfg.tic_uids, dc.YEARLY_DIR)
    listed: collections.Counter = collections.Counter()
    for y, _, arr in train:
        listed[y] += len(arr)
    retrieval = {}
    for y, uids in sorted(dc.read_retrieval_pickle(dc.find_tic_file(cfg.tic_uids, dc.RETRIEVAL_PICKLE)).items()):
        for u in uids:
            retrieval.setdefault(u, y)
    labels = {}
    for y, by_uid in sorted(dc.read_datacompnet_pickle(dc.find_tic_file(cfg.tic_uids, dc.DATACOMPNET_PICKLE), synsets).items()):
        for u, label in by_uid.items():
            labels.setdefault(u, (y, label))
    bestpool = None
    if cfg.bestpool_uids:
        if not pio.exists(cfg.bestpool_uids):
            raise InputError(f"{cfg.bestpool_uids}: bestpool uid file missing")
        bestpool = dc.read_uid_file(cfg.bestpool_uids)
    return TicInputs(train, retrieval, labels, dict(listed), sizes, bestpool)


# ---------------------------------------------------------------- one pool sample

def assign(row: dict, tic: TicInputs, listed: tuple | None, image: dict | None, shard_problem: str | None, years) -> dict:
    """A pool row -> its year, month, split, label, copies and status (before filtering);
    ``listed``: its (year, month, copies) in the training files (``TicInputs.lookup``) or None."""
    u = row["uid"]
    out = dict(row)
    y_train, month, copies = listed or (None, None, 1)
    if u in tic.retrieval:
        year, split = tic.retrieval[u], "eval_retrieval"
    elif u in tic.labels:
        year, split = tic.labels[u][0], "eval_classification"
    else:
        year, split = y_train, "train"
    label = tic.labels[u][1] if u in tic.labels and tic.labels[u][0] == year else None
    out.update(year=year if year in years else None, month=month if year == y_train else None, split=split,
               label=label, copies=copies, eval_uid_in_training=split != "train" and y_train is not None)
    if out["year"] is None:
        out["drop"] = ("select", "not_in_tic_uids" if year is None else f"year_outside:{format_years(years)}")
    elif shard_problem:
        out["drop"] = ("pool", shard_problem)
    elif row.get("pool_status") not in (None, "success"):
        out["drop"] = ("pool", f"not_downloaded:{row['pool_status']}")
    elif image is None:
        out["drop"] = ("pool", "image_missing_in_shard")
    else:
        out["drop"] = None
    return out


def _image_size(jpg: bytes) -> tuple[int | None, int | None]:
    try:
        with Image.open(io.BytesIO(jpg)) as im:
            return im.size
    except Exception:
        return None, None


def sample_row(r: dict, image: dict, cfg: PoolBuildConfig, in_bestpool: bool, lid: annotate.LidConfig) -> dict:
    """The metadata row (schema.DATACOMP_SAMPLE) of a sample that is in the benchmark."""
    lang, score = annotate.detect_language(r.get("text"), lid)
    w, h = _image_size(image["jpg"])
    out = {k: r.get(k) for k in dc.POOL_COLUMNS}
    out.update(year=r["year"], month=r["month"], width=w, height=h, language=lang, language_score=score,
               crawl_id=f"datacomp:{r['pool_shard']}", clip_score=r.get("clip_l14_similarity_score"),
               clip_model="datacomp:clip_l14_similarity_score" if r.get("clip_l14_similarity_score") is not None else None,
               split=r["split"], label=r["label"], copies=r["copies"], pool_shard=r["pool_shard"])
    reasons = {}
    for v in cfg.variants:
        if r["split"] != "train":
            reasons[v] = None
        elif v == "bestpool":
            reasons[v] = None if in_bestpool else "not_in_bestpool_uids"
        else:
            reasons[v] = filt.VARIANTS[v](out)
    out["filters"] = [v for v in cfg.variants if reasons[v] is None]
    out["filter_reasons"] = reasons
    return out


def candidate_row(r: dict, shard: dc.PoolShard, offset: int) -> dict:
    """The ``candidates`` row of a pool sample (schema.CANDIDATE): the pool's Parquet row is the
    record it came from; its time is the uid files' year (and month), not a crawl time."""
    return {"uid": r["uid"], "url": r.get("url"), "text": r.get("text"), "page_url": None, "crawl_id": f"datacomp:{shard.name}",
            "crawl_time": None, "source": shard.parquet, "record_offset": offset, "year": r["year"], "month": r["month"]}


def status_row(r: dict, default_variant: str) -> dict:
    base = {"uid": r["uid"], "url": r.get("url"), "year": r.get("year"), "http_status": None, "error_message": None}
    if r.get("drop"):
        stage, reason = r["drop"]
        return {**base, "status": "dropped", "reason": reason, "stage": stage,
                "error_message": r.get("pool_error") if stage == "pool" else None}
    reason = r["filter_reasons"].get(default_variant) if r["split"] == "train" else None
    if reason:
        return {**base, "status": "dropped", "reason": reason, "stage": filt.STAGE}
    return {**base, "status": "kept", "reason": None, "stage": rs.STAGE}


# ---------------------------------------------------------------- the build

def _rows_with_images(shard: dc.PoolShard, wanted: dict[str, dict]):
    """The benchmark rows of one pool shard with their image bytes (read inside the Beam job)."""
    images, _ = dc.read_pool_images(shard)
    for u, r in wanted.items():
        yield {**r, "jpg": images[u]["jpg"]}


def _fixture(cfg: PoolBuildConfig) -> PoolBuildConfig:
    t = time.time()
    out = pio.join(cfg.data_dir, "datacomp-fixture")
    info = default_input().datacomp_pool(out, cfg.seed)
    print(f"datacomp fixture: {info['pool_samples']} pool samples in {info['shards']} shards, uid files for "
          f"{info['years'][0]}..{info['years'][-1]} under {out} ({time.time() - t:.1f} s)")
    return PoolBuildConfig(**{**cfg.__dict__, "pool": cfg.pool or info["pool"], "tic_uids": cfg.tic_uids or info["tic_uids"],
                              "bestpool_uids": cfg.bestpool_uids or info["bestpool_uids"]})


def build_from_pool(cfg: PoolBuildConfig) -> dict:
    if cfg.granularity not in ("yearly", "monthly"):
        raise InputError(f"--granularity {cfg.granularity!r}: yearly or monthly")
    spec = resolve_spec(cfg.benchmark, format_years(cfg.years), _time_steps(cfg), cfg.data_dir, extend=False)
    layout = Layout(cfg.data_dir, cfg.benchmark)
    if pio.exists(layout.manifest) and (pio.read_json(layout.manifest).get("config") or {}).get("source") != SOURCE:
        raise InputError(f"{layout.root} holds a benchmark built from crawls; build from a pool into another --data-dir")
    if not cfg.pool or not cfg.tic_uids:
        cfg = _fixture(cfg)
    cfg.runner.validate()
    t0 = time.time()
    shards = dc.pool_shards(cfg.pool)
    tic = read_inputs(cfg)
    lid = annotate.LidConfig(cfg.lid, cfg.lid_model)
    years = tuple(cfg.years)

    by_year, statuses, candidates, seen = _first_pass(cfg, shards, tic, lid, years)

    # pass 2: one Beam job writes every year's shards, eval sets and metadata
    for d in (layout.table("candidates"), layout.table("status"), layout.table("metadata"), layout.years_dir,
              layout.variants, layout.clip(), layout.captions):
        remove_tree(d)
    t = time.time()
    _write_years(cfg, layout, shards, by_year, years)
    year_manifests = {}
    for y in years:
        pio.write_parquet(pio.join(layout.candidates(y), "part-00000.parquet"), _candidate_table(candidates.get(y, [])))
        pio.write_parquet(pio.join(layout.status(y), "part-00000.parquet"), _status_table(statuses.get(y, [])))
        year_manifests[y] = _finish_year(cfg, layout, y, tic, statuses.get(y, []), by_year.get(y, {}), time.time() - t)
    if statuses.get(None):
        pio.write_parquet(pio.join(layout.table("candidates"), UNASSIGNED, "part-00000.parquet"), _candidate_table(candidates[None]))
        pio.write_parquet(pio.join(layout.table("status"), UNASSIGNED, "part-00000.parquet"), _status_table(statuses[None]))
    n_pool = sum(len(v) for v in statuses.values())
    if n_pool != len(seen):
        raise RuntimeError(f"{len(seen)} pool samples but {n_pool} status rows: rows were lost")
    manifest = {
        "benchmark": cfg.benchmark, "year_range": spec.year_range, "time_steps": spec.time_steps_text(),
        "config": cfg.output_config(), "config_hash": hashlib.sha256(json.dumps(cfg.output_config(), sort_keys=True).encode()).hexdigest()[:16],
        "pool_samples": n_pool, "not_in_tic_uids": len(statuses.get(None, [])),
        "years": {str(y): m for y, m in year_manifests.items()}, "code_version": code_version(),
    }
    pio.write_json(layout.manifest, manifest)
    index = build_index(layout)
    _print_summary(cfg, tic, year_manifests, statuses, time.time() - t0)
    print(f"  shards:   {pio.display(pio.join(layout.variant(cfg.default_variant), 'train'))}")
    print(f"  index:    {pio.display(index)}")
    return manifest


def _first_pass(cfg: PoolBuildConfig, shards, tic, lid, years: tuple[int, ...]):
    """Pass 1 (metadata and tars, no image kept): every pool sample's year, split and status.
    Returns (kept samples by year, pool shard and uid; status rows by year; candidate rows by
    year; the uids seen), with year None for samples outside TiC's uid files."""
    by_year: dict[int, dict[str, dict[str, dict]]] = collections.defaultdict(lambda: collections.defaultdict(dict))
    statuses: dict[int | None, list[dict]] = collections.defaultdict(list)
    candidates: dict[int | None, list[dict]] = collections.defaultdict(list)
    seen: set[str] = set()
    from tqdm import tqdm

    for shard in tqdm(shards, desc="pool shards", unit="shard", disable=len(shards) < 20):
        rows = dc.read_pool_metadata(shard)
        images, problem = dc.read_pool_images(shard)
        uids = [row["uid"] for row in rows]
        listed, best = tic.lookup(uids), tic.in_bestpool(uids)
        for i, row in enumerate(rows):
            if row["uid"] in seen:
                raise InputError(f"{shard.parquet}: uid {row['uid']} is in the pool twice")
            seen.add(row["uid"])
            r = assign(row, tic, listed.get(row["uid"]), images.get(row["uid"]), problem, years)
            candidates[r["year"]].append(candidate_row(r, shard, i))
            if not r["drop"]:
                r = {**r, **sample_row(r, images[row["uid"]], cfg, row["uid"] in best, lid)}
                by_year[r["year"]][shard.name][r["uid"]] = r
            statuses[r["year"]].append(status_row(r, cfg.default_variant))
        del images
    return by_year, statuses, candidates, seen


def _written_variants(cfg: PoolBuildConfig) -> tuple[str, ...]:
    return tuple(dict.fromkeys(cfg.write_variants + (("bestpool",) if cfg.bestpool_uids else ())))


def _write_years(cfg: PoolBuildConfig, layout: Layout, shards: list, by_year: dict, years) -> None:
    """One Beam job for every year: the variants' training shards (the reshard stage, DataComp's
    ``<uid>-<j>`` keys), the two evaluation sets per year (clip_benchmark layout) and the
    metadata per (year, pool shard), with the default variant's shard and key."""
    classnames, templates = class_list("imagenet")
    shard_of = {s.name: s for s in shards}
    written = _written_variants(cfg)
    targets = {(v, y): (layout.train_shards(v, y), {"variant": v, "year": y, "benchmark": cfg.benchmark, "keys": "uid",
                                                    "source": SOURCE})
               for v in written for y in years}
    by_shard: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for y in years:
        for name, rows_ in by_year.get(y, {}).items():
            by_shard[name].update(rows_)
    with pipeline_options(cfg.runner, job_name="tic-pool") as opts:
        with beam.Pipeline(options=opts) as p:
            rows = (p | "Shards" >> beam.Create(sorted(by_shard))  # each pool tar is read once, for every year
                    | "Read" >> beam.FlatMap(lambda name: _rows_with_images(shard_of[name], by_shard[name])))
            placed = rows | "Write" >> rs.WriteVariantDirs(targets, lambda r: r["year"], rs.ReshardConfig(cfg.samples_per_shard, keys="uid"))
            for kind, pick in (("retrieval", _is_retrieval), ("classification", _is_classification)):
                picked = rows | f"Eval_{kind}" >> beam.Filter(pick) | f"EvalKey_{kind}" >> beam.Map(lambda r: (r["year"], r))
                empty = p | f"EvalYears_{kind}" >> beam.Create([(y, None) for y in years])
                _ = ((picked, empty) | f"EvalAll_{kind}" >> beam.Flatten() | f"EvalGroup_{kind}" >> beam.GroupByKey()
                     | f"WriteEval_{kind}" >> beam.Map(
                         lambda kv, k: write_eval_sets([r for r in kv[1] if r is not None],
                                                       [layout.eval_set(v, k, kv[0]) for v in written], k, classnames, templates),
                         kind))
            default = cfg.default_variant
            where = placed | "Default" >> beam.Filter(lambda kv: kv[1][0] == default)
            by_uid = rows | "ByUid" >> beam.Map(lambda r: (r["uid"], r))
            _ = ({"row": by_uid, "at": where} | "Join" >> beam.CoGroupByKey()
                 | "Place" >> beam.Map(_place)
                 | "ByPoolShard" >> beam.Map(lambda r: ((r["year"], r["pool_shard"]), r)) | "GroupMeta" >> beam.GroupByKey()
                 | "WriteMetadata" >> beam.Map(lambda kv: _write_metadata(layout, kv[0][0], kv[0][1], list(kv[1]))))


def _place(kv) -> dict:
    _, g = kv
    row = dict(g["row"][0])
    at = list(g["at"])
    row["shard"], row["key"] = (at[0][1], at[0][2]) if at else (None, None)
    return row


def _is_retrieval(r: dict) -> bool:
    return r["split"] == "eval_retrieval"


def _is_classification(r: dict) -> bool:  # a DataCompNet uid, also when the retrieval set holds it too
    return r["label"] is not None and r["split"] != "train"


def _candidate_table(rows: list[dict]):
    return schema.to_table(sorted(rows, key=lambda r: r["uid"]), schema.CANDIDATE)


def _status_table(rows: list[dict]):
    return schema.to_table(sorted((schema.project(r, schema.STATUS) for r in rows), key=lambda r: r["uid"]), schema.STATUS)


def _write_metadata(layout: Layout, year: int, pool_shard: str, rows: list[dict]) -> int:
    rows = sorted((schema.project(r, schema.DATACOMP_SAMPLE) for r in rows), key=lambda r: r["uid"])
    pio.write_parquet(pio.join(layout.metadata(year), f"{pool_shard}.parquet"), schema.to_table(rows, schema.DATACOMP_SAMPLE))
    return len(rows)


def _finish_year(cfg: PoolBuildConfig, layout: Layout, year: int, tic: TicInputs, status: list[dict],
                 groups: dict, seconds: float) -> dict:
    rows = [r for g in groups.values() for r in g.values()]
    splits = collections.Counter(r["split"] for r in rows)
    variants = {}
    for v in _written_variants(cfg):
        sizes_path = pio.join(layout.train_shards(v, year), "sizes.json")
        variants[v] = int(sum(pio.read_json(sizes_path).values())) if pio.exists(sizes_path) else 0
    dropped = collections.Counter(s["reason"].split(":")[0] for s in status if s["status"] == "dropped")
    files = sorted(f for d in (layout.metadata(year), layout.status(year), layout.train_shards(cfg.default_variant, year))
                   for f in pio.glob(pio.join(d, "*")))
    manifest = {
        "year": year, "source": SOURCE, "config_hash": hashlib.sha256(json.dumps(cfg.output_config(), sort_keys=True).encode()).hexdigest()[:16],
        "seconds": round(seconds, 2), "empty": not variants.get(cfg.default_variant),
        "counts": {
            "listed_in_uid_files": tic.listed.get(year, 0),
            "sizes_json": (tic.sizes or {}).get(str(year)),
            "candidates": len(status), "kept": sum(1 for s in status if s["status"] == "kept"),
            "dropped_by_reason": dict(dropped.most_common()),
            "splits": dict(sorted(splits.items())),
            "samples": variants.get(cfg.default_variant, 0), "variants": variants,
            "eval_uids_removed_from_training": sum(1 for r in rows if r["eval_uid_in_training"]),
        },
        "content_sha256": {pio.relpath(f, layout.root): pio.sha256(f) for f in files if pio.isfile(f)},
    }
    pio.write_json(layout.year_manifest(year), manifest)
    return manifest


def _print_summary(cfg: PoolBuildConfig, tic: TicInputs, manifests: dict, statuses: dict, seconds: float) -> None:
    all_status = [s for rows in statuses.values() for s in rows]
    table = _status_table(all_status)
    print(f"\n=== TiC-DataComp from a DataComp pool: {table.num_rows} pool samples, {seconds:.1f} s")
    print(StageSummary.render_all(StageSummary.from_status_table(table, order=list(STAGES)), seconds=seconds))
    variants = list(next(iter(manifests.values()))["counts"]["variants"]) if manifests else []
    head = f"{'year':<6}{'listed':>8}{'pool rows':>11}{'train':>7}{'retr':>6}{'cls':>5}" + "".join(f"{v:>10}" for v in variants)
    print(head + "\n" + "-" * len(head))
    for y, m in manifests.items():
        c = m["counts"]
        print(f"{y:<6}{c['listed_in_uid_files']:>8}{c['candidates']:>11}{c['splits'].get('train', 0):>7}"
              f"{c['splits'].get('eval_retrieval', 0):>6}{c['splits'].get('eval_classification', 0):>5}"
              + "".join(f"{c['variants'][v]:>10}" for v in variants))
    print(f"not in any uid file: {len(statuses.get(None, []))} pool samples (status year null, reason not_in_tic_uids)")
