"""Zero-shot classification and image-text retrieval on precomputed, normalised features.

Semantics follow clip_benchmark (``zeroshot_classification`` / ``zeroshot_retrieval``); the
classifier comes from ``pipelines.models.encode.zero_shot_classifier``. Everything is batched
matrix algebra, no loop over samples.
"""
from __future__ import annotations

import torch


def classification_metrics(image_features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor,
                           topk=(1, 5), mean_per_class: bool = False) -> dict:
    """Top-k accuracy ``acc{k}`` (k capped at the number of classes, where clip_benchmark's
    ``topk`` would fail) and, if asked, the mean over classes present in ``labels`` of their
    top-1 recall, which does not let frequent classes dominate."""
    logits = image_features.float() @ classifier.to(image_features.device).float()
    labels = labels.to(logits.device).long()
    n_classes = logits.shape[1]
    pred = logits.topk(min(max(topk), n_classes), dim=1).indices
    correct = pred == labels[:, None]
    out = {f"acc{k}": float(correct[:, :min(k, n_classes)].any(dim=1).float().mean()) for k in topk}
    if mean_per_class:
        counts = torch.bincount(labels, minlength=n_classes)
        hits = torch.bincount(labels[correct[:, 0]], minlength=n_classes)
        present = counts > 0
        out["mean_per_class_recall"] = float((hits[present].float() / counts[present].float()).mean())
    return out


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks=(1, 5, 10), chunk: int = 4096) -> dict:
    """Recall@k both ways, as clip_benchmark's ``zeroshot_retrieval``: ``image_retrieval_recall@k``
    (text->image: the text's image is in its top k) and ``text_retrieval_recall@k`` (image->text:
    any of the image's texts is in its top k; an image without texts counts as a miss).
    ``mean_recall@1`` is their mean at k=1, the number TiC-CLIP reports. A rank is the number
    of candidates scored strictly higher than the best positive, so exact ties resolve in the
    positive's favour where ``topk`` would pick arbitrarily; k is capped at the candidate count.
    Rows are processed ``chunk`` at a time to bound the similarity matrix held in memory."""
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    text_to_image = text_to_image.to(image_features.device).long()
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},), got {tuple(text_to_image.shape)}")

    t2i_rank = []
    for s in range(0, n_txt, chunk):
        sims = text_features[s:s + chunk] @ image_features.T
        t2i_rank.append((sims > sims.gather(1, text_to_image[s:s + chunk, None])).sum(dim=1))

    i2t_rank = []
    for s in range(0, n_img, chunk):
        sims = image_features[s:s + chunk] @ text_features.T
        own = text_to_image[None, :] == torch.arange(s, s + len(sims), device=sims.device)[:, None]
        best_own = sims.masked_fill(~own, -torch.inf).max(dim=1, keepdim=True).values
        i2t_rank.append((sims > best_own).sum(dim=1).masked_fill(~own.any(dim=1), n_txt))

    def recall(ranks: list, k: int, n: int) -> float:
        return float((torch.cat(ranks) < min(k, n)).float().mean()) if ranks else float("nan")

    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = recall(t2i_rank, k, n_img)
        out[f"text_retrieval_recall@{k}"] = recall(i2t_rank, k, n_txt)
    out["mean_recall@1"] = 0.5 * (recall(t2i_rank, 1, n_img) + recall(i2t_rank, 1, n_txt))
    return out
