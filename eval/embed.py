"""Embeddings of an evaluation set, computed once per (checkpoint, set) and cached on disk.

Every task that shares images (a year's retrieval set, the static suite built from the yearly
classification sets) reuses the same cached features; re-running an evaluation computes only
what is new. The cache key is (checkpoint content hash, eval set content hash).
"""
from __future__ import annotations

import hashlib
import os

import torch
import torch.nn.functional as F

from eval.datasets import EvalSet, decode, samples
from eval.tasks import zero_shot_classifier


def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


class Embedder:
    def __init__(self, loaded, model_key: str, cache_dir: str | None, device: str = "cpu", batch_size: int = 256):
        self.loaded, self.model_key, self.cache_dir = loaded, model_key, cache_dir
        self.device, self.batch_size = device, batch_size
        self.model = loaded.model.to(device).eval()
        self.computed = 0  # sets embedded (not from cache) by this embedder
        self.images_embedded = 0

    def _cache_path(self, es: EvalSet, what: str) -> str | None:
        if not self.cache_dir:
            return None
        return os.path.join(self.cache_dir, f"{self.model_key}_{es.content_hash()}_{what}.pt")

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        batch = torch.stack([self.loaded.preprocess_val(decode(b)) for b in images]).to(self.device)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.loaded.tokenizer(texts).to(self.device)).float(), dim=-1).cpu()

    def features(self, es: EvalSet) -> dict:
        """{"image": [N, D], "text": [M, D], "text_to_image": [M]} or {"image", "labels"}."""
        path = self._cache_path(es, "features")
        if path and os.path.exists(path):
            return torch.load(path, weights_only=True)
        imgs, texts, t2i, labels, feats = [], [], [], [], []
        for i, (img, target) in enumerate(samples(es)):
            imgs.append(img)
            if es.kind == "retrieval":
                texts += target
                t2i += [i] * len(target)
            else:
                labels.append(target)
            if len(imgs) == self.batch_size:
                feats.append(self.encode_images(imgs))
                imgs = []
        if imgs:
            feats.append(self.encode_images(imgs))
        out = {"image": torch.cat(feats) if feats else torch.empty(0, 0)}
        self.images_embedded += out["image"].shape[0]
        if es.kind == "retrieval":
            out["text"] = torch.cat([self.encode_texts(texts[s:s + self.batch_size]) for s in range(0, len(texts), self.batch_size)])
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

    def classifier(self, classnames, templates) -> torch.Tensor:
        return zero_shot_classifier(self.model, self.loaded.tokenizer, list(classnames), list(templates), self.device).cpu()
