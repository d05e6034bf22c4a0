"""Class lists for the per-year classification sets (TiC-DataComp-Net style).

``synthetic-web``: the embedded web's concept names, so its classification sets label what its
captions name. ``imagenet``: the 1,000 ImageNet-1k class names and OpenAI's 80 zero-shot
templates as shipped inside open_clip (``open_clip.zero_shot_metadata``), for real crawls.
A user list is a text file with one class name per line.
"""
from __future__ import annotations

import os

SIMPLE_TEMPLATES = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "an image of a {c}.",
    "a photo of the {c}.",
    "a close-up photo of a {c}.",
)


def class_list(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, zero-shot templates) for a class list name or a path to a names file."""
    if name == "synthetic-web":
        from benchmark_builder.synthetic_web.concepts import CLASS_NAMES

        return tuple(CLASS_NAMES), SIMPLE_TEMPLATES
    if name == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

        return tuple(IMAGENET_CLASSNAMES), tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
    if os.path.exists(name):
        with open(name) as f:
            names = tuple(line.strip() for line in f if line.strip())
        if not names:
            raise ValueError(f"class list {name} is empty")
        return names, SIMPLE_TEMPLATES
    raise ValueError(f"unknown class list {name!r}: use synthetic-web, imagenet or a file with one class name per line")
