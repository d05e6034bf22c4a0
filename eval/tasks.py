"""Zero-shot classification and image-text retrieval on precomputed, normalised features.

Semantics follow clip_benchmark (``zeroshot_classification`` / ``zeroshot_retrieval``) and
open_clip's ``build_zero_shot_classifier``; everything is batched matrix algebra, no loop
over samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _format(template: str, c: str) -> str:
    return template.format(c=c) if "{c}" in template else template.format(c)


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, classnames, templates, device="cpu", batch_size=256) -> torch.Tensor:
    """[embed_dim, n_classes]: per class, the mean of its normalised template embeddings, normalised."""
    texts = [_format(t, c) for c in classnames for t in templates]
    feats = []
    for i in range(0, len(texts), batch_size):
        feats.append(F.normalize(model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float(), dim=-1))
    emb = torch.cat(feats).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T


def classification_metrics(image_features, classifier, labels, topk=(1, 5), mean_per_class=False) -> dict:
    logits = image_features @ classifier
    labels = labels.to(logits.device)
    n_classes = logits.shape[1]
    maxk = min(max(topk), n_classes)
    pred = logits.topk(maxk, dim=1).indices
    correct = pred == labels[:, None]
    out = {f"acc{k}": float(correct[:, : min(k, n_classes)].any(dim=1).float().mean()) for k in topk}
    if mean_per_class:
        present = torch.unique(labels)
        hits = torch.zeros(n_classes).index_add_(0, labels.cpu(), correct[:, 0].float().cpu())
        counts = torch.bincount(labels.cpu(), minlength=n_classes).float()
        out["mean_per_class_recall"] = float((hits[present.cpu()] / counts[present.cpu()]).mean())
    return out


def retrieval_metrics(image_features, text_features, text_to_image, ks=(1, 5, 10), chunk=4096) -> dict:
    """Text->image recall@k ("image_retrieval") and image->text recall@k ("text_retrieval"), as
    clip_benchmark; ``mean_recall@1`` is their mean, the number TiC-CLIP reports."""
    n_img = image_features.shape[0]
    text_to_image = text_to_image.to(image_features.device)
    out = {}
    ranks_t2i = []
    for s in range(0, text_features.shape[0], chunk):
        sims = text_features[s:s + chunk] @ image_features.T
        target = sims.gather(1, text_to_image[s:s + chunk, None])
        ranks_t2i.append((sims > target).sum(dim=1))  # images scored strictly above the right one
    ranks_t2i = torch.cat(ranks_t2i)
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float((ranks_t2i < min(k, n_img)).float().mean())
    n_txt = text_features.shape[0]
    best_rank = torch.full((n_img,), n_txt, dtype=torch.long, device=image_features.device)
    for s in range(0, n_img, chunk):
        sims = image_features[s:s + chunk] @ text_features.T  # [chunk, n_txt]
        own = text_to_image[None, :] == torch.arange(s, min(s + chunk, n_img), device=sims.device)[:, None]
        own_best = torch.where(own, sims, torch.full_like(sims, -torch.inf)).max(dim=1).values
        best_rank[s:s + chunk] = (sims > own_best[:, None]).sum(dim=1)
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = float((best_rank < min(k, n_txt)).float().mean())
    out["mean_recall@1"] = 0.5 * (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"])
    return out
