"""Filter stage: each variant is a rule set deciding which pool samples it keeps.

Download once, filter many times: filters never delete anything from the pool; they tag each
sample with the variants that keep it (``filters``) and give the reason a variant drops it.
``basic`` is DataComp's basic filter: English caption, more than 2 words and more than 5
characters, original image's shorter side >= 200 px, aspect ratio <= 3. ``none`` keeps every
sample that survived deduplication. CLIP-based variants (``clip_score``, ``image_based``,
``bestpool``) register here the same way.

``caption_reason`` is DataComp's caption filter (``caption_filter`` in its
``baselines/apply_filter.py``), the text-only rule its ``image_based`` baseline applies before
clustering and before selection (also inside ``image_based ∩ clip_score``): fastText says
English, more than 1 fastText token, more than 5 characters. The language is the sample's
``language`` column, written by the annotate stage with fastText lid.176 unless the build chose
``--lid langid``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import apache_beam as beam

STAGE = "filter"


@dataclass(frozen=True)
class BasicFilterConfig:
    language: str = "en"
    min_words: int = 3  # "more than 2 words"
    min_chars: int = 6  # "more than 5 characters"
    min_image_side: int = 200
    max_aspect_ratio: float = 3.0


def basic_reason(row: dict, cfg: BasicFilterConfig = BasicFilterConfig()) -> str | None:
    """First rule of DataComp's basic filter that ``row`` fails, or None if it passes."""
    text = (row.get("text") or "").strip()
    if row.get("language") != cfg.language:
        return f"caption_not_english:{row.get('language') or 'unknown'}"
    if len(text.split()) < cfg.min_words:
        return "caption_too_few_words"
    if len(text) < cfg.min_chars:
        return "caption_too_short"
    w, h = row.get("original_width") or 0, row.get("original_height") or 0
    if min(w, h) < cfg.min_image_side:
        return f"image_too_small:{cfg.min_image_side}"
    if max(w, h) / max(1, min(w, h)) > cfg.max_aspect_ratio:
        return f"aspect_ratio_above:{cfg.max_aspect_ratio:g}"
    return None


@dataclass(frozen=True)
class CaptionFilterConfig:
    language: str = "en"
    min_tokens: int = 2  # "more than 1" fastText token
    min_chars: int = 6  # "more than 5 characters"


_FASTTEXT_SPACE = re.compile("[ \n\r\t\v\f\0]+")


def fasttext_token_count(text: str) -> int:
    """``len(fasttext.tokenize(text))``: fastText splits on space, newline, CR, tab, VT, FF and
    NUL, and reads every newline as one end-of-sentence token ``</s>``."""
    return sum(1 for t in _FASTTEXT_SPACE.split(text) if t) + text.count("\n")


def caption_reason(row: dict, cfg: CaptionFilterConfig = CaptionFilterConfig()) -> str | None:
    """First rule of DataComp's caption filter that ``row`` fails, or None if it passes."""
    text = row.get("text") or ""
    if row.get("language") != cfg.language:
        return f"caption_not_english:{row.get('language') or 'unknown'}"
    if fasttext_token_count(text) < cfg.min_tokens:
        return "caption_too_few_words"
    if len(text) < cfg.min_chars:
        return "caption_too_short"
    return None


VARIANTS: dict[str, Callable[[dict], str | None]] = {
    "none": lambda row: None,
    "basic": basic_reason,
}


def apply_filters(row: dict, variants: tuple[str, ...]) -> dict:
    """Set ``filters`` (variants keeping the sample) and ``filter_reasons`` (variant -> reason)."""
    out = dict(row)
    if row.get("dedup_reason"):
        out["filters"] = []
        out["filter_reasons"] = {v: row["dedup_reason"] for v in variants}
        return out
    reasons = {}
    for v in variants:
        if v not in VARIANTS:
            raise KeyError(f"unknown filter variant {v!r}; known: {', '.join(sorted(VARIANTS))}")
        reasons[v] = VARIANTS[v](row)
    out["filters"] = [v for v in variants if reasons[v] is None]
    out["filter_reasons"] = reasons
    return out


class ApplyFilters(beam.PTransform):
    def __init__(self, variants: tuple[str, ...]):
        super().__init__()
        self.variants = tuple(variants)

    def expand(self, samples):
        variants = self.variants
        return samples | "Filters" >> beam.Map(apply_filters, variants)
