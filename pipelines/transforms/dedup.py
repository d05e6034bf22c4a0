"""Dedup stage: exact duplicates by sha256, then near-duplicates by perceptual hash, within
and across years and against evaluation images.

Samples of the year are joined on ``sha256`` with the hashes of every earlier year's pool.
An image already seen in an earlier year is a duplicate of that year's earliest sample;
within the year the earliest ``first_seen`` wins (ties by uid). Dropped samples keep their
row in the metadata with ``duplicate_of:<uid>`` as their status reason; the kept one records
the uids of its duplicates in ``duplicates``.

Near-duplicates (``NearDedup``): the survivors of the exact pass, the kept samples of earlier
years and the evaluation images are keyed by LSH bands of their pHash (``pipelines.neardup``);
each bucket yields (sample, earliest match) pairs, the earliest match per sample wins and
chains resolve to their root. A sample whose root is a training sample is dropped as
``near_duplicate_of:<uid>``; one whose root is an evaluation image (a held-out set of an
earlier year, or a user-supplied set) as ``eval_overlap:<eval set>``. The loser->root map is a
side input: its size is the number of near-duplicates, not of samples.
"""
from __future__ import annotations

from typing import Iterable

import datetime as dt

import apache_beam as beam

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


class ExactDedup(beam.PTransform):
    """(samples of year Y, earlier (sha256, (first_seen, uid))) -> samples with ``dedup_reason``."""

    def expand(self, pcolls):
        samples, earlier = pcolls
        return (
            {
                "current": samples | "KeyBySha" >> beam.Map(lambda r: (r["sha256"], r)),
                "earlier": earlier,
            }
            | "JoinOnSha" >> beam.CoGroupByKey()
            | "Resolve" >> beam.FlatMap(lambda kv: resolve_hash_group(kv[1]["current"], kv[1]["earlier"]))
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
                        neardup.caption_signature(row.get("text"), cfg))


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


class NearDedup(beam.PTransform):
    """(samples after ExactDedup, reference items of earlier years and eval sets) -> samples."""

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
        resolved = (
            (current, refs)
            | "AllItems" >> beam.Flatten()
            | "BandKeys" >> beam.FlatMap(lambda it: [(k, it) for k in neardup.band_keys(it.phash, cfg)])
            | "Buckets" >> beam.GroupByKey()
            | "Resolve" >> beam.FlatMap(lambda kv: neardup.resolve_bucket(kv[1], cfg))
            | "Earliest" >> beam.CombinePerKey(min)
            | "WinnerMap" >> beam.combiners.ToDict()
            | "Chains" >> beam.Map(_resolve)
        )
        return samples | "ApplyNear" >> beam.Map(apply_near_duplicates, beam.pvalue.AsSingleton(resolved))
