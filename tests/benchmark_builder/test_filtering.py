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
