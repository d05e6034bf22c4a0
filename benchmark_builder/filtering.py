"""CLIP-based filter variants over the downloaded pool: ``clip_score``, ``image_based``,
``bestpool`` (= clip_score ∩ image_based), with DataComp's semantics, written as uid sets and
resharded; and the per-year audit of what each filter keeps.

1. The filter model: ``--model`` (any ``pipelines.models`` spec: ``ViT-L-14:openai``,
   a local checkpoint, a Hugging Face folder). Without one, the default: a small CLIP trained on
   the earliest time step only by the trainer's job ``python -m training filter-model``
   (``training/filter_model.py``), cached under the layout's ``filter-model/<key>/`` and found
   here by ``default_filter_model``. The builder never trains it: ``make filter`` and
   ``make build-tic-datacomp FILTER=...`` run the job between the build and the filters.
2. Scoring: the Beam ``RunInference`` stage of ``pipelines.transforms.clip_score`` over every
   deduplicated pool sample of the chosen years -> ``clip/year=YYYY/<shard>.npz`` + metadata
   ``clip_score``/``clip_model``.
3. ``clip_score``: keep samples whose score is at least ``clip_threshold``, or, with
   ``clip_fraction``, the top fraction of the whole pool of the chosen years (DataComp computes
   the percentile over the whole pool, not per shard). ``image_based``: k-means (faiss) over
   the image embeddings of the pool's samples that pass DataComp's caption filter
   (``pipelines.transforms.filter.caption_reason``: English by fastText, more than 1 token, more
   than 5 characters) with ``clusters`` centroids (DataComp: 100k); the target
   clusters are the nearest centroids of a reference image set (ImageNet-1k train images for
   real data; by default, fresh renders of the default input's concepts in ``reference_concepts``:
   ``benchmark_builder.inputs.default_input().reference_images``); keep samples that pass the caption filter and whose nearest centroid
   is a target (DataComp applies the caption filter before clustering and again before
   selection, in ``image_based`` and in ``bestpool``; ``clip_score`` alone has no caption
   filter, and its top-fraction threshold is taken over the whole pool). Held-out eval
   samples are never in a training variant (the resharder excludes them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

from benchmark_builder.inputs import default_input
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines import schema
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.safe_inputs import InputError

CLIP_VARIANTS = ("clip_score", "image_based", "bestpool")
DEFAULT_FILTER_MODEL = "tic-tiny-32"  # the preset the default filter model is trained from
EARLY_CONCEPTS = ("circle", "square", "triangle", "cross", "ring", "diamond", "stripes")


@dataclass
class ClipFilterConfig:
    data_dir: str = "./data"
    benchmark: str = "tic-datacomp"
    filter_model: str = ""  # model spec; "" -> the cached default (default_filter_model)
    years: tuple[int, ...] = ()  # () -> every built year
    clip_threshold: float | None = None
    clip_fraction: float = 0.3  # DataComp's CLIP-score filter for bestpool keeps the top 30%
    clusters: int = 256
    reference: str = ""  # image folder or WebDataset of reference images; "" -> renders of the default input's concepts
    reference_concepts: tuple[str, ...] = EARLY_CONCEPTS
    reference_per_concept: int = 8
    device: str = "cpu"
    batch_size: int = 256
    seed: int = 0
    filter_model_samples: int = 32768  # training budget of the default filter model (filter_model_key)
    runner: RunnerConfig = dataclasses.field(default_factory=RunnerConfig)


def filter_model_key(data_dir: str, benchmark: str, seed: int, samples: int) -> tuple[list[str], str]:
    """(the trainer's options, cache key) of the default filter model: ``DEFAULT_FILTER_MODEL``
    trained on ``samples`` of the earliest time step. The key hashes the options as the trainer's
    command line spells them (``training.filter_model`` trains with exactly these), so the builder
    finds the model the trainer cached without importing the trainer."""
    args = ["--protocol", "sequential", "--max-steps", "1", "--samples-per-step", str(samples),
            "--model", DEFAULT_FILTER_MODEL, "--seed", str(seed), "--data-dir", data_dir, "--benchmark", benchmark]
    return args, hashlib.sha256(json.dumps(args).encode()).hexdigest()[:12]


def default_filter_model(cfg: ClipFilterConfig, must_exist: bool = True) -> str:
    """The model spec of the cached default filter model; InputError (one line, naming the job
    that trains it) when it has not been trained (``must_exist=False``, a dry run: not looked for)."""
    _, key = filter_model_key(cfg.data_dir, cfg.benchmark, cfg.seed, cfg.filter_model_samples)
    ckpt = Layout(cfg.data_dir, cfg.benchmark).filter_model_checkpoint(key)
    if must_exist and not pio.exists(ckpt):
        raise InputError(
            f"no filter model: pass --model SPEC (e.g. ViT-L-14:openai), or train the default on the built earliest "
            f"time step first: python -m training filter-model --data-dir {cfg.data_dir} --benchmark {cfg.benchmark} "
            f"(make filter runs both)")
    return f"{DEFAULT_FILTER_MODEL}:{ckpt}"


def check_filter_model(spec: str) -> str:
    """The model spec to score with, loaded once here so that a bad one fails now, with the
    loader's message, not inside a Beam worker."""
    if not spec:
        raise ValueError("no filter model: pass --model (e.g. ViT-L-14:openai), or train the default first "
                         "(python -m training filter-model)")
    from pipelines.models import load_model

    load_model(spec)
    return spec


def score_job(cfg: ClipFilterConfig, layout: Layout, spec: str, files: dict[int, list[str]]) -> None:
    """The scoring job: RunInference with ``spec`` over the pool of ``files`` (year -> metadata
    files; a dry run passes their globs unexpanded), embeddings under ``layout.clip()``."""
    from pipelines.transforms import clip_score as cs  # Beam's RunInference: imported when scoring

    handler = cs.ClipModelHandler(spec, cfg.device, cfg.batch_size)
    with pipeline_options(cfg.runner, job_name="tic-clip-score") as opts:
        with beam.Pipeline(options=opts) as p:
            _ = p | "Score" >> cs.ScorePool(files, {y: layout.pool(y) for y in files}, layout.clip(), handler, spec)


def dry_run(cfg: ClipFilterConfig, variants=CLIP_VARIANTS) -> dict:
    """Build and submit the filter's Beam jobs with ``--dry_run`` (validates Dataflow jobs
    offline): the scoring job and one reshard job per variant. Nothing is read or written and no
    model is loaded: the metadata globs go into the graphs unexpanded (as the build's dry run),
    the years are ``cfg.years`` or the benchmark's, and the selection, computed between the jobs
    from the scores, is empty."""
    from benchmark_builder.reshard import reshard_job
    from benchmark_builder.specs import resolve_spec

    layout = Layout(cfg.data_dir, cfg.benchmark)
    years = list(cfg.years) or list(resolve_spec(cfg.benchmark).years)
    files = {y: [pio.join(layout.metadata(y), "*.parquet")] for y in years}
    score_job(cfg, layout, cfg.filter_model, files)
    for v in variants:
        reshard_job(layout, v, files, {}, cfg.runner)
    print(f"dry run: {1 + len(variants)} job graphs (CLIP scores, {', '.join(variants)}; years {years[0]}..{years[-1]}) "
          f"built and validated for {cfg.runner.runner}; nothing ran")
    return {"dry_run": True, "jobs": 1 + len(variants)}


def score_pool(cfg: ClipFilterConfig, layout: Layout, spec: str, years: list[int]) -> None:
    from pipelines.transforms import clip_score as cs  # Beam's RunInference: imported when scoring

    marker = layout.clip_marker
    want = {"model": spec, "years": years}
    if pio.exists(marker) and pio.read_json(marker) == want:
        print("clip scores: up to date")
        return
    t = time.time()
    score_job(cfg, layout, spec, {y: pio.glob(pio.join(layout.metadata(y), "*.parquet")) for y in years})
    n = sum(len(cs.load_embeddings(pio.glob(pio.join(layout.clip(y), "*.npz")))["uid"]) for y in years)
    print(f"clip scores: {n} samples scored with {spec} in {time.time() - t:.1f} s ({n / max(time.time() - t, 1e-9):.0f} samples/s)")
    pio.write_json(marker, want)


def reference_embeddings(cfg: ClipFilterConfig, spec: str) -> np.ndarray:
    from pipelines.models import load_model  # torch and open_clip load only when a CLIP filter runs

    loaded = load_model(spec, device=cfg.device)
    loaded.model.eval()
    if cfg.reference:
        import io

        from PIL import Image

        from benchmark_builder.decontaminate import iter_images

        images = [loaded.preprocess_val(Image.open(io.BytesIO(b)).convert("RGB")) for _, b in iter_images(cfg.reference)]
        if not images:
            raise ValueError(f"reference set {cfg.reference} holds no images")
        return _embed(loaded, images, cfg)
    renders = default_input().reference_images(cfg.reference_concepts, cfg.reference_per_concept, cfg.seed)
    return _embed(loaded, [loaded.preprocess_val(im) for im in renders], cfg)


def _embed(loaded, images, cfg) -> np.ndarray:
    from pipelines.models.encode import encode_images

    return encode_images(loaded.model, images, cfg.device, cfg.batch_size).numpy()


def select(scores: np.ndarray, assign: np.ndarray, targets, clip_threshold: float | None = None,
           clip_fraction: float = 0.3, caption_ok: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """DataComp's selection over the whole pool: (threshold, keep by CLIP score, keep by image
    cluster). The threshold is ``clip_threshold`` or the (1 - fraction) quantile of all the pool's
    scores (numpy's linear interpolation), kept if score >= threshold; image-based keeps samples
    that pass the caption filter (``caption_ok``; all when None) and whose nearest centroid is a
    target; bestpool is ``keep_score & keep_image``."""
    if clip_threshold is None and not 0.0 < clip_fraction <= 1.0:
        raise ValueError(f"clip_fraction must be in (0, 1], got {clip_fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    threshold = float(clip_threshold) if clip_threshold is not None else float(np.quantile(scores, 1.0 - clip_fraction))
    keep_image = np.isin(np.asarray(assign), list(targets))
    if caption_ok is not None:
        keep_image &= np.asarray(caption_ok, dtype=bool)
    return threshold, scores >= threshold, keep_image


def caption_mask(uids, rows: list[dict]) -> np.ndarray:
    """DataComp's caption filter for each of ``uids`` (rows: metadata with uid, text, language)."""
    from pipelines.transforms.filter import caption_reason

    by_uid = {r["uid"]: r for r in rows}
    return np.array([caption_reason(by_uid[u]) is None for u in uids], dtype=bool)


def train_kmeans(x_pool: np.ndarray, caption_ok: np.ndarray, clusters: int, seed: int = 0):
    """Spherical k-means (faiss) over the pool samples that pass the caption filter: DataComp
    computes its pool centroids from caption-filtered embeddings (``image_based_clustering.py``,
    caption filtering on by default)."""
    import faiss

    x = np.ascontiguousarray(np.asarray(x_pool, dtype=np.float32)[np.asarray(caption_ok, dtype=bool)])
    km = faiss.Kmeans(x.shape[1], min(clusters, len(x)), niter=25, seed=seed + 1, spherical=True, verbose=False)
    km.train(x)
    return km


def compute_variants(cfg: ClipFilterConfig, layout: Layout, spec: str, years: list[int]) -> dict:
    from pipelines.transforms import clip_score as cs  # Beam's RunInference: imported when scoring

    emb = cs.load_embeddings([f for y in years for f in pio.glob(pio.join(layout.clip(y), "*.npz"))])
    # The filters choose training data: the pool they select from (threshold quantile, k-means) is
    # the training split; held-out eval samples are scored and clustered but never selected.
    meta = pio.read_parquet([f for y in years for f in pio.glob(pio.join(layout.metadata(y), "*.parquet"))],
                            ["uid", "split", "dedup_reason", "text", "language"]).to_pylist()
    train_uids = {r["uid"] for r in meta if not r["dedup_reason"] and (r["split"] or "train") == "train"}
    in_pool = np.array([u in train_uids for u in emb["uid"]], dtype=bool)
    n = int(in_pool.sum())
    if n == 0:
        raise RuntimeError("no scored training samples: run the scoring first")
    uids = emb["uid"][in_pool]
    scores = emb["clip_score"][in_pool]
    x_all = np.ascontiguousarray(emb["image_embedding"], dtype=np.float32)
    caption_ok = caption_mask(uids, meta)
    if not caption_ok.any():
        raise RuntimeError(f"none of the {n} scored training samples passes DataComp's caption filter "
                           "(English, more than 1 word, more than 5 characters): nothing to cluster")
    km = train_kmeans(x_all[in_pool], caption_ok, cfg.clusters, cfg.seed)
    k = km.k
    _, assign_all = km.index.search(x_all, 1)
    assign_all = assign_all[:, 0]
    assign = assign_all[in_pool]
    ref = reference_embeddings(cfg, spec)
    _, ref_assign = km.index.search(np.ascontiguousarray(ref, dtype=np.float32), 1)
    targets = sorted(set(int(c) for c in ref_assign[:, 0]))
    threshold, keep_score, keep_image = select(scores, assign, targets, cfg.clip_threshold, cfg.clip_fraction, caption_ok)
    sets = {
        "clip_score": set(uids[keep_score]),
        "image_based": set(uids[keep_image]),
        "bestpool": set(uids[keep_score & keep_image]),
    }
    cluster_of = dict(zip(emb["uid"], assign_all.tolist()))
    for y in years:  # cluster ids into the metadata (the record schema's cluster_id)
        for f in pio.glob(pio.join(layout.metadata(y), "*.parquet")):
            rows = pio.read_parquet([f]).to_pylist()
            for r in rows:
                r["cluster_id"] = cluster_of.get(r["uid"])
            pio.write_parquet(f, schema.to_table(rows, schema.SAMPLE))
    info = {"model": spec, "years": years, "pool": n, "caption_filter_kept": int(caption_ok.sum()), "clip_threshold": threshold,
            "clip_fraction": None if cfg.clip_threshold is not None else cfg.clip_fraction,
            "clusters": k, "target_clusters": targets, "reference": cfg.reference or list(cfg.reference_concepts),
            "kept": {v: len(s) for v, s in sets.items()}}
    pio.write_json(layout.clip_filters, info)
    print(f"clip_score threshold {threshold:.4f} ({info['kept']['clip_score']} of {n}); caption filter keeps "
          f"{info['caption_filter_kept']} of {n}; image_based: {len(targets)} of {k} "
          f"clusters are nearest to the reference images ({info['kept']['image_based']} samples); "
          f"bestpool {info['kept']['bestpool']}")
    return {"sets": sets, "info": info}


def run_filters(cfg: ClipFilterConfig, variants=CLIP_VARIANTS) -> dict:
    from benchmark_builder.reshard import reshard

    if cfg.runner.dry_run:
        return dry_run(cfg, variants)
    layout = Layout(cfg.data_dir, cfg.benchmark)
    years = list(cfg.years) or layout.built_years()
    if not years:
        raise FileNotFoundError(f"no built years under {layout.root}: run make build-tic-datacomp-all first")
    spec = check_filter_model(cfg.filter_model)
    score_pool(cfg, layout, spec, years)
    out = compute_variants(cfg, layout, spec, years)
    for v in variants:
        reshard(layout, v, out["sets"][v], years, cfg.runner)
    return out["info"]


def audit(data_dir: str, benchmark: str = "tic-datacomp", png: str | None = None) -> list[dict]:
    """Per filter variant and year: share of the year's deduplicated training pool kept, and the
    mean CLIP score of what is kept (TiC-CLIP's finding: a filter model trained on old data
    keeps less of the years whose concepts it never saw)."""
    from pipelines import uid as uidcodec

    layout = Layout(data_dir, benchmark)
    years = layout.built_years()
    meta = pio.read_parquet([f for y in years for f in pio.glob(pio.join(layout.metadata(y), "*.parquet"))],
                            ["uid", "year", "split", "dedup_reason", "filters", "clip_score"]).to_pylist()
    pool = [r for r in meta if not r["dedup_reason"] and (r["split"] or "train") == "train"]
    kept_by = {v: {r["uid"] for r in pool if v in (r["filters"] or [])} for v in ("none", "basic")}
    for v in CLIP_VARIANTS:
        p = pio.join(layout.variant(v), "uids.npy")
        if pio.exists(p):
            kept_by[v] = set(uidcodec.decode(uidcodec.load(p)))
    rows = []
    for v, kept in kept_by.items():
        for y in years:
            year_pool = [r for r in pool if r["year"] == y]
            k = [r for r in year_pool if r["uid"] in kept]
            scores = [r["clip_score"] for r in k if r["clip_score"] is not None]
            rows.append({"variant": v, "year": y, "pool": len(year_pool), "kept": len(k),
                         "fraction_kept": len(k) / max(1, len(year_pool)),
                         "mean_clip_score": float(np.mean(scores)) if scores else None})
    print(f"{'variant':<12}" + "".join(f"{y:>8}" for y in years) + "    (fraction of the year's pool kept)")
    for v in kept_by:
        print(f"{v:<12}" + "".join(f"{r['fraction_kept']:>8.3f}" for r in rows if r["variant"] == v))
    print(f"{'clip score':<12}" + "".join(
        f"{np.mean([x['clip_score'] for x in pool if x['year'] == y and x['clip_score'] is not None] or [np.nan]):>8.3f}"
        for y in years) + "    (mean CLIP score of the year's pool)")
    png = png or layout.report("filter_audit.png")
    _audit_chart(rows, years, png)
    pio.write_json(layout.report("filter_audit.json"), rows)
    print(f"chart: {pio.display(png)}")
    return rows


def _audit_chart(rows, years, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        axes[0].plot([r["year"] for r in rs], [r["fraction_kept"] for r in rs], marker="o", label=v)
        if any(r["mean_clip_score"] is not None for r in rs):
            axes[1].plot([r["year"] for r in rs], [np.nan if r["mean_clip_score"] is None else r["mean_clip_score"] for r in rs],
                         marker="o", label=v)
    axes[0].set_ylabel("fraction of the year's pool kept")
    axes[1].set_ylabel("mean CLIP score of kept samples")
    for ax in axes:
        ax.set_xlabel("first-seen year")
        ax.set_xticks(years)
        ax.legend(fontsize=7)
    fig.suptitle("filter bias audit", fontsize=10)
    fig.tight_layout()
    pio.save_figure(fig, png, dpi=110)
    plt.close(fig)
