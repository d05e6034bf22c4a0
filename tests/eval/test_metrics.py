"""Evaluation-matrix metrics against values computed by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from eval import metrics as M

# E[i, j]: model after step i on data of step j
E3 = np.array([[0.5, 0.2, 0.1],
               [0.4, 0.6, 0.3],
               [0.3, 0.5, 0.7]])

# Task 0 peaks after step 1, not on the diagonal; R[0, 1] (task 1 before it was trained on) is
# high and must not count towards task 1's forgetting.
R3 = np.array([[0.8, 0.95, 0.0],
               [0.9, 0.7, 0.2],
               [0.6, 0.4, 0.9]])

R2 = np.array([[0.9, 0.1],
               [0.6, 0.8]])


def test_transfer_metrics_3x3():
    # diagonal: (0.5 + 0.6 + 0.7) / 3 = 0.6
    assert M.in_distribution(E3) == pytest.approx(0.6)
    # j < i: (0.4 + 0.3 + 0.5) / 3 = 0.4
    assert M.backward_transfer(E3) == pytest.approx(0.4)
    # j > i: (0.2 + 0.1 + 0.3) / 3 = 0.2
    assert M.forward_transfer(E3) == pytest.approx(0.2)
    # R3: diagonal (0.8 + 0.7 + 0.9) / 3 = 0.8; lower (0.9 + 0.6 + 0.4) / 3 = 1.9 / 3; upper (0.95 + 0 + 0.2) / 3
    assert M.transfer_metrics(R3) == pytest.approx(
        {"in_distribution": 0.8, "backward_transfer": 0.6333333333333333, "forward_transfer": 0.3833333333333333})


def test_continual_metrics_3x3():
    # last row: (0.3 + 0.5 + 0.7) / 3 = 0.5
    assert M.final_average_accuracy(E3) == pytest.approx(0.5)
    # iCaRL: row 0 -> 0.5; row 1 -> (0.4 + 0.6) / 2 = 0.5; row 2 -> 0.5; mean 0.5
    assert M.average_incremental_accuracy(E3) == pytest.approx(0.5)
    # GEM: ((0.3 - 0.5) + (0.5 - 0.6)) / 2 = -0.15
    assert M.bwt_lopez_paz(E3) == pytest.approx(-0.15)
    # task 0: max(0.5, 0.4) - 0.3 = 0.2; task 1: 0.6 - 0.5 = 0.1; mean 0.15
    assert M.forgetting(E3) == pytest.approx(0.15)

    # R3 last row: (0.6 + 0.4 + 0.9) / 3 = 1.9 / 3
    # iCaRL: 0.8, (0.9 + 0.7) / 2 = 0.8, 1.9 / 3 -> (72 + 72 + 57) / 90 / 3 = 67 / 90
    # GEM: ((0.6 - 0.8) + (0.4 - 0.7)) / 2 = -0.25
    # forgetting: task 0: max(0.8, 0.9) - 0.6 = 0.3; task 1: max over l in [1, 1] = 0.7 - 0.4 = 0.3 (not 0.95)
    assert M.continual_metrics(R3) == pytest.approx(
        {"final_average_accuracy": 0.6333333333333333, "average_incremental_accuracy": 0.7444444444444445,
         "bwt": -0.25, "forgetting": 0.3})


def test_metrics_2x2():
    assert M.in_distribution(R2) == pytest.approx(0.85)  # (0.9 + 0.8) / 2
    assert M.backward_transfer(R2) == pytest.approx(0.6)
    assert M.forward_transfer(R2) == pytest.approx(0.1)
    assert M.final_average_accuracy(R2) == pytest.approx(0.7)  # (0.6 + 0.8) / 2
    assert M.average_incremental_accuracy(R2) == pytest.approx(0.8)  # (0.9 + (0.6 + 0.8) / 2) / 2
    assert M.bwt_lopez_paz(R2) == pytest.approx(-0.3)  # 0.6 - 0.9
    assert M.forgetting(R2) == pytest.approx(0.3)  # 0.9 - 0.6
    assert M.transfer_metrics(R2.tolist())["in_distribution"] == pytest.approx(0.85)  # nested lists accepted


def test_nan_cells_are_ignored_without_warnings():
    E = E3.copy()
    E[0, :] = np.nan  # no checkpoint for step 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.in_distribution(E) == pytest.approx(0.65)  # (0.6 + 0.7) / 2
        assert M.backward_transfer(E) == pytest.approx(0.4)  # (0.4 + 0.3 + 0.5) / 3
        assert M.forward_transfer(E) == pytest.approx(0.3)  # only E[1, 2] is left
        assert M.average_incremental_accuracy(E) == pytest.approx(0.5)  # row 0 dropped: (0.5 + 0.5) / 2
        assert M.bwt_lopez_paz(E) == pytest.approx(-0.1)  # 0.3 - NaN dropped; 0.5 - 0.6
        assert M.forgetting(E) == pytest.approx(0.1)  # task 0: max(NaN, 0.4) - 0.3; task 1: 0.6 - 0.5
        E[1, 0] = np.nan  # task 0 never evaluated before the end: its forgetting is undefined
        assert M.forgetting(E) == pytest.approx(0.1)
        assert math.isnan(M.in_distribution(np.full((2, 2), np.nan)))
        assert math.isnan(M.average_incremental_accuracy(np.full((2, 2), np.nan)))
        assert math.isnan(M.forgetting(np.full((3, 3), np.nan)))


def test_single_step():
    one = np.array([[0.42]])
    assert M.in_distribution(one) == 0.42
    assert M.final_average_accuracy(one) == 0.42
    assert M.average_incremental_accuracy(one) == 0.42
    for f in (M.backward_transfer, M.forward_transfer, M.bwt_lopez_paz, M.forgetting):
        assert math.isnan(f(one))
    c = M.continual_metrics(one)
    assert c["final_average_accuracy"] == 0.42 and math.isnan(c["bwt"]) and math.isnan(c["forgetting"])


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((0, 0)), np.zeros(3), np.zeros((2, 2, 2)), 0.5])
@pytest.mark.parametrize("f", [M.in_distribution, M.backward_transfer, M.forward_transfer, M.transfer_metrics,
                               M.final_average_accuracy, M.average_incremental_accuracy, M.bwt_lopez_paz,
                               M.forgetting, M.continual_metrics])
def test_non_square_or_empty_raises(f, bad):
    with pytest.raises(ValueError):
        f(bad)


def test_geometric_mean():
    assert M.geometric_mean(0.64, 0.25) == pytest.approx(0.4)
    assert M.geometric_mean(0.5, 0.5) == pytest.approx(0.5)
    assert M.geometric_mean(-0.1, 0.5) == 0.0
    assert isinstance(M.geometric_mean(0.25, 1.0), float)
