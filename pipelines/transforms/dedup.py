"""Dedup stage: exact duplicates by sha256, then near-duplicates by perceptual hash, within
and across years and against evaluation images.

One job may build several years; every rule below is applied to each year as if it were built
alone after the years before it, so the outputs are those of one build per year.

Samples are joined on ``sha256`` with the hashes of every earlier year's pool (the years built
before the job from their metadata, the years of the same job from their samples). An image
already seen in an earlier year is a duplicate of that year's earliest sample; within the year
the earliest ``first_seen`` wins (ties by uid). Dropped samples keep their row in the metadata
with ``duplicate_of:<uid>`` as their status reason; the kept one records the uids of its
duplicates in ``duplicates``.

Near-duplicates (``NearDedup``): the survivors of the exact pass, the kept samples of years
built before the job and the evaluation images are keyed by LSH bands of their pHash
(``pipelines.neardup``); each bucket yields, per sample, every earlier item it matches, and
``resolve_years`` takes the years in order: the earliest match a year may use (an evaluation
image, a sample of its own year, a sample an earlier year kept) wins and chains resolve to
their root. A sample whose root is a training sample is dropped as ``near_duplicate_of:<uid>``;
one whose root is an evaluation image (a held-out set of an earlier year, or a user-supplied
set) as ``eval_overlap:<eval set>``. The matches and the loser->root map are the only things
gathered in one place: their size is the number of near-duplicates, not of samples.

Whether a sample of an earlier year of the same job was held out is known only after that
year's split, which does not depend on the wording of any reason: ``relabel_eval_overlap``
then turns ``duplicate_of``/``near_duplicate_of`` a held-out sample of an earlier year into
``eval_overlap:<eval set>``, as a build of one year at a time says.
"""
from __future__ import annotations

from typing import Iterable

import datetime as dt

import apache_beam as beam
import numpy as np

from pipelines import neardup

STAGE = "dedup"


def _order(row: dict):
    return (row["first_seen"], row["uid"])


def resolve_hash_group(current: Iterable[dict], earlier: Iterable[tuple]) -> list[dict]:
    """Samples sharing one sha256 -> the same samples with ``dedup_reason`` set on the losers.

    ``earlier``: (first_seen, uid[, eval set]) of earlier years' samples with this hash; a copy
    of an earlier year's held-out sample is an evaluation overlap.
    """
    current = sorted(current, key=_order)
    earlier = sorted(tuple(e) for e in earlier)
    out = []
    if earlier:
        first = earlier[0]
        reason = f"eval_overlap:{first[2]}" if len(first) > 2 and first[2] else f"duplicate_of:{first[1]}"
        for c in current:
            out.append({**c, "dedup_reason": reason, "duplicates": []})
        return out
    if not current:
        return out
    winner, *rest = current
    out.append({**winner, "dedup_reason": None, "duplicates": sorted(r["uid"] for r in rest)})
    for r in rest:
        out.append({**r, "dedup_reason": f"duplicate_of:{winner['uid']}", "duplicates": []})
    return out


def resolve_hash_group_years(current: Iterable[dict], earlier: Iterable[tuple]) -> list[dict]:
    """``resolve_hash_group`` for samples of several years sharing one sha256: each year is
    resolved as if built alone, its references being ``earlier`` plus the samples of the years
    before it (as (first_seen, uid): whether such a reference was held out is known only after
    the split, so its reason is ``duplicate_of`` and ``relabel_eval_overlap`` fixes it)."""
    by_year: dict[int, list[dict]] = {}
    for c in current:
        by_year.setdefault(c["year"], []).append(c)
    refs = [tuple(e) for e in earlier]
    out = []
    for year in sorted(by_year):
        out += resolve_hash_group(by_year[year], refs)
        refs += [(c["first_seen"], c["uid"]) for c in by_year[year]]
    return out


class ExactDedup(beam.PTransform):
    """(samples of the years being built, earlier (sha256, (first_seen, uid[, eval set]))) ->
    samples with ``dedup_reason``."""

    def expand(self, pcolls):
        samples, earlier = pcolls
        return (
            {
                "current": samples | "KeyBySha" >> beam.Map(lambda r: (r["sha256"], r)),
                "earlier": earlier,
            }
            | "JoinOnSha" >> beam.CoGroupByKey()
            | "Resolve" >> beam.FlatMap(lambda kv: resolve_hash_group_years(kv[1]["current"], kv[1]["earlier"]))
        )


def _ts(v) -> str:
    return v.astimezone(dt.timezone.utc).isoformat() if isinstance(v, dt.datetime) else str(v)


def eval_set_name(row: dict) -> str | None:
    """``retrieval/2016`` for a held-out sample of 2016, None for a training sample."""
    split = row.get("split") or "train"
    return None if split == "train" else f"{split.removeprefix('eval_')}/{row['year']}"


def sample_item(row: dict, cfg: neardup.NearDupConfig, origin: str = "current") -> neardup.Item:
    """A metadata row as a near-dup item; earlier years' held-out samples carry their eval set."""
    if origin != "current":
        origin = eval_set_name(row) or origin
    return neardup.Item((1, _ts(row["first_seen"]), row["uid"]), row["uid"], neardup.parse_phash(row["phash"]), origin,
                        neardup.caption_signature(row.get("text"), cfg), row.get("year"))


def apply_near_duplicates(row: dict, resolved: dict) -> dict:
    out = dict(row)
    w = resolved["winner_of"].get(row["uid"])
    if w is not None and not row.get("dedup_reason"):
        out["dedup_reason"] = neardup.reason_for(w)
        out["duplicates"] = []
    elif row["uid"] in resolved["losers_of"] and not row.get("dedup_reason"):
        out["duplicates"] = sorted(set(row.get("duplicates") or []) | set(resolved["losers_of"][row["uid"]]))
    return out


def _resolve(best: dict) -> dict:
    winner_of = neardup.resolve_chains(best)
    losers_of: dict[str, list[str]] = {}
    for uid, w in winner_of.items():
        if w.origin == "current":
            losers_of.setdefault(w.uid, []).append(uid)
    return {"winner_of": winner_of, "losers_of": losers_of}


def resolve_years(edges: Iterable[tuple[int, str, list[neardup.Item]]]) -> dict[int, dict]:
    """The ordered finish of near-dedup over several years: ``edges`` holds, per sample with a
    match, (its year, its uid, every earlier item it matches). Years are resolved in order, each
    as if built alone: a sample of year Y may take as its match an evaluation image, a sample of
    Y, or a sample of an earlier year that its own year kept (a built year's references are kept
    samples already). Returns year -> ``_resolve``'s maps. Only samples with a match take part,
    so this holds the near-duplicates, never a year's rows."""
    by_year: dict[int | None, list[tuple[str, list[neardup.Item]]]] = {}
    for year, uid, matched in edges:
        by_year.setdefault(year, []).append((uid, matched))
    dropped: set[str] = set()  # near-duplicates of the years resolved so far
    out = {}
    for year in sorted(by_year, key=lambda y: (y is not None, y or 0)):
        best = {}
        for uid, matched in by_year[year]:
            usable = [m if m.year is None or m.year == year or m.origin != "current" else m._replace(origin="earlier")
                      for m in matched if m.year is None or m.year == year or m.uid not in dropped]
            if usable:
                best[uid] = min(usable)
        out[year] = _resolve(best)
        dropped |= set(out[year]["winner_of"])
    return out


def _edges(uid: str, found) -> tuple[int | None, str, list[neardup.Item]]:
    found = list(found)
    return found[0][0].year, uid, sorted({m for _, ms in found for m in ms})


def apply_near_duplicates_years(row: dict, resolved: dict) -> dict:
    return apply_near_duplicates(row, resolved.get(row.get("year")) or {"winner_of": {}, "losers_of": {}})


def relabel_eval_overlap(row: dict, held_out: dict) -> dict:
    """A sample dropped as a copy of a sample of an earlier year that the same job held out for
    evaluation is an evaluation overlap (``held_out``: uid -> eval set, e.g. ``retrieval/2016``),
    as a build of one year at a time, which reads the earlier year's split, says."""
    reason = row.get("dedup_reason") or ""
    kind, _, uid = reason.partition(":")
    if kind not in ("duplicate_of", "near_duplicate_of") or uid not in held_out:
        return row
    name = held_out[uid]
    if int(name.rpartition("/")[2]) >= row["year"]:
        return row  # a copy of a sample of its own year: the same year's split does not relabel
    return {**row, "dedup_reason": f"eval_overlap:{name}"}


class _KeyCounts:
    """Sorted distinct LSH keys with their counts capped at 2, plus keys not yet folded in."""

    def __init__(self):
        self.keys = np.empty(0, np.uint64)
        self.counts = np.empty(0, np.uint8)
        self.pending: list[int] = []
        self.chunks: list[np.ndarray] = []  # pending keys, 64k at a time, as arrays

    def add(self, keys) -> None:
        self.pending.extend(keys)
        if len(self.pending) >= 1 << 16:
            self.chunks.append(np.array(self.pending, np.uint64))
            self.pending = []

    def folded(self) -> "_KeyCounts":
        if self.pending or self.chunks:
            new = [*self.chunks, np.array(self.pending, np.uint64)]
            self.merge(new, [np.ones(len(c), np.uint8) for c in new])
            self.pending, self.chunks = [], []
        return self

    def merge(self, keys: list, counts: list) -> None:
        k = np.concatenate([self.keys, *keys])
        c = np.concatenate([self.counts, *counts]).astype(np.uint16)
        order = np.argsort(k, kind="stable")
        k, c = k[order], c[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.empty(0, np.int64)
        self.keys = k[starts]
        self.counts = np.minimum(np.add.reduceat(c, starts) if len(k) else c, 2).astype(np.uint8)


class SharedKeys(beam.CombineFn):
    """Lists of LSH keys (one list per item) -> the frozenset of keys that occur twice or more.

    Each item's keys would otherwise travel once per table with the whole item (a shuffle 20
    times the items' size, held by the local runner in one process); the partial counts are
    compact arrays (9 bytes a distinct key), combined where the keys are computed, and only
    the items of buckets that can match move afterwards."""

    def create_accumulator(self):
        return _KeyCounts()

    def add_input(self, acc, keys):
        acc.add(keys)
        return acc

    def merge_accumulators(self, accs):
        accs = [a.folded() for a in accs]
        out = _KeyCounts()
        out.merge([a.keys for a in accs], [a.counts for a in accs])
        return out

    def compact(self, acc):
        return acc.folded()

    def extract_output(self, acc):
        acc = acc.folded()
        return frozenset(int(k) for k in acc.keys[acc.counts >= 2])


class NearDedup(beam.PTransform):
    """(samples after ExactDedup, reference items of earlier years and eval sets) -> samples.

    The samples may span several years: LSH buckets hold every year's items, each sample keeps
    every earlier item it matches, and ``resolve_years`` decides year by year what each sample
    is a near-duplicate of (earliest wins) on those matches alone."""

    def __init__(self, cfg: neardup.NearDupConfig = neardup.NearDupConfig()):
        super().__init__()
        self.cfg = cfg

    def expand(self, pcolls):
        samples, refs = pcolls
        cfg = self.cfg
        current = (
            samples
            | "Survivors" >> beam.Filter(lambda r: not r.get("dedup_reason"))
            | "ToItem" >> beam.Map(sample_item, cfg)
        )
        items = (current, refs) | "AllItems" >> beam.Flatten()
        shared = (  # the LSH keys two or more items have: the only buckets that can hold a match
            items
            | "ItemKeys" >> beam.Map(lambda it: neardup.band_keys(it.phash, cfg))
            | "SharedKeys" >> beam.CombineGlobally(SharedKeys())
        )
        resolved = (
            items
            | "BandKeys" >> beam.FlatMap(
                lambda it, hot: [(k, it) for k in neardup.band_keys(it.phash, cfg) if k in hot], beam.pvalue.AsSingleton(shared))
            | "Buckets" >> beam.GroupByKey()
            | "Matches" >> beam.FlatMap(lambda kv: neardup.bucket_matches(kv[1], cfg))
            | "PerSample" >> beam.GroupByKey()
            | "Edges" >> beam.MapTuple(_edges)
            | "AllEdges" >> beam.combiners.ToList()
            | "Years" >> beam.Map(resolve_years)
        )
        return samples | "ApplyNear" >> beam.Map(apply_near_duplicates_years, beam.pvalue.AsSingleton(resolved))
