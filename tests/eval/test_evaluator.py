"""The evaluator end to end on a run trained by the bundled trainer: matrix, caching, results
in DuckDB, pictures, compare."""
from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pytest
import torch

from eval.__main__ import main as eval_main
from eval.datasets import open_set, samples
from eval.dynamic import evaluate_run
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def two_runs(tiny_benchmark, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for protocol in ("sequential", "oracle"):
        cfg = TrainConfig(protocol=protocol, data_dir=tiny_benchmark, run_dir=str(root / protocol), samples_per_step=64,
                          batch_size=16, workers=0, buffer=16, warmup=1)
        train(cfg)
        runs[protocol] = str(root / protocol)
    return runs


def test_matrix_cache_results_and_pictures(tiny_benchmark, two_runs, capsys):
    run = two_runs["sequential"]
    assert eval_main(["run", run, "--data-dir", tiny_benchmark]) == 0
    out = capsys.readouterr().out
    assert "dynamic retrieval, mean_recall@1" in out
    m = json.load(open(os.path.join(run, "eval", "matrices.json")))
    E = np.array(m["retrieval"], dtype=float)
    assert m["steps"] == ["2014-2016", "2017", "2018"] and E.shape == (3, 3) and np.isfinite(E).all()
    assert ((E >= 0) & (E <= 1)).all()
    rows = [json.loads(line) for line in open(os.path.join(run, "eval", "results.jsonl"))]
    # 3 checkpoints x 5 years x (7 retrieval + 3 classification metrics) + 3 x static (3 metrics)
    assert len(rows) == 3 * 5 * (7 + 3) + 3 * 3
    con = duckdb.connect(os.path.join(tiny_benchmark, "tic-datacomp", "index.duckdb"), read_only=True)
    (n,) = con.execute("select count(*) from results where run = 'sequential'").fetchone()
    con.close()
    assert n == len(rows)
    for png in ("heatmap_retrieval.png", "heatmap_classification.png", "per_year_retrieval.png"):
        assert os.path.getsize(os.path.join(run, "eval", png)) > 1000
    # the diagonal of E equals the mean of that step's per-year rows
    r = [x["value"] for x in rows if x["model_step"] == 2 and x["data_step"] == 0 and x["metric"] == "mean_recall@1"]
    assert len(r) == 3 and E[2, 0] == pytest.approx(np.mean(r))


def test_second_evaluation_reuses_every_embedding(tiny_benchmark, two_runs):
    run = two_runs["sequential"]
    first = evaluate_run(run, tiny_benchmark)
    again = evaluate_run(run, tiny_benchmark)
    assert again.images_embedded == 0  # everything came from the (checkpoint, eval set) cache
    assert np.array_equal(first.matrices["retrieval"], again.matrices["retrieval"])


def test_oracle_has_a_full_matrix_and_compare_writes_the_table(tiny_benchmark, two_runs, tmp_path, capsys):
    res = evaluate_run(two_runs["oracle"], tiny_benchmark)
    E = res.matrices["retrieval"]
    assert np.isfinite(E).all() and res.checkpoints == [0, 1, 2]  # retrained at every step: forward transfer too
    out = tmp_path / "cmp"
    assert eval_main(["compare", two_runs["sequential"], two_runs["oracle"], "--data-dir", tiny_benchmark, "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert "| Sequential |" in table and "| Oracle |" in table and "ret. backward" in table and "x Sequential" in table
    rows = {r.split("|")[1].strip(): r.split("|") for r in table.splitlines()[2:]}
    assert rows["Sequential"][4].strip() == "1.00x" and rows["Oracle"][4].strip() == "2.00x"  # (T + 1)/2, T = 3
    assert os.path.getsize(out / "heatmaps_retrieval.png") > 1000


def test_image_folder_and_clip_benchmark_readers(tiny_benchmark, tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "folder" / c / f"{i}.png")
    es = open_set(str(tmp_path / "folder"))
    assert es.kind == "classification" and es.classnames == ("cat", "dog")
    assert [label for _, label in samples(es)] == [0, 0, 1, 1]
    ret = open_set(os.path.join(tiny_benchmark, "tic-datacomp", "variants", "basic", "eval", "retrieval", "2017"))
    got = list(samples(ret))
    assert ret.kind == "retrieval" and len(got) == 16 and all(isinstance(t, list) and t[0] for _, t in got)
    with pytest.raises(FileNotFoundError):
        open_set(str(tmp_path / "nothing"))
