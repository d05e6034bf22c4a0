"""Class-incremental pieces: GCL estimators against brute-force global partition sums, GDRO
weights and hinge losses by hand, the class-balanced memory, task streams from CIFAR-100's
pickle format and DomainNet's folder/split-file format."""
from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark_builder import task_streams as ts
from pipelines.sinks import webdataset as wds
from training.memory import ClassBalancedMemory
from training.methods.gcl import GlobalContrastiveEstimator
from training.methods.gdro import ClassDRO, class_keys, pairwise_hinge, per_sample_losses


def _features(n=48, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_gcl_moving_average_converges_to_the_global_partition_sums():
    img, txt = _features()
    n, inv_tau = len(img), torch.tensor(2.0)
    sim = img @ txt.T
    h = (sim - sim.diagonal()[:, None]) * inv_tau
    off = ~torch.eye(n, dtype=torch.bool)
    brute = torch.log(torch.where(off, torch.exp(h), 0).sum(1) / (n - 1))  # log of the global mean over negatives
    est = GlobalContrastiveEstimator(gamma=0.05)
    rng = np.random.default_rng(0)
    history = []
    for epoch in range(400):
        for batch in np.array_split(rng.permutation(n), 4):
            est.loss(img[batch], txt[batch], batch.tolist(), inv_tau)
        if epoch >= 200:
            history.append([est.log_u[i][0] for i in range(n)])
    avg_u = np.log(np.exp(np.array(history)).mean(0))
    assert np.abs(avg_u - brute.numpy()).max() < 0.05  # within 5% of the global sums, every sample
    single_batch = GlobalContrastiveEstimator(gamma=0.05)
    single_batch.loss(img[:12], txt[:12], list(range(12)), inv_tau)
    assert np.abs(np.array([single_batch.log_u[i][0] for i in range(12)]) - brute[:12].numpy()).max() > 0.05


def test_gcl_first_visit_gradient_is_the_batch_logsumexp_gradient_and_stays_finite():
    img, txt = _features(n=10)
    img.requires_grad_(True)
    inv_tau = torch.tensor(3.0)
    GlobalContrastiveEstimator(gamma=0.9).loss(img, txt, list(range(10)), inv_tau).backward()
    ours = img.grad.clone()
    img.grad = None
    sim = img @ txt.T
    off = ~torch.eye(10, dtype=torch.bool)
    ref = 0
    for h in ((sim - sim.diagonal()[:, None]) * inv_tau, (sim.T - sim.diagonal()[:, None]) * inv_tau):
        ref = ref + (torch.logsumexp(h.masked_fill(~off, -torch.inf), dim=1) - math.log(9)).mean()
    ref.backward()
    assert torch.allclose(ours, img.grad, atol=1e-5)
    big = GlobalContrastiveEstimator().loss(img.detach(), txt, list(range(10)), torch.tensor(1e4))
    assert torch.isfinite(big)  # exp(1e4 * s) would overflow without the shift


def test_gcl_state_round_trips():
    img, txt = _features(n=8)
    a = GlobalContrastiveEstimator(0.5)
    a.loss(img, txt, list(range(100, 108)), torch.tensor(2.0))
    b = GlobalContrastiveEstimator()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.log_u == a.log_u and b.gamma == 0.5


def test_gcl_same_class_pairs_are_positives_never_negatives():
    """Hand-built batch of class prompts with repeated classes: a, a, b, c, b (token rows)."""
    img, _ = _features(n=5, d=6, seed=3)
    protos = F.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(4)), dim=-1)
    cls = [0, 0, 1, 2, 1]
    txt = protos[cls]  # identical prompts give identical text features
    tokens = torch.tensor([[10 + c, 7] for c in cls])
    tau = 0.5
    est = GlobalContrastiveEstimator(gamma=1.0)
    loss = est.loss(img, txt, list(range(5)), 1 / tau, tokens)
    sim = img @ txt.T
    ref, log_u = 0.0, {}
    for direction, S in enumerate((sim, sim.T)):
        terms = []
        for i in range(5):
            negs = [j for j in range(5) if cls[j] != cls[i]]  # by hand: other classes only
            h = [(S[i, j] - sim[i, i]) / tau for j in negs]
            g = sum(math.exp(float(x)) for x in h) / len(negs)
            log_u[(i, direction)] = math.log(g)
            terms.append(sum(math.exp(float(x)) / g * float(x) for x in h) / len(negs))
        ref += sum(terms) / 5
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert all(est.log_u[i][d] == pytest.approx(v, rel=1e-5) for (i, d), v in log_u.items())
    # against the diagonal-only mask: there, text 1 (class a's prompt) counts image 0 (class a) as a
    # negative, and the text->image term pushes image 0 away from its own class prompt
    img0 = img.clone().requires_grad_(True)
    GlobalContrastiveEstimator(gamma=1.0).loss(img0, txt, list(range(5)), 1 / tau, tokens).backward()
    naive = img.clone().requires_grad_(True)
    GlobalContrastiveEstimator(gamma=1.0).loss(naive, txt, list(range(5)), 1 / tau).backward()  # diagonal mask only
    same_class_dir = protos[0]
    assert float(naive.grad[0] @ same_class_dir) > float(img0.grad[0] @ same_class_dir)
    # a batch of one class has no negatives: no loss, no estimator update
    one = GlobalContrastiveEstimator()
    assert float(one.loss(img[:2], txt[:2], [0, 1], 2.0, tokens[:2])) == 0.0 and one.log_u == {}


def test_gcl_fixed_temperature_is_the_default_and_learned_is_an_option():
    from training.methods.gcl import GCL

    assert GCL().tau == 0.1 and GCL({"tau": "learned"}).tau == "learned"
    with pytest.raises(ValueError, match="tau"):
        GCL({"tau": 0})


def test_gdro_two_updates_by_hand():
    """Pairwise squared hinge, per-class compositional estimators, KL-DRO weights over all seen
    classes, computed by hand with plain floats for two batches."""
    lam, lam_in, gamma, m = 0.5, 2.0, 0.25, 1.0
    dro = ClassDRO(lam=lam, gamma=gamma, lam_inner=lam_in)

    def by_hand(S, target, state):
        """S[i][j]: similarity of image i to prompt j; returns (loss, weights of the batch's classes)."""
        K = len(S[0])
        pairs = {}
        for i, row in enumerate(S):
            k = target[i]
            for j in range(K):
                if j != k:
                    pairs.setdefault(k, []).append(max(0.0, m - (row[k] - row[j])) ** 2)
        surrogate = {}
        for k, ls in pairs.items():
            g = sum(math.exp(x / lam_in) for x in ls) / len(ls)
            u = g if k not in state else (1 - gamma) * state[k] + gamma * g
            state[k] = u
            surrogate[k] = sum(math.exp(x / lam_in) / u * x for x in ls) / len(ls)
        z = sum(math.exp(lam_in * math.log(u) / lam) for u in state.values())
        p = {k: math.exp(lam_in * math.log(state[k]) / lam) / z for k in pairs}
        return sum(p[k] * surrogate[k] for k in pairs), [p[k] for k in sorted(pairs)]

    state: dict = {}
    # batch 1: classes A (samples 0, 1) and B (sample 2)
    S1 = [[0.9, 0.2], [0.1, 0.4], [0.3, 0.8]]
    t1 = [0, 0, 1]
    keys1 = [("A",), ("B",)]
    loss, p = dro.loss(keys1, torch.tensor(t1), *pairwise_hinge(torch.eye(3), torch.tensor(S1).T.contiguous(), torch.tensor(t1), m))
    ref, ref_p = by_hand(S1, t1, {})
    state = {0: math.exp(dro.log_u[("A",)]), 1: math.exp(dro.log_u[("B",)])}
    assert float(loss) == pytest.approx(ref, rel=1e-5) and p.tolist() == pytest.approx(ref_p, rel=1e-5)
    hand_state = {}
    by_hand(S1, t1, hand_state)
    assert state == pytest.approx(hand_state, rel=1e-5)
    # batch 2: classes B (sample 0) and C (sample 1); A is not in the batch but keeps its weight share
    S2 = [[0.5, 0.6], [0.2, 0.3]]
    t2 = [0, 1]
    loss2, p2 = dro.loss([("B",), ("C",)], torch.tensor(t2), *pairwise_hinge(torch.eye(2), torch.tensor(S2).T.contiguous(), torch.tensor(t2), m))
    hand = {"A": hand_state[0], "B": hand_state[1]}
    # by hand, keyed by class name: B is updated, C is new, A stays
    ls_b = [max(0.0, m - (0.5 - 0.6)) ** 2]
    ls_c = [max(0.0, m - (0.3 - 0.2)) ** 2]
    g_b, g_c = math.exp(ls_b[0] / lam_in), math.exp(ls_c[0] / lam_in)
    hand["B"] = (1 - gamma) * hand["B"] + gamma * g_b
    hand["C"] = g_c
    w = {k: math.exp(lam_in * math.log(u) / lam) for k, u in hand.items()}
    z = sum(w.values())
    pB, pC = w["B"] / z, w["C"] / z  # normalised over A, B and C
    ref2 = pB * g_b / hand["B"] * ls_b[0] + pC * g_c / hand["C"] * ls_c[0]
    assert float(loss2) == pytest.approx(ref2, rel=1e-5) and p2.tolist() == pytest.approx([pB, pC], rel=1e-5)
    assert pB + pC < 1.0  # A's share is left out of this batch's weights
    assert {k[0]: math.exp(v) for k, v in dro.log_u.items()} == pytest.approx(hand, rel=1e-5)
    # one class only: no negatives, no loss, no update
    before = dict(dro.log_u)
    loss3, p3 = dro.loss([("A",)], torch.tensor([0, 0]), *pairwise_hinge(torch.eye(2), torch.ones(1, 2), torch.tensor([0, 0]), m))
    assert float(loss3) == 0.0 and len(p3) == 0 and dro.log_u == before


def test_gdro_gradient_is_that_of_the_compositional_objective_on_a_first_visit():
    """gamma = 1: u is the batch mean, so the loss's gradient equals that of
    lambda * log(mean over classes of exp(L_k / lambda)) with L_k = lambda_in log mean exp(l / lambda_in)."""
    img, txt = _features(n=6, d=5, seed=5)
    img.requires_grad_(True)
    protos = txt[:3].detach()
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    lam, lam_in = 0.7, 1.5
    dro = ClassDRO(lam=lam, gamma=1.0, lam_inner=lam_in)
    loss, _ = dro.loss([("a",), ("b",), ("c",)], target, *pairwise_hinge(img, protos, target, 1.0))
    loss.backward()
    ours = img.grad.clone()
    img.grad = None
    pl, neg = pairwise_hinge(img, protos, target, 1.0)
    L = torch.stack([lam_in * torch.log(torch.exp(pl[target == k][neg[target == k]] / lam_in).mean()) for k in range(3)])
    (lam * torch.logsumexp(L / lam, 0)).backward()
    assert torch.allclose(ours, img.grad, atol=1e-5)


def test_gdro_state_round_trips():
    dro = ClassDRO(lam=2.0, gamma=0.5, lam_inner=3.0)
    target = torch.tensor([0, 1])
    dro.loss([(1, 2), (3, 4)], target, *pairwise_hinge(torch.eye(2), torch.eye(2), target))
    b = ClassDRO()
    b.load_state_dict(json.loads(json.dumps(dro.state_dict())))
    assert b.log_u == dro.log_u and (b.lam, b.gamma, b.lam_inner) == (2.0, 0.5, 3.0)


def test_class_text_losses_and_class_keys_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cls_txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    target = torch.tensor([0, 1])
    # sims: sample 0 -> [1.0, 0.6] (pos 1.0), sample 1 -> [0.0, 0.8] (pos 0.8)
    hinge, neg = pairwise_hinge(img, cls_txt, target, margin=0.5)
    assert hinge[neg].tolist() == pytest.approx([max(0, 0.5 + 0.6 - 1.0) ** 2, max(0, 0.5 + 0.0 - 0.8) ** 2])  # 0.01, 0
    ce = per_sample_losses(img, cls_txt, target, scale=10.0)
    assert ce[0].item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + math.exp(6))), rel=1e-5)
    keys, idx = class_keys(torch.tensor([[5, 1], [7, 2], [5, 1]]))
    assert keys == [(5, 1), (7, 2)] and idx.tolist() == [0, 1, 0]


def test_ewc_and_lwf_for_class_streams_reuse_the_tic_classes_with_memory_and_class_text_loss():
    from training.methods import methods
    from training.methods.base import Method
    from training.methods.class_memory import ClassMemoryData
    from training.methods.clip_replay import ClassTextLoss
    from training.methods.ewc import EWC
    from training.methods.lwf import LwF

    cil = methods("cil")
    for name, tic in (("ewc", EWC), ("lwf", LwF)):
        m = cil[name]({"memory": 8})
        assert isinstance(m, tic) and isinstance(m, ClassMemoryData) and isinstance(m, ClassTextLoss) and m.name == name
    tokens = torch.tensor([[5, 1], [7, 2], [5, 1], [9, 3]])
    m = cil["ewc"]({})
    assert m.texts(tokens).tolist() == [[5, 1], [7, 2], [9, 3]]  # distinct class prompts, first-seen order
    assert Method().texts(tokens) is tokens  # the TiC protocols keep in-batch captions
    img, txt = _features(4, 8)
    _, target = class_keys(tokens)
    assert m.contrastive(None, img, txt[:3], 10.0, tokens).item() == pytest.approx(
        F.cross_entropy(10.0 * img @ txt[:3].T, target).item())


def test_class_balanced_memory_quotas_shrink_and_sample_from_everything():
    mem = ClassBalancedMemory(size=10, seed=1)
    first = {0: [f"a{i}" for i in range(20)], 1: [f"b{i}" for i in range(20)]}
    assert mem.update("t0", first) == {0: 5, 1: 5}
    kept0 = list(mem.members[0])
    comp = mem.update("t1", {2: [f"c{i}" for i in range(20)], 3: [f"d{i}" for i in range(3)]})
    assert comp == {0: 3, 1: 3, 2: 2, 3: 2} and len(mem) == 10  # 10 // 4 = 2, first two classes get the remainder
    assert mem.members[0] == kept0[:3]  # shrinking keeps a subset of what was kept
    fresh = ClassBalancedMemory(size=10, seed=1)
    fresh.update("all", {0: first[0]})
    assert set(mem.members[0]) <= set(fresh.members[0])  # same rule as sampling from all of the class
    mem.update("t2-more-of-class-3", {3: [f"d{i}" for i in range(3, 30)]})  # domain-incremental: new data, same class
    assert len(mem.members[3]) == 2 and len(mem) == 10
    assert [h["total"] for h in mem.history] == [10, 10, 10]
    assert ClassBalancedMemory(0).update("t", first) == {0: 0, 1: 0}


def _write_cifar100(root, per_class=2, classes=100):
    base = os.path.join(root, "cifar-100-python")
    os.makedirs(base)
    rng = np.random.default_rng(0)
    for name, n in (("train", per_class), ("test", 1)):
        labels = [c for c in range(classes) for _ in range(n)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None] * 2  # red channel encodes the class
        data[:, 1024:] = 128
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"filenames": [b"x"] * len(labels)}, f)
    with open(os.path.join(base, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"class_{c}".encode() for c in range(classes)]}, f)


def test_cifar100_pickle_stream_splits_classes_into_disjoint_tasks(tmp_path):
    _write_cifar100(str(tmp_path / "cifar"))
    ds = ts.read_cifar100(str(tmp_path / "cifar"))
    assert len(ds.classnames) == 100 and len(ds.train) == 200 and len(ds.test) == 100
    img = np.asarray(Image.open(__import__("io").BytesIO(ds.train[7].load())))
    assert img.shape == (32, 32, 3) and abs(int(img[..., 0].mean()) - 2 * ds.train[7].cls) <= 3  # channel order kept
    m = ts.write_stream(ds, str(tmp_path / "stream"), "cil", n_tasks=10, seed=3)
    tasks = [set(t["classes"]) for t in m["tasks"]]
    assert all(len(t) == 10 for t in tasks) and set().union(*tasks) == set(range(100))
    assert sum(len(t) for t in tasks) == 100  # disjoint
    assert m["class_order"] == ts.class_incremental(100, 10, seed=3)[0] != ts.class_incremental(100, 10, seed=4)[0]
    shard = os.path.join(tmp_path, "stream", "task0", "train", "00000000.tar")
    samples = list(wds.iter_samples(shard))
    assert len(samples) == 20 == m["tasks"][0]["train"]
    for s in samples:
        meta = json.loads(s["json"])
        assert int(s["cls"]) == meta["cls"] in tasks[0] and s["txt"].decode() == f"a photo of a class {meta['cls']}."
    assert ts.read_manifest(str(tmp_path / "stream"))["tasks"][0]["classes"] == m["tasks"][0]["classes"]


def test_domainnet_folder_and_split_files_give_one_task_per_domain(tmp_path):
    root = tmp_path / "domainnet"
    classes = ["aircraft_carrier", "bee", "cup"]
    for d in ("clipart", "sketch"):
        lines = {"train": [], "test": []}
        for c, name in enumerate(classes):
            os.makedirs(root / d / name)
            for i in range(4):
                Image.new("RGB", (40, 30), (60 * c, 20 * i, 100)).save(root / d / name / f"{i}.jpg")
                lines["test" if i == 3 else "train"].append(f"{d}/{name}/{i}.jpg {c}")
        for k, v in lines.items():
            (root / f"{d}_{k}.txt").write_text("\n".join(v) + "\n")
    ds = ts.read_domainnet(str(root))
    assert ds.classnames == classes and ds.domains == ["clipart", "sketch"] and len(ds.train) == 18
    m = ts.write_stream(ds, str(tmp_path / "dil"), "dil")
    assert [(t["domains"], t["classes"], t["train"], t["test"]) for t in m["tasks"]] == [
        (["clipart"], [0, 1, 2], 9, 3), (["sketch"], [0, 1, 2], 9, 3)]
    s = next(wds.iter_samples(str(tmp_path / "dil" / "task1-sketch" / "train" / "00000000.tar")))
    assert json.loads(s["json"])["domain"] == "sketch" and s["txt"].decode().startswith("a photo of a ")
    (root / "clipart_train.txt").write_text("clipart/bee/0.jpg\n")
    with pytest.raises(ValueError, match="clipart_train.txt:1"):
        ts.read_domainnet(str(root))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        ts.read_cifar100(str(tmp_path))
