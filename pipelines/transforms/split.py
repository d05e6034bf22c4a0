"""Split stage: each year's samples -> train | eval_retrieval | eval_classification.

Deterministic and independent of any random generator state: a sample's place in the
selection order is ``sha256(f"{seed}:{purpose}:{uid}")``, so the same pool always gives the
same split, whatever the runner, the worker count or the order rows arrive in.

Rule for held-out sets (TiC-CLIP keeps its evaluation sets to high-quality pairs): a sample is
eligible when exact and near-duplicate removal kept it and the ``eligible_variant`` filter
(DataComp's ``basic`` by default: English caption of 3+ words, shorter side >= 200 px, aspect
ratio <= 3) keeps it; when a CLIP score is present, it must also reach ``min_clip_score``.
``eval_retrieval`` takes the ``retrieval_size`` eligible samples first in hash order (with
``retrieval_fraction``, as TiC-YFCC and TiC-RedCaps hold out 1%: the first
``ceil(fraction x eligible)`` in hash order);
``eval_classification`` then takes ``classification_size`` of the remaining eligible samples
whose caption names exactly one class of ``classnames``, labelled with that class id (the
TiC-DataComp-Net recipe: captions that name an ImageNet class). Everything else is ``train``;
a year with fewer eligible samples gives smaller sets, never a failure.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import apache_beam as beam

STAGE = "split"


@dataclass(frozen=True)
class SplitConfig:
    retrieval_size: int = 1000
    classification_size: int = 500
    classnames: tuple[str, ...] = ()
    eligible_variant: str = "basic"
    min_clip_score: float | None = None
    seed: int = 0
    retrieval_fraction: float | None = None  # held-out share of the eligible samples instead of retrieval_size


def first_fraction(ranked: list[tuple[str, str]], fraction: float) -> set[str]:
    """The uids of the first ``ceil(fraction x n)`` of ``(rank, uid)`` pairs in rank order."""
    import math

    return {u for _, u in sorted(ranked)[: math.ceil(fraction * len(ranked) - 1e-9)]}


def rank(uid: str, purpose: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{purpose}:{uid}".encode()).hexdigest()


_PATTERNS: dict[tuple[str, ...], list[re.Pattern]] = {}


def class_label(text: str | None, classnames: tuple[str, ...]) -> int | None:
    """Index of the single class named in ``text`` (whole words, case-insensitive, plural 's'
    allowed), or None when it names none or several."""
    if not text or not classnames:
        return None
    pats = _PATTERNS.get(classnames)
    if pats is None:
        pats = _PATTERNS[classnames] = [
            re.compile(r"\b" + re.escape(c.lower()).replace(r"\ ", r"[\s_-]+") + r"(e?s)?\b") for c in classnames
        ]
    low = text.lower()
    hits = [i for i, p in enumerate(pats) if p.search(low)]
    return hits[0] if len(hits) == 1 else None


def eligible(row: dict, cfg: SplitConfig) -> bool:
    if row.get("dedup_reason") or cfg.eligible_variant not in (row.get("filters") or []):
        return False
    if cfg.min_clip_score is not None and row.get("clip_score") is not None:
        return row["clip_score"] >= cfg.min_clip_score
    return True


def assign(row: dict, retrieval: set, classification: set, cfg: SplitConfig) -> dict:
    out = dict(row)
    out["label"] = class_label(row.get("text"), cfg.classnames)
    uid = row["uid"]
    out["split"] = "eval_retrieval" if uid in retrieval else "eval_classification" if uid in classification else "train"
    return out


class AssignSplits(beam.PTransform):
    """Samples -> samples with ``split`` and ``label``; each year's held-out sets are chosen
    among that year's samples alone (samples of several years may pass at once)."""

    def __init__(self, cfg: SplitConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, samples):
        cfg = self.cfg
        pool = samples | "Eligible" >> beam.Filter(eligible, cfg)
        ranked = pool | "RankRetrieval" >> beam.Map(lambda r: (r.get("year"), (rank(r["uid"], "retrieval", cfg.seed), r["uid"])))
        if cfg.retrieval_fraction is not None:
            retrieval = (
                ranked
                | "GroupRetrieval" >> beam.GroupByKey()
                | "RetrievalSet" >> beam.MapTuple(lambda y, pairs: (y, first_fraction(list(pairs), cfg.retrieval_fraction)))
            )
        else:
            retrieval = (
                ranked
                | "TopRetrieval" >> beam.combiners.Top.SmallestPerKey(cfg.retrieval_size)
                | "RetrievalSet" >> beam.MapTuple(lambda y, top: (y, {u for _, u in top}))
            )

        def classification_candidates(row, taken):
            if row["uid"] not in taken.get(row.get("year"), ()) and class_label(row.get("text"), cfg.classnames) is not None:
                yield row.get("year"), (rank(row["uid"], "classification", cfg.seed), row["uid"])

        classification = (
            pool
            | "ClassCandidates" >> beam.FlatMap(classification_candidates, beam.pvalue.AsDict(retrieval))
            | "TopClassification" >> beam.combiners.Top.SmallestPerKey(cfg.classification_size)
            | "ClassificationSet" >> beam.MapTuple(lambda y, top: (y, {u for _, u in top}))
        )
        return samples | "Assign" >> beam.Map(
            lambda r, ret, cls: assign(r, ret.get(r.get("year"), set()), cls.get(r.get("year"), set()), cfg),
            beam.pvalue.AsDict(retrieval), beam.pvalue.AsDict(classification),
        )
