"""Each benchmark runs end to end on a tiny input (no timing asserted): the figures it prints
come from real runs of both sides, which give the same answers."""
from __future__ import annotations

import json
import os

import pytest


def test_bench_sql_runs_and_both_sides_agree(tmp_path):
    from bench.sql_speed import run

    r = run(rows=3000, rows_per_file=400, repeat=2, data_dir=str(tmp_path))  # run() checks ours == raw DuckDB
    assert r["rows"] == 3000 and r["files_per_table"] >= 9  # nine years, at least one file each
    assert set(r["queries"]) == {"lookup", "aggregate", "status"}
    assert all(q["ours"]["median_ms"] > 0 and q["raw_duckdb_unsorted_parquet"]["median_ms"] > 0 for q in r["queries"].values())


def test_bench_score_runs_the_clip_stage():
    from bench.score_speed import main

    r = main(["--n1", "2", "--n2", "4", "--repeat", "1", "--batch", "2", "--stages", "clip_score"])
    assert set(r) == {"benchmark", "clip_score"} and len(r["clip_score"]["ratios"]) == 1


@pytest.mark.slow
def test_bench_score_runs_the_caption_stage():
    from bench.score_speed import main

    r = main(["--caption-n1", "1", "--caption-n2", "2", "--repeat", "1", "--batch", "1", "--caption-tokens", "2",
              "--stages", "caption"])
    assert set(r) == {"benchmark", "caption"} and len(r["caption"]["ratios"]) == 1


def test_bench_cli_rejects_unknown_names_and_misplaced_options(capsys):
    from bench.__main__ import main

    for argv, says in ((["nope"], "unknown benchmark"), (["sql", "train", "--rows", "5"], "options go after one")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow
def test_bench_train_runs_on_tiny_shards(tiny_benchmark):
    from bench.train_vs_open_clip import main

    r = main(["--n1", "128", "--n2", "256"], data_dir=tiny_benchmark)
    # one and two iterations: noise may make a side's n2 run no slower, and then it has no rate
    # (None, reported as such); otherwise the rate is the marginal one computed from its two times
    assert len(r["ratios"]) == 1
    (run,) = r["runs"]
    for who, rate in run["per_s"].items():
        t1, t2 = run["seconds"][f"{who}-128"], run["seconds"][f"{who}-256"]
        assert t1 > 0 and t2 > 0
        assert rate == (pytest.approx(128 / (t2 - t1)) if t2 > t1 else None), who
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench", "out",
                           "train_vs_open_clip.json")) as f:
        assert json.load(f)["n2"] == 256
