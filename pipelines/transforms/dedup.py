"""Dedup stage: exact duplicates by sha256 of the image bytes, within and across years.

Samples of the year are joined on ``sha256`` with the hashes of every earlier year's pool.
An image already seen in an earlier year is a duplicate of that year's earliest sample;
within the year the earliest ``first_seen`` wins (ties by uid). Dropped samples keep their
row in the metadata with ``duplicate_of:<uid>`` as their status reason; the kept one records
the uids of its duplicates in ``duplicates``. Near-duplicates (perceptual hashes) build on the
same join with LSH-banded keys.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam

STAGE = "dedup"


def _order(row: dict):
    return (row["first_seen"], row["uid"])


def resolve_hash_group(current: Iterable[dict], earlier: Iterable[tuple]) -> list[dict]:
    """Samples sharing one sha256 -> the same samples with ``dedup_reason`` set on the losers.

    ``earlier``: (first_seen, uid) of earlier years' samples with this hash.
    """
    current = sorted(current, key=_order)
    earlier = sorted(earlier)
    out = []
    if earlier:
        winner_uid = earlier[0][1]
        for c in current:
            out.append({**c, "dedup_reason": f"duplicate_of:{winner_uid}", "duplicates": []})
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
