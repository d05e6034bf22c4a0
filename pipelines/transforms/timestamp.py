"""Timestamp stage: a URL's time is the crawl where it was first seen.

Candidates of the years being built are grouped by normalised URL together with the URLs of
every earlier crawl year (one join for all the years a job builds, so it scales past memory). A URL seen in an earlier year is
not a sample of this year (``seen_before:<year>``); within the year the earliest crawl of a
URL wins (ties by uid) and later ones are ``duplicate_url_of:<uid>``. The survivor's
``first_seen`` is its crawl time. The same sample (same URL and alt text, hence the same uid)
crawled in several snapshots of the year is one sample, with one status row: its earliest
crawl stands for it.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam

STAGE = "timestamp"


def _order(row: dict):
    return (row["crawl_time"], row["uid"])


def resolve_url_group(url: str, current: Iterable[dict], earlier_years: Iterable[int]) -> tuple[dict | None, list[dict]]:
    """One URL's candidates of this year + the years it appeared before -> (kept, status rows)."""
    current = sorted(current, key=_order)
    seen: set[str] = set()
    current = [c for c in current if not (c["uid"] in seen or seen.add(c["uid"]))]
    earlier = list(earlier_years)
    drops: list[dict] = []
    if not current:
        return None, drops
    if earlier:
        first = min(earlier)
        return None, [drop(c, f"seen_before:{first}") for c in current]
    winner, *rest = current
    drops = [drop(c, f"duplicate_url_of:{winner['uid']}") for c in rest]
    kept = dict(winner)
    kept["first_seen"] = winner["crawl_time"]
    kept["year"] = winner["crawl_time"].year
    kept["month"] = winner["crawl_time"].month
    return kept, drops


def drop(row: dict, reason: str, stage: str = STAGE, **extra) -> dict:
    """A ``status`` row for a dropped candidate (shared by every stage that drops)."""
    out = {"uid": row["uid"], "url": row.get("url"), "year": row.get("year"), "status": "dropped",
           "reason": reason, "stage": stage, "http_status": None, "error_message": None}
    out.update(extra)
    return out


def keep(row: dict, stage: str) -> dict:
    return {"uid": row["uid"], "url": row.get("url"), "year": row.get("year"), "status": "kept",
            "reason": None, "stage": stage, "http_status": None, "error_message": None}


class AssignFirstSeen(beam.PTransform):
    """(candidates of the years being built, urls of earlier built years as (url, year)) ->
    tagged ``kept`` / ``status``. One join on the URL serves every year being built: a
    candidate of year Y is resolved against the years before Y that hold its URL, whether
    they are built already (``earlier``) or built in the same job (their candidates)."""

    def expand(self, pcolls):
        candidates, earlier = pcolls

        def emit(element):
            url, grouped = element
            by_year: dict[int, list[dict]] = {}
            for c in grouped["current"]:
                by_year.setdefault(c["year"], []).append(c)
            seen_in = set(grouped["earlier"]) | set(by_year)
            for year in sorted(by_year):
                kept, drops = resolve_url_group(url, by_year[year], [y for y in seen_in if y < year])
                for d in drops:
                    d["year"] = year
                    yield beam.pvalue.TaggedOutput("status", d)
                if kept is not None:
                    yield kept

        return (
            {
                "current": candidates | "KeyByUrl" >> beam.Map(lambda r: (r["url"], r)),
                "earlier": earlier | "DistinctEarlier" >> beam.Distinct(),
            }
            | "JoinOnUrl" >> beam.CoGroupByKey()
            | "Resolve" >> beam.FlatMap(emit).with_outputs("status", main="kept")
        )
