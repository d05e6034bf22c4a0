"""Evaluation sets: this benchmark's per-year sets and any set in clip_benchmark's WebDataset
layout or an image-folder layout (``<root>/<class name>/<image>``), so a local ImageNet,
Flickr30k or DomainNet copy can be pointed at directly.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Iterator

from PIL import Image

from pipelines import io as pio
from pipelines.sinks import clip_benchmark
from pipelines.sinks import webdataset as wds

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_HASHES: dict = {}


@dataclass(frozen=True)
class EvalSet:
    name: str  # e.g. retrieval/2016
    kind: str  # retrieval | classification
    path: str
    layout: str  # wds | folder
    classnames: tuple[str, ...] = ()
    templates: tuple[str, ...] = ("a photo of a {c}.",)

    def files(self) -> list[str]:
        if self.layout == "wds":
            return clip_benchmark.read_eval_set(self.path)["shards"]
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(self.path) for f in fs if f.lower().endswith(IMAGE_EXTS))

    def content_hash(self) -> str:
        """Hash of the set's bytes and metadata: the key of cached embeddings (memoised per
        file list, sizes and modification times)."""
        files = self.files()
        stamp = (self.kind, self.classnames, self.templates,
                 tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files if os.path.exists(f)))
        if stamp not in _HASHES:
            _HASHES[stamp] = self._hash(files)
        return _HASHES[stamp]

    def _hash(self, files) -> str:
        h = hashlib.sha256(repr((self.kind, self.classnames, self.templates)).encode())
        for f in files:
            h.update(os.path.basename(f).encode())
            with pio.open_read(f) as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:20]


def open_set(path: str, name: str | None = None) -> EvalSet:
    """A clip_benchmark WebDataset directory or an image folder."""
    name = name or os.path.basename(os.path.normpath(path))
    if pio.exists(pio.join(path, clip_benchmark.SPLIT, "nshards.txt")):
        info = clip_benchmark.read_eval_set(path)
        kind = info["dataset_type"]
        if kind not in ("retrieval", "classification"):
            raise ValueError(f"{path}: dataset_type {kind!r} is not supported (retrieval or classification)")
        return EvalSet(name, kind, path, "wds", tuple(info["classnames"] or ()),
                       tuple(info["templates"] or ("a photo of a {c}.",)))
    if os.path.isdir(path):
        classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        if not classes:
            raise FileNotFoundError(f"{path}: neither a clip_benchmark set (test/nshards.txt) nor an image folder")
        return EvalSet(name, "classification", path, "folder", tuple(c.replace("_", " ") for c in classes))
    raise FileNotFoundError(f"evaluation set {path} does not exist")


def samples(es: EvalSet) -> Iterator[tuple[bytes, object]]:
    """(image bytes, caption list or class id) in a fixed order."""
    if es.layout == "folder":
        dirs = sorted(d for d in os.listdir(es.path) if os.path.isdir(os.path.join(es.path, d)))
        for label, d in enumerate(dirs):
            for f in sorted(os.listdir(os.path.join(es.path, d))):
                if f.lower().endswith(IMAGE_EXTS):
                    with open(os.path.join(es.path, d, f), "rb") as fh:
                        yield fh.read(), label
        return
    for shard in es.files():
        for s in wds.iter_samples(shard):
            yield _pack(s, es.kind)


def _pack(s: dict, kind: str):
    img = next(s[e] for e in ("webp", "png", "jpg", "jpeg") if e in s)
    if kind == "retrieval":
        return img, [t for t in s["txt"].decode().splitlines() if t.strip()] or [""]
    return img, int(s["cls"])


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def benchmark_sets(data_dir: str, variant: str = "basic", benchmark: str = "tic-datacomp") -> dict[str, dict[int, EvalSet]]:
    """{kind: {year: set}} of a built benchmark's held-out sets."""
    from benchmark_builder.layout import Layout

    layout = Layout(data_dir, benchmark)
    out: dict = {"retrieval": {}, "classification": {}}
    for kind in out:
        for d in pio.glob(pio.join(layout.variant(variant), "eval", kind, "*")):
            year = os.path.basename(d)
            if year.isdigit() and pio.exists(pio.join(d, clip_benchmark.SPLIT, "nshards.txt")):
                if not clip_benchmark.read_eval_set(d)["count"]:  # an empty year holds nothing to evaluate
                    print(f"evaluation set {kind}/{year}: 0 samples, skipped")
                    continue
                out[kind][int(year)] = open_set(d, f"{kind}/{year}")
    if not out["retrieval"] and not out["classification"]:
        raise FileNotFoundError(f"no evaluation sets under {layout.variant(variant)}/eval: build the benchmark first")
    return out
