"""TiC-CLIP's table (Garg et al., ICLR 2024, Table 2) in form: compute in MACs and as a multiple of
Sequential's, static average, dynamic backward / ID / forward transfer, for the nine protocols."""
from __future__ import annotations

import os

import pytest

from eval.report import compare_table

NINE = ["sequential", "patching", "cumulative-exp", "cumulative-equal", "cumulative-all", "ewc", "lwf",
        "cumulative-all-plus", "oracle"]


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {c[0]: dict(zip(head, c)) for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}


def test_compare_table_ratios_names_and_missing_values():
    summaries = [{"protocol": "sequential", "samples_seen": 300, "macs": 3.0e18, "retrieval_in_distribution": 0.5},
                 {"protocol": "ewc", "samples_seen": 300, "macs": 3.6e18},
                 {"protocol": "cumulative-all-plus", "samples_seen": 390, "macs": 3.9e18},
                 {"protocol": "oracle", "samples_seen": 1200, "macs": 1.2e19, "static_average": float("nan")}]
    rows = _rows(compare_table(summaries))
    assert [r["x Sequential"] for r in rows.values()] == ["1.00x", "1.20x", "1.30x", "4.00x"]  # TiC-DataComp (M)'s
    assert list(rows) == ["Sequential", "EWC", "Cumulative-All*", "Oracle"]
    assert rows["Sequential"]["MACs"] == "3.00e+18" and rows["Sequential"]["ret. ID"] == "50.0"
    assert rows["Oracle"]["static avg"] == "-" and rows["EWC"]["ret. ID"] == "-"
    no_seq = _rows(compare_table(summaries[1:]))
    assert all(r["x Sequential"] == "-" for r in no_seq.values())  # no Sequential run: no ratio


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_nine_protocols_train_and_compare_as_tic_clip_table(tiny_benchmark, tmp_path, capsys):
    from eval.__main__ import main as eval_main
    from training.train import TrainConfig, train

    runs = []
    for p in NINE:  # 160 samples per step in batches of 16: 1.3 x C is exactly 13 batches
        train(TrainConfig(protocol=p, data_dir=tiny_benchmark, run_dir=str(tmp_path / p), samples_per_step=160,
                          batch_size=16, workers=0, buffer=16, warmup=1, options={"fisher_samples": 32} if p == "ewc" else {}))
        runs.append(str(tmp_path / p))
    assert eval_main(["compare", *runs, "--data-dir", tiny_benchmark, "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    print(table)
    rows = _rows(table)
    assert list(rows) == ["Sequential", "Patching", "Cumulative-Exp", "Cumulative-Equal", "Cumulative-All", "EWC", "LwF",
                          "Cumulative-All*", "Oracle"]
    ratio = {k: float(r["x Sequential"].rstrip("x")) for k, r in rows.items()}
    for k in ("Patching", "Cumulative-Exp", "Cumulative-Equal", "Cumulative-All"):
        assert ratio[k] == 1.0
    assert ratio["EWC"] > 1.0 and ratio["LwF"] > 1.0  # Fisher passes, teacher forward
    assert ratio["Cumulative-All*"] == 1.3 and ratio["Oracle"] == 2.0  # (T + 1)/2 with T = 3
    for r in rows.values():  # every row has the slide's columns filled
        assert all(r[c] != "-" for c in ("MACs", "static avg", "ret. backward", "ret. ID", "ret. forward"))
    assert os.path.getsize(tmp_path / "cmp" / "heatmaps_retrieval.png") > 1000
