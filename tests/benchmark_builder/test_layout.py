"""The layout names every path under a benchmark root as docs/architecture.md draws it."""
from __future__ import annotations

import os

from benchmark_builder.layout import Layout


def test_paths_are_the_documented_ones():
    lay = Layout("/d", "bench")
    assert lay.root == "/d/bench"
    assert lay.metadata(2019) == "/d/bench/metadata/year=2019"
    assert lay.table_files("status") == "/d/bench/status/*/*.parquet"
    assert lay.candidates_marker == "/d/bench/candidates/_SUCCESS.json"
    assert lay.clip() == "/d/bench/clip" and lay.clip(2019) == "/d/bench/clip/year=2019"
    assert lay.clip_marker == "/d/bench/clip/_SUCCESS.json" and lay.clip_filters == "/d/bench/clip/filters.json"
    assert lay.filter_model_checkpoint("k1") == "/d/bench/filter-model/k1/checkpoints/step_0.pt"
    assert lay.captions_marker == "/d/bench/captions/_SUCCESS.json"
    assert lay.report("a.png") == "/d/bench/report/a.png"
    assert lay.any_variant("train", "2019") == "/d/bench/variants/*/train/2019"
    assert lay.pixel_cache == "/d/bench/eval_cache/pixels"
    assert lay.year_manifest(2016) == "/d/bench/years/2016.json"
    assert Layout("gs://b/d").clip(2014) == "gs://b/d/tic-datacomp/clip/year=2014"


def test_built_years_and_variants_read_the_disk(tmp_path):
    lay = Layout(str(tmp_path))
    assert lay.built_years() == [] and lay.variant_dirs() == []
    os.makedirs(tmp_path / "tic-datacomp" / "years")
    for name in ("2016.json", "2014.json", "notes.json", "2015.json.tmp"):
        (tmp_path / "tic-datacomp" / "years" / name).write_text("{}")
    assert lay.built_years() == [2014, 2016]
    for v in ("none", "basic"):
        os.makedirs(tmp_path / "tic-datacomp" / "variants" / v)
    assert [os.path.basename(d) for d in lay.variant_dirs()] == ["basic", "none"]


def test_absolute_keeps_object_store_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Layout("data").absolute().root == os.path.join(str(tmp_path), "data", "tic-datacomp")
    assert Layout("gs://b/d").absolute() == Layout("gs://b/d")
