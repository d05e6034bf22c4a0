"""One Beam job builds every pending year, and its outputs are those of one job per year.

The oracle is the build one year at a time: ``build --year 2014``, then ``--year 2015``, then
``--year 2016`` in another data dir, each a job that builds only that year and reads every
earlier year from disk (URLs and images seen before, earlier held-out sets from the metadata's
``split``), the shape every build had before years were built in one job. The build of
2014..2016 at once must give the same bytes for every status row file, metadata file, shard,
evaluation set, pool shard and candidate file, and run one job besides the crawl. The check
is not vacuous: the web plants copies of earlier years' images, so the one-job build must
hold samples dropped as copies of a sample of an earlier year of the same job, and as
evaluation overlaps with an earlier year's held-out set (the reasons resolved by the cross-year
joins and the relabelling after the split).
"""
from __future__ import annotations

import shutil

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from benchmark_builder.build import BuildConfig, build
from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.options import RunnerConfig
from tests.benchmark_builder.test_reproducible import _free_port, tree_digest

YEARS = (2014, 2015, 2016)
# The web's URLs hold the port, so uids, splits and which copies meet a held-out set change with
# it. The retrieval set is large (120 of ~250 eligible pairs a year) and the classification set
# takes every other eligible pair whose caption names one class, so a later copy of such a pair is
# a classification overlap whatever the port; the copies of earlier pairs that fail the basic
# filter (never held out) stay duplicate_of / near_duplicate_of. Simulated from one build's
# metadata and ground truth, with the uids and splits recomputed for each port: 0 failures over
# the 1000 ports of 25000-25999 and 10,000 random ones (fewest overlaps 3 retrieval, 2
# classification); the sets 100 + 50 large gave no classification overlap for 8 of those 11,000
# ports (one in 25000-25999), 30 + 15 for one port in six.
SMALL = dict(pairs_per_year=300, pool_shard_size=64, eval_retrieval_size=120, eval_classification_size=1000)


def _cfg(data_dir, year: int, port: int) -> BuildConfig:
    return BuildConfig(year=year, data_dir=str(data_dir), allow_loopback=True, web_port=port, runner=RunnerConfig(), **SMALL)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    port = _free_port(25000, 25999)
    runs = []
    orig = beam.Pipeline.run

    def run(self, *a, **k):
        runs.append(self)
        return orig(self, *a, **k)

    one = tmp_path_factory.mktemp("one_job") / "d"
    beam.Pipeline.run = run
    try:
        build(_cfg(one, YEARS[-1], port))
    finally:
        beam.Pipeline.run = orig
    by_year = tmp_path_factory.mktemp("by_year") / "d"
    shutil.copytree(Layout(str(one)).web, Layout(str(by_year)).web)  # the same web, already rendered
    for y in YEARS:
        build(_cfg(by_year, y, port))
    return Layout(str(one)), Layout(str(by_year)), len(runs)


def test_one_job_besides_the_crawl(builds):
    _, _, n_runs = builds
    assert n_runs == 2  # the crawl, then one job for the three years


def test_one_job_gives_the_bytes_of_one_job_per_year(builds):
    one, by_year, _ = builds
    a, b = tree_digest(pio.local_path(one.root)), tree_digest(pio.local_path(by_year.root))
    assert sorted(a) == sorted(b), (sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5])
    for y in YEARS:  # every kind of output of every year is compared
        for part in (f"status/year={y}/", f"metadata/year={y}/", f"pool/year={y}/shards/", f"variants/basic/train/{y}/",
                     f"variants/basic/eval/retrieval/{y}/", f"variants/basic/eval/classification/{y}/"):
            assert any(k.startswith(part) for k in a), part
    different = sorted(k for k in a if a[k] != b[k])
    assert different == []


def test_cross_year_reasons_are_exercised(builds):
    one, _, _ = builds
    rows = {y: pq.read_table(pio.local_path(pio.join(one.status(y), "part-00000.parquet"))).to_pylist() for y in YEARS}
    year_of = {r["uid"]: y for y, rs in rows.items() for r in rs}
    later = [r for y in YEARS[1:] for r in rows[y] if r["reason"]]
    copies_of_earlier = [r for r in later if r["reason"].split(":")[0] in ("duplicate_of", "near_duplicate_of")
                         and year_of.get(r["reason"].split(":")[1], r["year"]) < r["year"]]
    overlaps = [r for r in later if r["reason"].startswith("eval_overlap:")]
    assert {r["reason"].split(":")[0] for r in copies_of_earlier} == {"duplicate_of", "near_duplicate_of"}
    assert overlaps and all(int(r["reason"].rpartition("/")[2]) < r["year"] for r in overlaps)
    assert {r["reason"].split(":")[1].split("/")[0] for r in overlaps} == {"retrieval", "classification"}
