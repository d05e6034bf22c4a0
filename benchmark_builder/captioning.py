"""Generated captions for the downloaded pool, then every variant re-written to carry them.

``--captioner`` takes:

- a Hugging Face image-to-text model (BLIP, GIT, VisionEncoderDecoder): a local folder written by
  ``save_pretrained`` or a hub id in the local cache (``hf:`` prefix optional);
- ``template:PATH``: the template captioner over an attribute table (Parquet with a ``url`` or
  ``uid`` column plus the template fields), templates from ``--templates FILE`` (one per line)
  or the defaults of ``pipelines.transforms.caption``;
- ``template:NAME`` of a named input (``benchmark_builder.inputs.NAMED``; the default,
  ``template:synthetic-web``: the embedded web's attribute table, computed from its generator:
  object, colour, scene, texture of every served image).

Captions go into the metadata (``caption_generated``) by a Beam ``RunInference`` stage; each
existing variant's training shards are then re-written with the same samples, so their
``<key>.json`` carries ``caption_generated`` next to ``text`` and the trainer can choose
``--text alt|generated|both``. A marker records the captioner, so a re-run with the same one
does nothing.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from dataclasses import dataclass

import apache_beam as beam

from benchmark_builder.inputs import NAMED, default_input
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.models import load_captioner
from pipelines.options import RunnerConfig, pipeline_options
from pipelines.sinks import webdataset as wds
from pipelines.transforms import caption as cap



@dataclass
class CaptionConfig:
    data_dir: str = "./data"
    benchmark: str = "tic-datacomp"
    captioner: str = cap.TEMPLATE_PREFIX + default_input().name
    templates: str = ""  # file, one template per line; "" -> defaults
    years: tuple[int, ...] = ()
    device: str = "cpu"
    batch_size: int = 64
    max_new_tokens: int = 30
    num_beams: int = 1
    rewrite_variants: bool = True
    runner: RunnerConfig = dataclasses.field(default_factory=RunnerConfig)


def _templates(path: str) -> tuple[str, ...]:
    if not path:
        return cap.DEFAULT_TEMPLATES
    with open(path) as f:
        out = tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))
    if not out:
        raise ValueError(f"{path}: no templates (one per line)")
    return out


def make_handler(cfg: CaptionConfig, layout: Layout):
    """The RunInference handler for ``cfg.captioner``; checks the model or table loads first."""
    if cfg.captioner.startswith(cap.TEMPLATE_PREFIX):
        source = cfg.captioner[len(cap.TEMPLATE_PREFIX):]
        templates = _templates(cfg.templates)
        if source in NAMED:
            source = NAMED[source].attribute_table(layout)
        elif not pio.exists(source):
            raise FileNotFoundError(f"attribute table {source!r} does not exist (--captioner {cfg.captioner!r})")
        handler = cap.TemplateCaptionHandler(source, templates)
        handler.load_model()  # a bad table fails here, not inside a Beam worker
        return handler, {"captioner": cfg.captioner, "templates": list(templates)}

    load_captioner(cfg.captioner)  # fail now, with the loader's message
    handler = cap.HFCaptionHandler(cfg.captioner, cfg.device, cfg.batch_size, cfg.max_new_tokens, cfg.num_beams)
    return handler, {"captioner": cfg.captioner, "max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams}


def variant_uids(layout: Layout, name: str, years: list[int]) -> tuple[collections.Counter, list[int]]:
    """The uids in a variant's training shards, and the years it has shards for."""
    uids, have = collections.Counter(), []  # a uid written twice (upsampled) stays twice
    for y in years:
        tars = pio.glob(pio.join(layout.train_shards(name, y), "*.tar"))
        if pio.exists(pio.join(layout.train_shards(name, y), "sizes.json")):
            have.append(y)
        for tar in tars:
            uids.update(json.loads(s["json"])["uid"] for s in wds.iter_samples(tar))
    return uids, have


def run_captions(cfg: CaptionConfig) -> dict:
    from benchmark_builder.index import build_index
    from benchmark_builder.reshard import reshard

    layout = Layout(cfg.data_dir, cfg.benchmark)
    years = list(cfg.years) or layout.built_years()
    if not years:
        raise FileNotFoundError(f"no built years under {layout.root}: run make build-tic-datacomp first")
    handler, want = make_handler(cfg, layout)
    want["years"] = years
    marker = layout.captions_marker
    if pio.exists(marker) and pio.read_json(marker).get("run") == want:
        print(f"captions: up to date ({cfg.captioner})")
        return pio.read_json(marker)
    files = {y: pio.glob(pio.join(layout.metadata(y), "*.parquet")) for y in years}
    t = time.time()
    per_year: dict[int, tuple[int, int]] = {}
    counts_dir = layout.caption_file("_counts")
    pio.remove(counts_dir)
    with pipeline_options(cfg.runner, job_name="tic-caption") as opts:
        with beam.Pipeline(options=opts) as p:
            counts = p | "Caption" >> cap.CaptionPool(files, {y: layout.pool(y) for y in years}, handler)
            _ = counts | "Collect" >> beam.Map(lambda kv, out=counts_dir:
                                                 pio.write_json(pio.join(out, f"{kv[0]}.json"), list(kv[1])))
    for y in years:
        c = pio.join(counts_dir, f"{y}.json")
        per_year[y] = tuple(pio.read_json(c)) if pio.exists(c) else (0, 0)
    seconds = time.time() - t
    n = sum(a for a, _ in per_year.values())
    none = sum(b for _, b in per_year.values())
    print(f"\n=== captions ({cfg.captioner}): {n + none} samples in {seconds:.1f} s "
          f"({(n + none) / max(seconds, 1e-9):.0f} samples/s)")
    print(f"{'year':>6} {'captioned':>10} {'no caption':>11}")
    for y in years:
        print(f"{y:>6} {per_year[y][0]:>10} {per_year[y][1]:>11}")
    rewritten = {}
    if cfg.rewrite_variants:
        for vdir in layout.variant_dirs():
            name = os.path.basename(vdir.rstrip("/"))
            uids, have = variant_uids(layout, name, years)
            if uids:
                rewritten[name] = reshard(layout, name, uids, have, cfg.runner, rewrite=True)["written"]
    result = {"run": want, "seconds": round(seconds, 2),
              "per_year": {str(y): {"captioned": a, "no_caption": b} for y, (a, b) in per_year.items()},
              "variants_rewritten": rewritten}
    pio.write_json(marker, result)
    if not rewritten:  # reshard rebuilt it otherwise: the metadata's new column goes into the index
        build_index(layout)
    return result
