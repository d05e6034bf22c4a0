"""Merge operators on tiny state dicts with values worked out by hand, and on real modules."""
from __future__ import annotations

import math

import pytest
import torch

from training.merging import MERGERS, ema, interpolate, linear, slerp, task_arithmetic, ties


def sd(**vals):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in vals.items()}


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype))


def test_linear_weighted_and_uniform():
    a, b = sd(w=[1.0, 2.0]), sd(w=[3.0, 6.0])
    close(linear([a, b])["w"], [2.0, 4.0])
    # weights [1, 3] normalise to [0.25, 0.75]: 0.25 * 1 + 0.75 * 3 = 2.5, 0.25 * 2 + 0.75 * 6 = 5
    close(linear([a, b], [1.0, 3.0])["w"], [2.5, 5.0])
    with pytest.raises(ValueError, match="weights"):
        linear([a, b], [1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        linear([a, b], [1.0, -1.0])


def test_interpolate_endpoints_and_middle():
    a, b = sd(w=[1.0, 2.0], v=[[0.1]]), sd(w=[3.0, 6.0], v=[[0.7]])
    out0, out1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    assert all(torch.equal(out0[k], a[k]) and torch.equal(out1[k], b[k]) for k in a)
    close(interpolate(a, b, 0.25)["w"], [1.5, 3.0])  # 0.75 * [1, 2] + 0.25 * [3, 6]
    assert interpolate(a, b, 0.5)["w"] is not a["w"]


def test_slerp_orthogonal_unit_vectors():
    out = slerp(sd(w=[1.0, 0.0]), sd(w=[0.0, 1.0]), 0.5)["w"]
    # omega = pi / 2: sin(pi / 4) / sin(pi / 2) = 1 / sqrt(2) on each
    close(out, [1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert float(out.norm()) == pytest.approx(1.0)


def test_slerp_parallel_antiparallel_zero_fall_back_to_linear():
    close(slerp(sd(w=[1.0, 2.0]), sd(w=[2.0, 4.0]), 0.25)["w"], [1.25, 2.5])  # 0.75 * [1, 2] + 0.25 * [2, 4]
    close(slerp(sd(w=[1.0, 0.0]), sd(w=[-1.0, 0.0]), 0.5)["w"], [0.0, 0.0])
    close(slerp(sd(w=[0.0, 0.0]), sd(w=[2.0, 4.0]), 0.5)["w"], [1.0, 2.0])
    a, b = sd(w=[3.0, -1.0]), sd(w=[0.5, 2.0])
    assert torch.equal(slerp(a, b, 0.0)["w"], a["w"])
    close(slerp(a, b, 1.0)["w"], [0.5, 2.0])


def test_task_arithmetic():
    base, ft1, ft2 = sd(w=[1.0, 1.0]), sd(w=[2.0, 1.0]), sd(w=[1.0, 3.0])
    # task vectors [1, 0] and [0, 2]; 1 + 0.5 * 1 = 1.5, 1 + 0.5 * 2 = 2
    close(task_arithmetic(base, [ft1, ft2], scale=0.5)["w"], [1.5, 2.0])
    close(task_arithmetic(base, [ft1, ft2])["w"], [2.0, 3.0])
    with pytest.raises(ValueError, match="fine-tuned"):
        task_arithmetic(base, [])


def test_ties_by_hand():
    base = sd(w=[1.0] * 5)
    tvs = [[4.0, -1.0, 0.5, 3.0, -2.0],
           [-3.0, 2.0, 1.0, 2.5, 0.5],
           [1.0, -5.0, 0.1, 2.0, 3.0]]
    fts = [sd(w=[1.0 + x for x in tv]) for tv in tvs]
    # density 0.4 of 5 entries keeps the 2 largest magnitudes of each task vector:
    #   [4, 0, 0, 3, 0], [-3, 0, 0, 2.5, 0], [0, -5, 0, 0, 3]
    # sum [1, -5, 0, 5.5, 3] elects signs [+, -, 0, +, +]
    # disjoint mean of the agreeing nonzero entries: [4, -5, 0, (3 + 2.5) / 2 = 2.75, 3]
    close(ties(base, fts, density=0.4)["w"], [5.0, -4.0, 1.0, 3.75, 4.0])  # 1 + merged
    close(ties(base, fts, density=0.4, scale=0.5)["w"], [3.0, -1.5, 1.0, 2.375, 2.5])  # 1 + 0.5 * merged
    # density 1 keeps everything: sum [2, -4, 1.6, 7.5, 1.5] -> all of [+, -, +, +, +]
    #   entry 0: (4 + 1) / 2 = 2.5; 1: (-1 - 5) / 2 = -3; 2: (0.5 + 1 + 0.1) / 3; 3: 7.5 / 3 = 2.5; 4: (0.5 + 3) / 2
    close(ties(base, fts, density=1.0)["w"], [3.5, -2.0, 1.0 + 1.6 / 3, 3.5, 2.75])
    with pytest.raises(ValueError, match="density"):
        ties(base, fts, density=0.0)


def test_ties_trims_over_the_whole_flattened_task_vector():
    base = {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([[1.0, 1.0]]), "n": torch.tensor(5)}
    tvs = [([10.0, 5.0, 1.0], [2.0, 0.5]), ([8.0, -6.0, 0.5], [-1.0, 0.2])]
    fts = [{"a": base["a"] + torch.tensor(a), "b": base["b"] + torch.tensor([b]), "n": torch.tensor(9)} for a, b in tvs]
    # density 0.4 of the 5 entries of the whole vector [a, b] keeps 2 per task, all in "a":
    #   [10, 5, 0 | 0, 0] and [8, -6, 0 | 0, 0]; sum [18, -1, 0, 0, 0] elects [+, -, 0, 0, 0]
    #   (the elected signs sum to 0: no majority sign for the zero entries)
    # disjoint mean: [(10 + 8) / 2, -6, 0 | 0, 0]; scale 0.5 -> a = 1 + [4.5, -3, 0], b unchanged
    # (per tensor, "b" would have kept its largest entry of each task and moved to 1 + 0.5 * 2)
    out = ties(base, fts, density=0.4, scale=0.5)
    close(out["a"], [5.5, -2.0, 1.0])
    close(out["b"], [[1.0, 1.0]])
    assert int(out["n"]) == 5 and list(out) == ["a", "b", "n"]


def test_ties_zero_sum_entries_take_the_majority_sign():
    base = sd(w=[0.0, 0.0, 0.0])
    fts = [sd(w=[3.0, 1.0, 2.0]), sd(w=[-3.0, 2.0, 1.0])]
    # density 1: sum [0, 3, 3] elects [0, +, +]; majority sign of the elected signs: + (sum 2)
    # entry 0 takes +: only 3 agrees -> 3; entries 1, 2: (1 + 2) / 2 = 1.5 and (2 + 1) / 2 = 1.5
    close(ties(base, fts, density=1.0)["w"], [3.0, 1.5, 1.5])


def test_ema():
    close(ema(sd(w=[0.0, 10.0]), sd(w=[10.0, 0.0]), 0.9)["w"], [1.0, 9.0])  # 0.9 * running + 0.1 * new


def _with_buffer(w, count):
    return {"w": torch.tensor(w), "n": torch.tensor(count, dtype=torch.int64), "idx": torch.tensor([count, 0])}


@pytest.mark.parametrize("name", sorted(MERGERS))
def test_int_buffers_come_from_first_dict(name):
    a, b = _with_buffer([1.0, 2.0], 7), _with_buffer([3.0, 5.0], 3)
    args = {"linear": ([a, b],), "task_arithmetic": (a, [b]), "ties": (a, [b])}.get(name, (a, b, 0.5))
    out = MERGERS[name](*args)
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 7
    assert out["idx"].tolist() == [7, 0]
    assert out["w"].dtype == torch.float32 and not torch.equal(out["w"], a["w"])


@pytest.mark.parametrize("name", sorted(MERGERS))
def test_key_mismatch_names_the_keys(name):
    a, b = sd(w=[1.0], extra=[2.0]), sd(w=[1.0], other=[3.0])
    args = {"linear": ([a, b],), "task_arithmetic": (a, [b]), "ties": (a, [b])}.get(name, (a, b, 0.5))
    with pytest.raises(ValueError, match=r"missing \['extra'\], extra \['other'\]"):
        MERGERS[name](*args)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="'w' has shape"):
        linear([sd(w=[1.0, 2.0]), sd(w=[1.0])])


def test_dtype_kept():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}
    out = interpolate(a, b, 0.5)["w"]
    assert out.dtype == torch.bfloat16 and out.tolist() == [2.0, 3.0]


def _model(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m


def test_merge_real_modules_and_load():
    m1, m2 = _model(0), _model(1)
    s1, s2 = m1.state_dict(), m2.state_dict()
    merged = {
        "linear": linear([s1, s2]),
        "interpolate": interpolate(s1, s2, 0.3),
        "slerp": slerp(s1, s2, 0.5),
        "task_arithmetic": task_arithmetic(s1, [s2], scale=0.5),
        "ties": ties(s1, [s2], density=0.5),
        "ema": ema(s1, s2, 0.99),
    }
    x = torch.randn(5, 4)
    for name, state in merged.items():
        target = _model(2)
        target.load_state_dict(state)
        assert all(torch.isfinite(p).all() for p in target.parameters()), name
        assert torch.isfinite(target(x)).all(), name
    target = _model(2)
    target.load_state_dict(merged["linear"])
    for (k, p), p1, p2 in zip(target.state_dict().items(), s1.values(), s2.values()):
        torch.testing.assert_close(p, (p1 + p2) / 2, msg=k)
    torch.testing.assert_close(merged["task_arithmetic"]["0.weight"], merged["linear"]["0.weight"])
    assert all(torch.equal(s1[k], _model(0).state_dict()[k]) for k in s1)
