"""Where everything of a built benchmark lives on disk (docs/architecture.md), in one place.

```
<data_dir>/<benchmark>/
  candidates/year=YYYY/*.parquet      crawl_status/year=YYYY/*.parquet
  pool/year=YYYY/{shards/*.tar, status/*.parquet}
  status/year=YYYY/*.parquet          metadata/year=YYYY/*.parquet
  variants/<filter>/train/YYYY/{00000000.tar, 00000000_stats.json, sizes.json, meta.json}
  variants/<filter>/eval/{retrieval,classification}/YYYY/...   (clip_benchmark layout)
  manifest.json  years/YYYY.json  index.duckdb
```
"""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.io import join
from pipelines.safe_inputs import check_name


@dataclass(frozen=True)
class Layout:
    data_dir: str
    benchmark: str = "tic-datacomp"

    @property
    def root(self) -> str:
        return join(self.data_dir, self.benchmark)

    def _year(self, table: str, year: int) -> str:
        return join(self.root, table, f"year={year}")

    def candidates(self, year: int) -> str:
        return self._year("candidates", year)

    def crawl_status(self, year: int) -> str:
        return self._year("crawl_status", year)

    def pool(self, year: int) -> str:
        return self._year("pool", year)

    def status(self, year: int) -> str:
        return self._year("status", year)

    def metadata(self, year: int) -> str:
        return self._year("metadata", year)

    def variant(self, name: str) -> str:
        return join(self.root, "variants", check_name(name, "variant name"))

    def train_shards(self, variant: str, step: str | int) -> str:
        return join(self.variant(variant), "train", str(step))

    def eval_set(self, variant: str, kind: str, step: str | int) -> str:
        if kind not in ("retrieval", "classification"):
            raise ValueError(f"eval kind must be retrieval or classification, got {kind!r}")
        return join(self.variant(variant), "eval", kind, str(step))

    def year_manifest(self, year: int) -> str:
        return join(self.root, "years", f"{year}.json")

    @property
    def manifest(self) -> str:
        return join(self.root, "manifest.json")

    @property
    def index(self) -> str:
        return join(self.root, "index.duckdb")

    @property
    def web(self) -> str:
        """The embedded synthetic web (WARC snapshots + image catalogue); a benchmark other than
        TiC-DataComp has its own, smaller one (its fixture: ``synthetic_web/fixtures.py``)."""
        return join(self.data_dir, "synthetic-web" if self.benchmark == "tic-datacomp" else f"synthetic-web-{self.benchmark}")
