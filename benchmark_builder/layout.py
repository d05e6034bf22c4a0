"""Where everything of a built benchmark lives on disk (docs/architecture.md), in one place.

```
<data_dir>/<benchmark>/
  candidates/year=YYYY/*.parquet      crawl_status/year=YYYY/*.parquet
  pool/year=YYYY/{shards/*.tar, status/*.parquet}
  status/year=YYYY/*.parquet          metadata/year=YYYY/*.parquet
  variants/<filter>/train/YYYY/{00000000.tar, 00000000_stats.json, sizes.json, meta.json}
  variants/<filter>/eval/{retrieval,classification}/YYYY/...   (clip_benchmark layout)
  clip/{year=YYYY/*.npz, _SUCCESS.json, filters.json}   filter-model/<key>/   captions/   report/
  eval_cache/pixels/   manifest.json  years/YYYY.json  index.duckdb
<data_dir>/synthetic-web/    the embedded default input
```
Every path under a benchmark root is built here; other modules ask the layout, never join onto
``root`` themselves.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from pipelines.io import glob, is_local, join, local_path
from pipelines.safe_inputs import check_name


MARKER = "_SUCCESS.json"  # a finished job's record in the directory it wrote


def _year_partition(table: str):
    """``Layout.<table>(year)``: the year's partition of a year-partitioned table."""
    def partition(self, year: int) -> str:
        return self.partition(table, year)

    partition.__name__ = table
    partition.__doc__ = f"``<root>/{table}/year=YYYY``"
    return partition


@dataclass(frozen=True)
class Layout:
    data_dir: str
    benchmark: str = "tic-datacomp"

    @property
    def root(self) -> str:
        return join(self.data_dir, self.benchmark)

    def absolute(self) -> Layout:
        """The same layout with a local data dir made absolute (object-store URLs unchanged)."""
        if not is_local(self.data_dir):
            return self
        return Layout(os.path.abspath(local_path(self.data_dir)), self.benchmark)

    def table(self, table: str) -> str:
        """A year-partitioned Parquet table (candidates, crawl_status, status, metadata)."""
        return join(self.root, table)

    def table_files(self, table: str) -> str:
        """Glob of every Parquet file of ``table``, all years."""
        return join(self.table(table), "*", "*.parquet")

    def partition(self, table: str, year: int) -> str:
        return join(self.table(table), f"year={year}")

    def status_parts(self, year: int) -> str:
        """``status/year=YYYY/_parts``: the job's status parts, merged into the year's one file
        after the job (below the year's partition, so no reader of the table globs them)."""
        return join(self.partition("status", year), "_parts")

    candidates = _year_partition("candidates")
    crawl_status = _year_partition("crawl_status")
    pool = _year_partition("pool")
    status = _year_partition("status")
    metadata = _year_partition("metadata")

    @property
    def candidates_marker(self) -> str:
        """The crawl's record of the inputs its candidates came from."""
        return join(self.table("candidates"), MARKER)

    @property
    def crawl_scratch(self) -> str:
        return join(self.root, "_crawl_scratch")

    @property
    def variants(self) -> str:
        return join(self.root, "variants")

    def variant_dirs(self) -> list[str]:
        """Every variant written so far."""
        return sorted(glob(join(self.variants, "*")))

    def any_variant(self, *parts: str) -> str:
        """Glob of ``parts`` under every variant, e.g. ``any_variant("train", "2019")``."""
        return join(self.variants, "*", *parts)

    def variant(self, name: str) -> str:
        return join(self.variants, check_name(name, "variant name"))

    def train_shards(self, variant: str, step: str | int) -> str:
        return join(self.variant(variant), "train", str(step))

    def eval_set(self, variant: str, kind: str, step: str | int) -> str:
        if kind not in ("retrieval", "classification"):
            raise ValueError(f"eval kind must be retrieval or classification, got {kind!r}")
        return join(self.variant(variant), "eval", kind, str(step))

    @property
    def years_dir(self) -> str:
        return join(self.root, "years")

    def year_manifest(self, year: int) -> str:
        return join(self.years_dir, f"{year}.json")

    def built_years(self) -> list[int]:
        """The years whose build finished (a ``years/YYYY.json`` exists), ascending."""
        names = (p.rsplit("/", 1)[-1].removesuffix(".json") for p in glob(join(self.years_dir, "*.json")))
        return sorted(int(n) for n in names if n.isdigit())

    def clip(self, year: int | None = None) -> str:
        """CLIP scores and embeddings of the pool (``benchmark_builder.filtering``), per year."""
        return join(self.root, "clip", *([] if year is None else [f"year={year}"]))

    @property
    def clip_marker(self) -> str:
        return join(self.clip(), MARKER)

    @property
    def clip_filters(self) -> str:
        """What the CLIP filters selected (threshold, clusters, counts)."""
        return join(self.clip(), "filters.json")

    def filter_model(self, key: str) -> str:
        """The run dir of the embedded default's filter model trained with config hash ``key``."""
        return join(self.root, "filter-model", key)

    def filter_model_checkpoint(self, key: str) -> str:
        """Its checkpoint; ``key="*"`` gives a glob over every trained filter model."""
        return join(self.filter_model(key), "checkpoints", "step_0.pt")

    @property
    def captions(self) -> str:
        """Generated-caption bookkeeping (``benchmark_builder.captioning``)."""
        return join(self.root, "captions")

    @property
    def captions_marker(self) -> str:
        return join(self.captions, MARKER)

    def caption_file(self, name: str) -> str:
        return join(self.captions, name)

    def report(self, name: str) -> str:
        """A report file (PNG chart, JSON table) under ``report/``."""
        return join(self.root, "report", name)

    def under_root(self, relative: str) -> str:
        """A path a user gave relative to the benchmark root (e.g. a static eval task's)."""
        return join(self.root, relative)

    @property
    def pixel_cache(self) -> str:
        """The evaluator's cache of decoded eval images."""
        return join(self.root, "eval_cache", "pixels")

    @property
    def manifest(self) -> str:
        return join(self.root, "manifest.json")

    @property
    def index(self) -> str:
        return join(self.root, "index.duckdb")

    @property
    def web(self) -> str:
        """The embedded synthetic web (WARC snapshots + image catalogue); a benchmark other than
        TiC-DataComp has its own, smaller one (its fixture: ``synthetic_web/fixtures.py``). Its
        server reads local files, so a data dir on an object store keeps it in a local cache (it is
        an input, regenerated from its config when missing, never an output)."""
        name = "synthetic-web" if self.benchmark == "tic-datacomp" else f"synthetic-web-{self.benchmark}"
        if is_local(self.data_dir):
            return join(self.data_dir, name)
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        key = hashlib.sha256(self.data_dir.rstrip("/").encode()).hexdigest()[:16]
        return os.path.join(cache, "tic-benchmarks", name, key)
