"""Evaluation images as near-duplicate references, so no training year holds a copy of them.

A user-supplied evaluation set is a WebDataset (a directory of tars such as clip_benchmark's
``<set>/test/*.tar``, or a tar glob) or an image folder (``<root>/<class>/<image>``). Each image
is decoded, resized and hashed exactly as pool images are (``pipelines.resize``), so the two
hashes are comparable; it becomes an ``Item`` that orders before every sample and whose origin
is the set's name. The dedup stage then drops matching samples as ``eval_overlap:<name>``.
"""
from __future__ import annotations

import os

from pipelines import io as pio
from pipelines import neardup
from pipelines.resize import ResizeConfig, resize_image
from pipelines.sinks import webdataset as wds

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def parse_eval_set(spec: str) -> tuple[str, str]:
    """``name=path`` -> (name, path); a bare path is named after its last directory."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, os.path.basename(os.path.normpath(spec))
    if not name or not path:
        raise ValueError(f"--eval-set must be NAME=PATH, got {spec!r}")
    return name, path


def iter_images(path: str):
    if os.path.isdir(path):
        tars = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".tar"))
        if not tars:
            for d, _, fs in sorted(os.walk(path)):
                for f in sorted(fs):
                    if f.lower().endswith(IMAGE_EXTS):
                        with open(os.path.join(d, f), "rb") as fh:
                            yield os.path.relpath(os.path.join(d, f), path), fh.read()
            return
    else:
        tars = pio.glob(path)
    if not tars:
        raise FileNotFoundError(f"evaluation set {path}: no tars and no images found")
    for t in tars:
        for s in wds.iter_samples(t):
            for ext, data in s.items():
                if ext != "key" and f".{ext}".lower().endswith(IMAGE_EXTS):
                    yield f"{os.path.basename(t)}/{s['key']}.{ext}", data


def eval_items(name: str, path: str, resize: ResizeConfig, cfg: neardup.NearDupConfig) -> tuple[list[neardup.Item], int]:
    """(items, number of images that could not be decoded) of one evaluation set."""
    items, bad = [], 0
    for key, data in iter_images(path):
        r = resize_image(data, resize)
        if r.reason:
            bad += 1
            continue
        items.append(neardup.Item((0, name, key), f"{name}:{key}", neardup.parse_phash(r.phash), name))
    return items, bad


def load_eval_sets(specs, resize: ResizeConfig, cfg: neardup.NearDupConfig) -> tuple[list[neardup.Item], dict]:
    items, report = [], {}
    for spec in specs:
        name, path = parse_eval_set(spec)
        its, bad = eval_items(name, path, resize, cfg)
        items += its
        report[name] = {"path": path, "images": len(its), "undecodable": bad}
        print(f"eval set {name}: {len(its)} images hashed from {path}" + (f" ({bad} undecodable, skipped)" if bad else ""))
    return items, report
