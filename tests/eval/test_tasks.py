"""Zero-shot classification, retrieval recalls and the zero-shot classifier on hand-built inputs."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from eval.tasks import classification_metrics, retrieval_metrics
from pipelines.models.encode import zero_shot_classifier

# Images are the 4 basis vectors, so sims[t, i] = TXT[t, i]; every text row has unit norm.
IMG = torch.eye(4)
TXT = torch.tensor([[1.0, 0.0, 0.0, 0.0],    # t0 -> img0: img0 first                   (rank 0)
                    [0.6, 0.8, 0.0, 0.0],    # t1 -> img0: img1 0.8 above               (rank 1)
                    [0.48, 0.36, 0.8, 0.0],  # t2 -> img1: img2 0.8, img0 0.48 above    (rank 2)
                    [0.0, 0.0, 0.6, 0.8],    # t3 -> img2: img3 0.8 above               (rank 1)
                    [0.0, 0.0, 0.0, 1.0],    # t4 -> img3                               (rank 0)
                    [0.0, 0.96, 0.28, 0.0]])  # t5 -> img1                              (rank 0)
T2I = torch.tensor([0, 0, 1, 2, 3, 1])
# image->text, per image column of TXT:
#   img0: own {t0: 1.0, t1: 0.6}, best own t0 ranks first                          (rank 0)
#   img1: own {t2: 0.36, t5: 0.96}; t1 0.8 is above t2 but below t5: second text   (rank 0)
#   img2: own {t3: 0.6}; t2 0.8 above                                               (rank 1)
#   img3: own {t4: 1.0}                                                             (rank 0)


def test_retrieval_recalls_by_hand():
    m = retrieval_metrics(IMG, TXT, T2I, ks=(1, 2, 3, 10))
    # text->image ranks [0, 1, 2, 1, 0, 0]
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 6)
    assert m["image_retrieval_recall@2"] == pytest.approx(5 / 6)
    assert m["image_retrieval_recall@3"] == 1.0
    assert m["image_retrieval_recall@10"] == 1.0  # capped at 4 images
    # image->text ranks [0, 0, 1, 0]
    assert m["text_retrieval_recall@1"] == 0.75
    assert m["text_retrieval_recall@2"] == 1.0
    assert m["text_retrieval_recall@10"] == 1.0  # capped at 6 texts
    assert m["mean_recall@1"] == pytest.approx((0.5 + 0.75) / 2)  # 0.625
    assert all(isinstance(v, float) for v in m.values())
    assert set(m) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 2, 3, 10)} | {"mean_recall@1"}


def test_retrieval_chunking_and_default_ks():
    whole = retrieval_metrics(IMG, TXT, T2I)
    assert retrieval_metrics(IMG, TXT, T2I, chunk=1) == whole == retrieval_metrics(IMG, TXT, T2I, chunk=4)
    assert "mean_recall@1" in retrieval_metrics(IMG, TXT, T2I, ks=(5,))  # k=1 not requested, still reported
    assert whole["image_retrieval_recall@5"] == 1.0 and whole["text_retrieval_recall@5"] == 1.0


def test_image_without_text_is_a_miss():
    img = torch.eye(2)
    txt = torch.tensor([[1.0, 0.0]])
    m = retrieval_metrics(img, txt, torch.tensor([0]), ks=(1, 5))
    assert m["text_retrieval_recall@1"] == 0.5 and m["text_retrieval_recall@5"] == 0.5
    assert m["image_retrieval_recall@1"] == 1.0
    with pytest.raises(ValueError):
        retrieval_metrics(img, txt, torch.tensor([0, 1]))


def _clip_benchmark_recall(scores, positive_pairs, k):
    """clip_benchmark's ``recall_at_k``: share of a query's positives found in its top k."""
    topk = torch.topk(scores, k, dim=1).indices
    onehot = F.one_hot(topk, num_classes=scores.shape[1])
    hits = (onehot * positive_pairs[:, None, :]).sum(dim=(1, 2))
    return hits / positive_pairs.sum(dim=1)


def test_retrieval_matches_clip_benchmark_on_random_features():
    g = torch.Generator().manual_seed(0)
    n_img, d = 40, 16
    img = F.normalize(torch.randn(n_img, d, generator=g), dim=1)
    t2i = torch.cat([torch.arange(n_img), torch.randint(0, n_img, (60,), generator=g)])
    txt = F.normalize(img[t2i] + 1.5 * torch.randn(len(t2i), d, generator=g), dim=1)
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(t2i)), t2i] = True
    m = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(
            float((_clip_benchmark_recall(scores, positive, k) > 0).float().mean()))
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(
            float((_clip_benchmark_recall(scores.T, positive.T, k) > 0).float().mean()))
    assert 0.0 < m["image_retrieval_recall@1"] < 1.0 and 0.0 < m["text_retrieval_recall@1"] < 1.0


def test_classification_top_k_capping_and_mean_per_class():
    # image_features = I, so logits = classifier: one row per sample, one column per class
    logits = torch.tensor([[0.9, 0.1, 0.0],   # label 0: top-1 hit
                           [0.2, 0.7, 0.1],   # label 0: top-1 class 1, top-2 hit
                           [0.1, 0.5, 0.3],   # label 0: top-2 {1, 2} miss, top-3 hit
                           [0.0, 0.2, 0.8],   # label 2: top-1 hit
                           [0.6, 0.3, 0.1]])  # label 2: top-2 {0, 1} miss, top-3 hit
    labels = torch.tensor([0, 0, 0, 2, 2])
    m = classification_metrics(torch.eye(5), logits, labels, topk=(1, 2, 5), mean_per_class=True)
    assert m["acc1"] == pytest.approx(2 / 5)
    assert m["acc2"] == pytest.approx(3 / 5)
    assert m["acc5"] == 1.0  # capped at 3 classes
    # class 0: 1/3, class 2: 1/2, class 1 absent from labels: (1/3 + 1/2) / 2 = 5/12
    assert m["mean_per_class_recall"] == pytest.approx(5 / 12)
    assert all(isinstance(v, float) for v in m.values())
    assert set(classification_metrics(torch.eye(5), logits, labels)) == {"acc1", "acc5"}


def test_zero_shot_classifier_matches_per_class_reference(tiny_clip):
    model, tokenizer = tiny_clip
    classnames = ["cat", "dog", "red car"]
    templates = ["a photo of a {c}.", "a drawing of a {c}.", "{c} in the wild"]
    batches = []
    encode = model.encode_text

    def recording_encode(tokens):
        batches.append(len(tokens))
        return encode(tokens)

    model.encode_text = recording_encode
    try:
        W = zero_shot_classifier(model, tokenizer, classnames, templates, batch_size=4)
    finally:
        del model.encode_text
    assert batches == [4, 4, 1]  # 9 texts batched across classes, not one call per class
    assert W.shape == (16, 3) and not W.requires_grad  # tiny_clip's embedding width
    assert torch.allclose(W.norm(dim=0), torch.ones(3), atol=1e-6)
    with torch.no_grad():
        for j, c in enumerate(classnames):
            texts = [f"a photo of a {c}.", f"a drawing of a {c}.", f"{c} in the wild"]
            e = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).mean(dim=0)
            assert torch.allclose(W[:, j], F.normalize(e, dim=0), atol=1e-6)
    assert not torch.allclose(W[:, 0], W[:, 1])


def test_zero_shot_classifier_agrees_with_open_clip(tiny_clip):
    import open_clip

    model, tokenizer = tiny_clip
    classnames, templates = ["cat", "dog", "bird", "fish"], ["a photo of a {c}.", "art of a {c}"]
    ours = zero_shot_classifier(model, tokenizer, classnames, templates, batch_size=3)
    # open_clip's own template format is str.format's positional {}
    ref = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, ["a photo of a {}.", "art of a {}"],
                                               num_classes_per_batch=2)
    assert torch.allclose(ours, ref, atol=1e-6)
    with pytest.raises(ValueError):
        zero_shot_classifier(model, tokenizer, [], templates)
    labels = torch.arange(4)
    m = classification_metrics(ours.T, ours, labels, topk=(1,))  # each class's own embedding as image feature
    assert m["acc1"] == 1.0


def test_a_steps_years_pooled_into_one_gallery():
    """TiC-YFCC's recipe evaluates one test set per step: two years whose single pair each is
    trivially found (recall@1 100% alone) miss each other's images once pooled, and a third set's
    text-to-image indices shift by the images before it."""
    from eval.dynamic import pooled_features

    a = {"image": torch.tensor([[1.0, 0.0]]), "text": torch.tensor([[0.0, 1.0]]), "text_to_image": torch.tensor([0])}
    b = {"image": torch.tensor([[0.0, 1.0]]), "text": torch.tensor([[1.0, 0.0]]), "text_to_image": torch.tensor([0])}
    c = {"image": torch.tensor([[0.6, 0.8], [0.8, 0.6]]), "text": torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.6, 0.8]]),
         "text_to_image": torch.tensor([1, 0, 0])}
    for f in (a, b):
        assert retrieval_metrics(f["image"], f["text"], f["text_to_image"])["mean_recall@1"] == 1.0
    ab = pooled_features([a, b])
    assert ab["text_to_image"].tolist() == [0, 1]
    assert retrieval_metrics(ab["image"], ab["text"], ab["text_to_image"])["mean_recall@1"] == 0.0
    abc = pooled_features([a, b, c])
    assert abc["image"].shape == (4, 2) and abc["text"].shape == (5, 2)
    assert abc["text_to_image"].tolist() == [0, 1, 3, 2, 2]
