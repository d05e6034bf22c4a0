"""Embeddings of an evaluation set, computed once per (checkpoint, set) and cached on disk.

Every task that shares images (a year's retrieval set, the static suite built from the yearly
classification sets) reuses the same cached features; re-running an evaluation computes only
what is new. The cache key is (checkpoint content hash, eval set content hash).

Decoding and preprocessing do not depend on the checkpoint, only on the preprocessing, so the
preprocessed pixels of a set are cached too (float16, keyed by set hash and the transform's
description) and shared by every checkpoint and run: a run of T checkpoints decodes each
image once, not T times. Decoding is exact by default (full-size decode, then the model's
preprocessing), as clip_benchmark does, on a thread pool; ``draft=True`` (``--draft-decode``)
uses libjpeg's draft mode instead (DCT-domain downscaling to no less than the model's input
size): faster on large JPEGs, but not the pixels clip_benchmark sees. The mode is part of both
cache keys.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from eval.datasets import EvalSet, samples
from pipelines.models.encode import encode_images, encode_texts, zero_shot_classifier


def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


class Embedder:
    def __init__(self, loaded, model_key: str, cache_dir: str | None, device: str = "cpu", batch_size: int = 256,
                 pixel_cache_dir: str | None = None, threads: int | None = None, draft: bool = False):
        self.loaded, self.model_key, self.cache_dir = loaded, model_key, cache_dir
        self.pixel_cache_dir = pixel_cache_dir
        self.threads = threads or min(8, os.cpu_count() or 1)
        size = loaded.image_size
        self.draft_size = size if draft else None
        self.device, self.batch_size = device, batch_size
        self.model = loaded.model.to(device).eval()
        self.computed = 0  # sets embedded (not from cache) by this embedder
        self.images_embedded = 0

    def _cache_path(self, es: EvalSet, what: str) -> str | None:
        if not self.cache_dir:
            return None
        mode = "" if self.draft_size else "_exact"  # caches written before exact decoding were draft-mode
        return os.path.join(self.cache_dir, f"{self.model_key}_{es.content_hash()}_{what}{mode}.pt")

    def _preprocess(self, data: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(data))
        if self.draft_size:
            img.draft("RGB", (self.draft_size, self.draft_size))
        return self.loaded.preprocess_val(img.convert("RGB"))

    def pixels(self, images: list[bytes]) -> torch.Tensor:
        with ThreadPoolExecutor(self.threads) as pool:
            return torch.stack(list(pool.map(self._preprocess, images)))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_images(self.model, pixels, self.device, self.batch_size)

    def features(self, es: EvalSet) -> dict:
        """{"image": [N, D], "text": [M, D], "text_to_image": [M]} or {"image", "labels"}."""
        path = self._cache_path(es, "features")
        if path and os.path.exists(path):
            return torch.load(path, weights_only=True)
        px, texts, t2i, labels = self._set_pixels(es)
        out = {"image": self.encode_pixels(px)}
        self.images_embedded += out["image"].shape[0]
        if es.kind == "retrieval":
            out["text"] = encode_texts(self.model, self.loaded.tokenizer, texts, self.device, self.batch_size)
            out["text_to_image"] = torch.tensor(t2i, dtype=torch.long)
        else:
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        self.computed += 1
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            torch.save(out, tmp)
            os.replace(tmp, path)
        return out

    def _set_pixels(self, es: EvalSet):
        """Preprocessed images (float16) plus captions or labels of a set, cached across checkpoints."""
        mode = "" if self.draft_size else "|exact"
        key = hashlib.sha256(f"{es.content_hash()}|{self.loaded.preprocess_val}{mode}".encode()).hexdigest()[:24]
        path = os.path.join(self.pixel_cache_dir, f"{key}.pt") if self.pixel_cache_dir else None
        if path and os.path.exists(path):
            c = torch.load(path, weights_only=True)
            return c["pixels"], c["texts"], c["t2i"], c["labels"]
        images, texts, t2i, labels, chunks = [], [], [], [], []
        for i, (img, target) in enumerate(samples(es)):
            images.append(img)
            if es.kind == "retrieval":
                texts += target
                t2i += [i] * len(target)
            else:
                labels.append(target)
            if len(images) == 1024:
                chunks.append(self.pixels(images).half())
                images = []
        if images:
            chunks.append(self.pixels(images).half())
        px = torch.cat(chunks) if chunks else torch.empty(0)
        if path:
            os.makedirs(self.pixel_cache_dir, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            torch.save({"pixels": px, "texts": texts, "t2i": t2i, "labels": labels}, tmp)
            os.replace(tmp, path)
        return px, texts, t2i, labels

    def classifier(self, classnames, templates) -> torch.Tensor:
        return zero_shot_classifier(self.model, self.loaded.tokenizer, classnames, templates, self.device)
