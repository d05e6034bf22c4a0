"""The RunInference stages against plain batched torch loops over the same images and model.

- ``clip_score``: ``RunInference(ClipModelHandler("tic-tiny-32"))`` (pipelines/transforms/clip_score.py:
  decode, preprocess, both towers, normalised embeddings and their cosine) in a Beam pipeline
  (the local FnApiRunner, as the build runs it) against a bare loop doing the same per batch
  (same decode with ``draft``, ``preprocess_val``, tokenizer, ``encode_image``/``encode_text``).
- ``caption``: ``RunInference(HFCaptionHandler(folder))`` (pipelines/transforms/caption.py) with a
  tiny BLIP written by ``save_pretrained`` (tests/pipelines/tiny_captioners.py; random weights,
  so the figure is the stage's overhead, not a real captioner's speed) against a bare loop
  calling ``generate`` per batch; both greedy, ``--caption-tokens`` new tokens.

Images are the embedded web's pictures (benchmark_builder/synthetic_web), JPEG-encoded, in one
file that both sides read (the pipeline from a one-element ``Create`` of its path, as the build's
stages read pool shards; never the samples themselves in a ``Create``, which Beam serialises into
the pipeline's graph at a cost that grows with N and does not cancel). After one uncounted run of
each side (imports, lazy set-up of this process), each side
runs on ``N1`` and ``N2`` images, alternating, ``--repeat`` times; the marginal rate
(N2 - N1) / (t2 - t1) removes start-up (pipeline construction, model load) from both sides
(``bench.report.paired_marginal``). The figure is the median over repeats of ours / plain
(target >= 0.9), with its spread.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time


def make_samples(n: int, seed: int = 0) -> list[dict]:
    from benchmark_builder.synthetic_web.generate import caption
    from benchmark_builder.synthetic_web.images import draw, encode, image_params
    import numpy as np

    r = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = image_params(seed, i, 2016)
        img = draw(p)
        img.thumbnail((256, 256))
        out.append({"uid": f"{i:032x}", "jpg": encode(img), "text": caption(p, 2016, r, "normal")[0]})
    return out


def write_samples(samples: list[dict], path: str) -> str:
    with open(path, "wb") as f:
        pickle.dump(samples, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def read_samples(path: str, n: int) -> list[dict]:
    """The first ``n`` samples of the file: what both sides read, as the build's stages read pool
    shards (the samples never travel inside the pipeline's graph, whose size would grow with n)."""
    with open(path, "rb") as f:
        return pickle.load(f)[:n]


def _beam(path: str, n: int, handler) -> float:
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference

    from pipelines.options import RunnerConfig, pipeline_options

    t = time.perf_counter()
    with pipeline_options(RunnerConfig()) as opts:
        with beam.Pipeline(options=opts) as p:
            _ = (p | beam.Create([(path, n)]) | beam.FlatMapTuple(read_samples) | RunInference(handler)
                 | beam.combiners.Count.Globally() | beam.Map(lambda got, want=n: _check(got, want)))
    return time.perf_counter() - t


def _check(n: int, want: int) -> None:
    if n != want:
        raise RuntimeError(f"RunInference gave {n} results for {want} samples")


def plain_clip(path: str, n: int, spec: str, batch: int) -> float:
    import io

    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pipelines.models import load_model

    t = time.perf_counter()
    samples = read_samples(path, n)
    loaded = load_model(spec)
    model = loaded.model.eval()
    size = loaded.image_size

    def pixels(data):
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (size, size))
        return loaded.preprocess_val(img.convert("RGB"))

    with torch.no_grad():
        for i in range(0, len(samples), batch):
            b = samples[i:i + batch]
            img = F.normalize(model.encode_image(torch.stack([pixels(s["jpg"]) for s in b])).float(), dim=-1)
            txt = F.normalize(model.encode_text(loaded.tokenizer([s["text"] for s in b])).float(), dim=-1)
            (img * txt).sum(dim=-1).numpy()
    return time.perf_counter() - t


def plain_caption(path: str, n: int, folder: str, batch: int, max_new_tokens: int) -> float:
    from pipelines.models import load_captioner
    from pipelines.transforms.caption import caption_images

    t = time.perf_counter()
    samples = read_samples(path, n)
    loaded = load_captioner(folder)
    for i in range(0, len(samples), batch):
        caption_images(loaded, [s["jpg"] for s in samples[i:i + batch]], max_new_tokens=max_new_tokens)
    return time.perf_counter() - t


def compare(name: str, ours, plain, n1: int, n2: int, repeat: int) -> dict:
    from bench import report

    m = report.paired_marginal({"ours": ours, "plain": plain}, n1, n2, repeat, warmup=True)
    return {"stage": name, **m, "images_per_s": m["per_s"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench score", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n1", type=int, default=512)
    ap.add_argument("--n2", type=int, default=2048)
    ap.add_argument("--caption-n1", type=int, default=128)
    ap.add_argument("--caption-n2", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="RunInference max_batch_size and the plain loop's batch")
    ap.add_argument("--caption-tokens", type=int, default=8, help="max_new_tokens of both caption sides")
    ap.add_argument("--stages", default="clip_score,caption")
    a = ap.parse_args(argv)
    from pipelines.transforms.caption import HFCaptionHandler
    from pipelines.transforms.clip_score import ClipModelHandler

    results = {}
    stages = a.stages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_samples(make_samples(max(a.n2, a.caption_n2)), os.path.join(tmp, "samples.pkl"))
        if "clip_score" in stages:
            handler = ClipModelHandler("tic-tiny-32", batch_size=a.batch)
            results["clip_score"] = compare("clip_score", lambda n: _beam(path, n, handler),
                                            lambda n: plain_clip(path, n, "tic-tiny-32", a.batch), a.n1, a.n2, a.repeat)
        if "caption" in stages:
            from tests.pipelines.tiny_captioners import make_captioner

            folder = os.path.join(tmp, "captioner")
            make_captioner("blip", folder)
            handler = HFCaptionHandler(folder, batch_size=min(64, a.batch), max_new_tokens=a.caption_tokens)
            results["caption"] = compare("caption", lambda n: _beam(path, n, handler),
                                         lambda n: plain_caption(path, n, folder, min(64, a.batch), a.caption_tokens),
                                         a.caption_n1, a.caption_n2, a.repeat)
    from bench import report

    report.table(["stage", "RunInference img/s", "plain loop img/s", "RunInference / plain loop", "n1 -> n2"],
                 [[k, r["per_s"]["ours"], r["per_s"]["plain"], r["spread"], f"{r['n1']} -> {r['n2']}"]
                  for k, r in results.items()], title="marginal rates, medians over the repeats (target >= 0.9x)")
    result = {"benchmark": "score_speed", **results}
    report.save("score_speed", result)
    return result


if __name__ == "__main__":
    main()
