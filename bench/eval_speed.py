"""Evaluation speed: the evaluator's embedding path against a plain batched torch loop.

Both embed the same held-out retrieval set (images + captions) with the same model
(tic-tiny-32) and batch size, decoding and preprocessing every image; the evaluator goes
through its set reader and ``Embedder`` (cache disabled), the reference is a bare loop over
the decoded tar. Figure: evaluator images/s / plain loop images/s (target >= 0.9).
"""
from __future__ import annotations

import io
import os
import tarfile
import time

import torch
import torch.nn.functional as F
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_loop(loaded, shards, batch_size=256) -> tuple[int, float]:
    t = time.perf_counter()
    imgs, texts, n = [], [], 0
    model = loaded.model.eval()

    def flush():
        with torch.no_grad():
            F.normalize(model.encode_image(torch.stack([loaded.preprocess_val(Image.open(io.BytesIO(b)).convert("RGB")) for b in imgs])), dim=-1)
            F.normalize(model.encode_text(loaded.tokenizer(texts)), dim=-1)

    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    imgs.append(tar.extractfile(m).read())
                elif m.name.endswith(".txt"):
                    texts.append(tar.extractfile(m).read().decode())
                if len(imgs) == batch_size and len(texts) == batch_size:
                    flush()
                    n += len(imgs)
                    imgs, texts = [], []
    if imgs:
        flush()
        n += len(imgs)
    return n, time.perf_counter() - t


def main(argv=None, data_dir: str = os.path.join(REPO, "data")) -> dict:
    from eval.datasets import benchmark_sets
    from eval.embed import Embedder
    from pipelines.models import load_model

    torch.manual_seed(0)
    loaded = load_model("tic-tiny-32")
    es = sorted(benchmark_sets(data_dir)["retrieval"].items())[-1][1]
    plain_loop(loaded, es.files())  # warm up both paths once (page cache, lazy init)
    best = {"ours": 0.0, "ours_draft": 0.0, "plain": 0.0}
    for _ in range(3):
        for key, draft in (("ours", False), ("ours_draft", True)):
            emb = Embedder(loaded, "bench", None, "cpu", 256, draft=draft)
            t = time.perf_counter()
            f = emb.features(es)
            best[key] = max(best[key], f["image"].shape[0] / (time.perf_counter() - t))
        n, s = plain_loop(loaded, es.files())
        best["plain"] = max(best["plain"], n / s)
    ratio = best["ours"] / best["plain"]
    from bench import report

    report.table(["side", "img/s (best of 3)", "vs plain loop"],
                 [["evaluator (exact decoding)", best["ours"], ratio], ["evaluator --draft-decode", best["ours_draft"], best["ours_draft"] / best["plain"]],
                  ["plain batched torch loop", best["plain"], 1.0]],
                 title=f"evaluation embedding, {es.name}: {f['image'].shape[0]} images + captions (target >= 0.9x)")
    result = {"benchmark": "eval_speed", "images_per_s": best, "ratio": ratio, "draft_speedup": best["ours_draft"] / best["ours"]}
    report.save("eval_speed", result)
    return result
