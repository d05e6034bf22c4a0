"""Metric functions against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval import metrics as M
from eval.tasks import classification_metrics, retrieval_metrics

# E[i, j]: model after step i on data of step j
E3 = np.array([[0.5, 0.2, 0.1],
               [0.4, 0.6, 0.3],
               [0.3, 0.5, 0.7]])


def test_tic_transfer_metrics_by_hand():
    assert M.in_distribution(E3) == pytest.approx((0.5 + 0.6 + 0.7) / 3)  # 0.6
    assert M.backward_transfer(E3) == pytest.approx((0.4 + 0.3 + 0.5) / 3)  # lower triangle: 0.4
    assert M.forward_transfer(E3) == pytest.approx((0.2 + 0.1 + 0.3) / 3)  # upper triangle: 0.2


def test_continual_metrics_by_hand():
    assert M.final_average_accuracy(E3) == pytest.approx((0.3 + 0.5 + 0.7) / 3)  # 0.5
    # iCaRL: row 0 -> 0.5; row 1 -> (0.4 + 0.6) / 2 = 0.5; row 2 -> 0.5; mean 0.5
    assert M.average_incremental_accuracy(E3) == pytest.approx(0.5)
    # GEM BWT: ((0.3 - 0.5) + (0.5 - 0.6)) / 2 = -0.15
    assert M.bwt_lopez_paz(E3) == pytest.approx(-0.15)
    # forgetting: task 0: max(0.5, 0.4) - 0.3 = 0.2; task 1: max(0.6) - 0.5 = 0.1; mean 0.15
    assert M.forgetting(E3) == pytest.approx(0.15)
    R = np.array([[0.9, 0.0], [0.6, 0.8]])
    assert M.bwt_lopez_paz(R) == pytest.approx(-0.3) and M.forgetting(R) == pytest.approx(0.3)
    assert M.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7) / 2)


def test_nan_cells_are_ignored_and_single_step_is_defined():
    E = E3.copy()
    E[0, :] = np.nan  # a run with no checkpoint for step 0
    assert M.backward_transfer(E) == pytest.approx((0.3 + 0.5 + 0.4) / 3)
    assert M.forward_transfer(E) == pytest.approx(0.3)
    one = np.array([[0.42]])
    assert M.in_distribution(one) == 0.42 and math.isnan(M.backward_transfer(one)) and math.isnan(M.bwt_lopez_paz(one))
    assert math.isnan(M.forgetting(one))
    with pytest.raises(ValueError):
        M.in_distribution(np.zeros((2, 3)))
    assert M.geometric_mean(0.64, 0.25) == pytest.approx(0.4) and M.geometric_mean(-0.1, 0.5) == 0.0


def test_retrieval_recalls_by_hand():
    img = torch.eye(3)
    # text 0 and 1 belong to image 0, text 2 to image 1, text 3 to image 2
    txt = torch.tensor([[1.0, 0, 0], [0, 0.9, 0.1], [0, 1.0, 0], [0.2, 0, 0.1]])
    txt = torch.nn.functional.normalize(txt, dim=1)
    m = retrieval_metrics(img, txt, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    # text->image top-1: t0 -> img0 ok; t1 -> img1 wrong; t2 -> img1 ok; t3 -> img0 wrong => 2/4
    assert m["image_retrieval_recall@1"] == 0.5
    # top-2: t1 ranks img0 third (0 < 0.1 < 0.9): wrong; t3 ranks img2 second: ok => 3/4
    assert m["image_retrieval_recall@2"] == 0.75
    # image->text top-1: img0 best t0 (own) ok; img1 best t2 (own) ok; img2 best t3? sims img2: t1 .11, t3 .447 -> ok
    assert m["text_retrieval_recall@1"] == 1.0
    assert m["mean_recall@1"] == 0.75


def test_classification_top_k_and_mean_per_class():
    feats = torch.eye(3)
    classifier = torch.tensor([[1.0, 0.5, 0], [0, 1.0, 0.4], [0.3, 0, 1.0]])  # [D, C]
    labels = torch.tensor([0, 0, 2])  # sample 1 predicts class 1 (wrong), second guess class 2
    m = classification_metrics(feats, classifier, labels, topk=(1, 2, 5), mean_per_class=True)
    assert m["acc1"] == pytest.approx(2 / 3)
    assert m["acc2"] == pytest.approx(2 / 3)  # sample 1's top-2 are classes 1, 2: still wrong
    assert m["acc5"] == 1.0  # capped at 3 classes
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 1.0) / 2)
