"""DataComp's CLIP selection semantics on hand-computed examples."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmark_builder.filtering import select


def test_top_fraction_threshold_is_the_whole_pool_quantile():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 1.0, 0.2, 0.7, 0.4, 0.8, 0.6])  # 0.1 .. 1.0, shuffled
    # numpy linear quantile at 0.7 of the sorted pool: position 0.7 * 9 = 6.3 -> 0.7 + 0.3 * (0.8 - 0.7) = 0.73
    threshold, keep, _ = select(scores, np.zeros(10, int), [0], clip_fraction=0.3)
    assert threshold == pytest.approx(0.73)
    assert sorted(scores[keep]) == [0.8, 0.9, 1.0]
    threshold, keep, _ = select(scores, np.zeros(10, int), [0], clip_threshold=0.6)
    assert threshold == 0.6 and sorted(scores[keep]) == [0.6, 0.7, 0.8, 0.9, 1.0]  # >= keeps the tie
    with pytest.raises(ValueError, match="clip_fraction"):
        select(scores, np.zeros(10, int), [0], clip_fraction=0.0)


def test_image_based_and_bestpool_intersection():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assign = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])  # nearest centroid per sample
    _, keep_score, keep_image = select(scores, assign, targets=[0, 2], clip_fraction=0.3)
    assert np.flatnonzero(keep_image).tolist() == [0, 2, 3, 5, 6, 8, 9]
    assert np.flatnonzero(keep_score).tolist() == [7, 8, 9]
    assert np.flatnonzero(keep_score & keep_image).tolist() == [8, 9]  # bestpool


def test_build_rejects_an_unknown_filter_before_any_work(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", "2014",
                        "--data-dir", str(tmp_path), "--filter", "basic,bestest"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown --filter ['bestest']" in r.stderr and "bestpool" in r.stderr
    assert not any(tmp_path.iterdir())


CAPTION_ROWS = [  # hand-built metadata rows: (row, DataComp caption filter's verdict by hand)
    ({"uid": "0" * 32, "text": "a red circle on the sea", "language": "en"}, None),
    ({"uid": "1" * 32, "text": "dog photo", "language": "en"}, None),  # 2 tokens, 9 chars: passes (basic would not)
    ({"uid": "2" * 32, "text": "circle", "language": "en"}, "caption_too_few_words"),  # 1 token
    ({"uid": "3" * 32, "text": "a cat", "language": "en"}, "caption_too_short"),  # 5 characters: not more than 5
    ({"uid": "4" * 32, "text": "cat\ndog", "language": "en"}, None),  # cat </s> dog: 3 fastText tokens, 7 chars
    ({"uid": "5" * 32, "text": "une photo d'un cercle", "language": "fr"}, "caption_not_english:fr"),
    ({"uid": "6" * 32, "text": "a photo of nothing", "language": None}, "caption_not_english:unknown"),
    ({"uid": "7" * 32, "text": "", "language": None}, "caption_not_english:unknown"),
]


def test_datacomp_caption_filter_rules():
    from pipelines.transforms.filter import basic_reason, caption_reason

    for row, reason in CAPTION_ROWS:
        assert caption_reason(row) == reason, row["text"]
    assert basic_reason({**CAPTION_ROWS[1][0], "original_width": 300, "original_height": 300}) == "caption_too_few_words"


def test_image_based_and_bestpool_apply_the_caption_filter_before_selection():
    from benchmark_builder.filtering import caption_mask

    rows = [r for r, _ in CAPTION_ROWS]
    uids = np.array([r["uid"] for r in rows])
    ok = caption_mask(uids[::-1], rows)  # by uid, not by position
    assert ok.tolist() == [reason is None for _, reason in CAPTION_ROWS][::-1]
    ok = caption_mask(uids, rows)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7])
    assign = np.array([0, 0, 0, 0, 1, 0, 0, 0])  # every sample but #4 in the target cluster 0
    _, keep_score, keep_image = select(scores, assign, targets=[0], clip_fraction=0.5, caption_ok=ok)
    assert np.flatnonzero(keep_image).tolist() == [0, 1]  # 2, 3, 5, 6, 7 fail the caption filter; 4 is off target
    assert np.flatnonzero(keep_score).tolist() == [4, 5, 6, 7]  # clip_score alone has no caption filter
    assert np.flatnonzero(keep_score & keep_image).tolist() == []  # bestpool: the high scorers are non-English/empty
    _, keep_score, keep_image = select(scores, np.zeros(8, int), targets=[0], clip_threshold=0.2, caption_ok=ok)
    assert np.flatnonzero(keep_score & keep_image).tolist() == [1, 4]  # 0 scores below 0.2; 4 (cat\ndog) passes


def test_kmeans_clusters_only_caption_filtered_samples():
    from benchmark_builder.filtering import train_kmeans

    rng = np.random.default_rng(7)
    poles = np.eye(8, dtype=np.float32)[:3]  # three well separated directions

    def blob(i, n):
        x = poles[i] + 0.05 * rng.standard_normal((n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = np.concatenate([blob(0, 60), blob(1, 60), blob(2, 200)])  # the biggest blob: captions that fail
    ok = np.array([True] * 120 + [False] * 200)
    centroids = train_kmeans(x, ok, clusters=2, seed=0).centroids
    nearest_pole = np.argmax(centroids @ poles.T, axis=1)
    assert sorted(nearest_pole.tolist()) == [0, 1]  # no centroid for the caption-filtered blob
    assert (np.max(centroids @ poles.T, axis=1) > 0.9).all()


def test_build_rejects_a_bad_language_id_model_before_any_work(tmp_path):
    bad = tmp_path / "lid.176.bin"
    bad.write_bytes(b"not a fastText model")
    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "benchmark_builder", "build", "tic-datacomp", "--year", "2014",
                        "--data-dir", str(data), "--lid-model", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "is not a fastText model" in r.stderr and "Traceback" not in r.stderr
    assert not data.exists()


def test_the_builder_finds_the_default_filter_model_where_the_trainer_caches_it(tmp_path):
    import hashlib
    import json

    from benchmark_builder.filtering import ClipFilterConfig, default_filter_model
    from pipelines.safe_inputs import InputError
    from training.filter_model import filter_model_config

    data = str(tmp_path)
    cfg = ClipFilterConfig(data_dir=data, benchmark="tic-yfcc", seed=3, filter_model_samples=64)
    with pytest.raises(InputError, match="python -m training filter-model"):
        default_filter_model(cfg)
    # the cache key hashes the trainer's command line for this job (so models cached by earlier
    # versions are found again); written out here by hand
    argv = ["--protocol", "sequential", "--max-steps", "1", "--samples-per-step", "64", "--model", "tic-tiny-32",
            "--seed", "3", "--data-dir", data, "--benchmark", "tic-yfcc"]
    key = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:12]
    train_cfg, train_key = filter_model_config(data, "tic-yfcc", 3, 64)
    assert train_key == key and train_cfg.run_dir == f"{data}/tic-yfcc/filter-model/{key}"
    ckpt = tmp_path / "tic-yfcc" / "filter-model" / key / "checkpoints" / "step_0.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert default_filter_model(cfg) == f"tic-tiny-32:{ckpt}"
