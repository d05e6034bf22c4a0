"""Filter stage: each variant is a rule set deciding which pool samples it keeps.

Download once, filter many times: filters never delete anything from the pool; they tag each
sample with the variants that keep it (``filters``) and give the reason a variant drops it.
``basic`` is DataComp's basic filter: English caption, more than 2 words and more than 5
characters, original image's shorter side >= 200 px, aspect ratio <= 3. ``none`` keeps every
sample that survived deduplication. CLIP-based variants (``clip_score``, ``image_based``,
``bestpool``) register here the same way.
"""
from __future__ import annotations

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


VARIANTS: dict[str, Callable[[dict], str | None]] = {
    "none": lambda row: None,
    "basic": basic_reason,
}


def register_variant(name: str, rule: Callable[[dict], str | None]) -> None:
    VARIANTS[name] = rule


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
