"""Class- and domain-incremental runs end to end on generated datasets in CIFAR-100's pickle
format and DomainNet's folder/split-file format: stream, trainer, memory, accuracy matrix."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_cl_losses import _write_cifar100  # noqa: E402

from eval.incremental import evaluate  # noqa: E402
from training.incremental import CILConfig, train_run  # noqa: E402

TINY = dict(samples_per_step=64, batch_size=16, workers=0)


def run(cfg: CILConfig) -> dict:
    """What make cil does: train (python -m training cil), then evaluate (python -m eval cil run)."""
    return evaluate(train_run(cfg)["run_dir"], cfg.device)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    _write_cifar100(str(root), per_class=3, classes=100)
    return str(root)


@pytest.mark.parametrize("method,memory", [("gdro", 40), ("lwf", 40), ("finetune-ce", 0), ("zero-shot", 0)])
def test_cifar100_class_incremental_run_fills_the_accuracy_matrix(cifar, tmp_path, method, memory):
    cfg = CILConfig(dataset="cifar100", data=cifar, tasks=2, method=method, memory=memory, data_dir=str(tmp_path / "d"),
                    run_dir=str(tmp_path / "run"), **TINY)
    r = run(cfg)
    R = np.array([[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]])
    assert R.shape == (2, 2) and np.isnan(R[0, 1]) and np.isfinite(R[np.tril_indices(2)]).all()
    assert set(r["metrics"]) == {"final_average_accuracy", "average_incremental_accuracy", "bwt", "forgetting"}
    assert r["metrics"]["final_average_accuracy"] == pytest.approx(np.nanmean(R[1]))
    if method != "zero-shot":
        assert sorted(os.listdir(tmp_path / "run" / "checkpoints"))[:2] == ["step_0.pt", "step_1.pt"]
    if memory:
        (after0,) = r["memory_composition"]
        assert after0["total"] == 40 and len(after0["composition"]) == 50  # 50 classes of task 0, quota 0..1 each
        assert sorted(set(after0["composition"].values())) == [0, 1]


def test_domainnet_domain_incremental_run_with_gcl(tmp_path):
    from PIL import Image

    root = tmp_path / "domainnet"
    for d in ("clipart", "sketch"):
        lines = {"train": [], "test": []}
        for c, name in enumerate(("bee", "cup", "tree")):
            os.makedirs(root / d / name)
            for i in range(6):
                Image.new("RGB", (40, 30), (80 * c, 30 * i, 90 if d == "sketch" else 10)).save(root / d / name / f"{i}.jpg")
                lines["test" if i >= 4 else "train"].append(f"{d}/{name}/{i}.jpg {c}")
        for k, v in lines.items():
            (root / f"{d}_{k}.txt").write_text("\n".join(v) + "\n")
    r = run(CILConfig(dataset="domainnet", data=str(root), kind="dil", method="gcl", memory=6, data_dir=str(tmp_path / "d"),
                      run_dir=str(tmp_path / "run"), **TINY))
    assert r["tasks"] == ["task0-clipart", "task1-sketch"]
    assert all(math.isfinite(v) for v in r["accuracy_matrix"][1])
    assert r["memory_composition"][0]["composition"] == {0: 2, 1: 2, 2: 2}


def test_embedded_default_stream_renders_the_webs_concepts_and_trains_with_memory(tmp_path):
    from benchmark_builder.synthetic_web.concepts import CLASS_NAMES

    cfg = CILConfig(dataset="synthetic-web", tasks=4, method="clip-replay", memory=16, synthetic_per_class=(3, 2),
                    data_dir=str(tmp_path / "d"), run_dir=str(tmp_path / "run"), **TINY)
    assert cfg.stream_dir().endswith("synthetic-web-3x2-cil-T4-s0")  # the render counts are part of the cache key
    r = run(cfg)
    m = __import__("json").load(open(os.path.join(cfg.stream_dir(), "stream.json")))
    assert m["classnames"] == list(CLASS_NAMES) and len(CLASS_NAMES) == 16
    assert [len(t["classes"]) for t in m["tasks"]] == [4, 4, 4, 4]
    assert [(t["train"], t["test"]) for t in m["tasks"]] == [(12, 8)] * 4
    R = np.array([[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]])
    assert np.isfinite(R[np.tril_indices(4)]).all() and np.isnan(R[np.triu_indices(4, 1)]).all()
    # quotas shrink as classes arrive: 16 over 4 classes, then 8, then 5 or 6 (capped by the 3 renders per class)
    comp = [h["composition"] for h in r["memory_composition"]]
    assert [len(c) for c in comp] == [4, 8, 12] and max(comp[0].values()) == 3 and max(comp[2].values()) <= 2
    from eval.incremental import compare

    table = compare([str(tmp_path / "run")], str(tmp_path / "mem.png"))
    row = [ln for ln in table.splitlines() if ln.startswith("| clip-replay | 16 |")]
    assert len(row) == 1 and f"{r['metrics']['final_average_accuracy']:.1%}" in row[0]
    assert f"{np.mean(R[3, :3]):.1%}" in row[0] and os.path.getsize(tmp_path / "mem.png") > 1000
