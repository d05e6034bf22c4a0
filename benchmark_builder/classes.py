"""Class lists for the per-year classification sets (TiC-DataComp-Net style).

A named input's list (``benchmark_builder.inputs.NAMED``; ``synthetic-web``: the embedded web's
concept names, so its classification sets label what its captions name). ``imagenet``: the 1,000 ImageNet-1k class names and OpenAI's 80 zero-shot
templates as shipped inside open_clip (``open_clip.zero_shot_metadata``), for real crawls.
A user list is a text file with one class name per line.
"""
from __future__ import annotations

import os

from benchmark_builder.inputs import NAMED

SIMPLE_TEMPLATES = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "an image of a {c}.",
    "a photo of the {c}.",
    "a close-up photo of a {c}.",
)


def class_list(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, zero-shot templates) for a class list name or a path to a names file."""
    if name in NAMED:
        return NAMED[name].class_names(), SIMPLE_TEMPLATES
    if name == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

        return tuple(IMAGENET_CLASSNAMES), tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)
    if os.path.exists(name):
        with open(name) as f:
            names = tuple(line.strip() for line in f if line.strip())
        if not names:
            raise ValueError(f"class list {name} is empty")
        return names, SIMPLE_TEMPLATES
    raise ValueError(f"unknown class list {name!r}: use {', '.join(NAMED)}, imagenet or a file with one class name per line")


def class_words(name: str, classnames) -> dict[str, tuple[str, ...]]:
    """Words a caption may use for each class: a named input's synonyms, else the class name."""
    words = {c: (c,) for c in classnames}
    if name in NAMED:
        words.update({c: ws for c, ws in NAMED[name].class_words().items() if c in words})
    return words
