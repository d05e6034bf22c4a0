"""Encoding with a CLIP model, in one place: batched image and text embeddings, L2-normalised
in float32 (whatever the model's precision) and returned on the CPU, and the zero-shot
classifier built from class names and templates.

One template format: ``{c}`` stands for the class name (``"a photo of a {c}."``), as in
clip_benchmark's ``zeroshot_classification_templates.txt`` and this project's eval sets.

Used by CLIP scoring (``pipelines.transforms.clip_score``), the CLIP filters
(``benchmark_builder.filtering``), evaluation (``eval.embed``, ``eval.incremental``) and the
FoMo concept orderings (``training.fomo.streams``).
"""
from __future__ import annotations

import functools
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import Compose, Normalize, ToTensor
from torchvision.transforms.functional import to_tensor

BATCH_SIZE = 256


def fill(template: str, classname: str) -> str:
    """``template`` with ``{c}`` replaced by ``classname``."""
    try:
        return template.format(c=classname)
    except (IndexError, KeyError) as e:
        raise ValueError(f"zero-shot template {template!r}: write the class name as {{c}}, the one template "
                         "format (e.g. 'a photo of a {c}.')") from e


@functools.lru_cache(maxsize=1)
def _image_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="preprocess")


def _split_to_tensor(preprocess) -> tuple[Callable, Normalize] | None:
    """(the PIL steps, the final Normalize) of a torchvision ``Compose`` that ends with
    ToTensor then Normalize (open_clip's, timm's); None for any other preprocess."""
    steps = getattr(preprocess, "transforms", None)
    if not steps or len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
        return None
    if steps[-1].inplace:
        return None
    return Compose(list(steps[:-2])), steps[-1]


def decode_image(data: bytes, size: int) -> Image.Image:
    """An encoded image as RGB; a JPEG decoded at 1/2..1/8 scale when that still covers ``size``
    (libjpeg's DCT scaling, Pillow's ``draft``)."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))
    return img.convert("RGB")


def preprocess_encoded(preprocess, datas: Sequence[bytes], size: int) -> torch.Tensor:
    """[N, C, H, W]: each encoded image decoded (a JPEG at reduced scale when ``size`` allows:
    Pillow's ``draft``), converted to RGB and preprocessed, the same values as stacking
    ``preprocess(image)`` image by image. The decode and PIL steps of the images run on a thread
    per core (Pillow releases the GIL while it decodes and resizes); the tensor conversion and
    the normalisation run once on the stacked batch (the same elementwise float ops)."""
    split = _split_to_tensor(preprocess)

    def pil(data: bytes):
        img = decode_image(data, size)
        return split[0](img) if split else preprocess(img)

    images = list(_image_threads().map(pil, datas)) if len(datas) > 1 else [pil(d) for d in datas]
    if not split:
        return torch.stack(images)
    if any(getattr(img, "mode", None) != "RGB" for img in images) or len({img.size for img in images}) != 1:
        return torch.stack([split[1](to_tensor(img)) for img in images])  # not one RGB size: image by image
    batch = torch.from_numpy(np.stack([np.asarray(img) for img in images])).permute(0, 3, 1, 2).contiguous()
    batch = batch.to(dtype=torch.get_default_dtype()).div(255)
    norm = split[1]
    mean = torch.as_tensor(norm.mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(norm.std, dtype=batch.dtype).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)


def normalize(features: torch.Tensor) -> torch.Tensor:
    """Rows L2-normalised, in float32."""
    return F.normalize(features.float(), dim=-1)


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor], device="cpu",
                  batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """[N, D] normalised image embeddings (CPU, float32) of preprocessed images (a tensor
    [N, C, H, W] of any float dtype, or a list of [C, H, W] tensors), ``batch_size`` at a time."""
    out = []
    for s in range(0, len(images), batch_size):
        batch = images[s:s + batch_size]
        batch = batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
        out.append(normalize(model.encode_image(batch.to(device, torch.float32))).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Callable, texts: Sequence[str], device="cpu",
                 batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """[M, D] normalised text embeddings (CPU, float32), ``batch_size`` texts per forward pass."""
    texts = list(texts)
    out = [normalize(model.encode_text(tokenizer(texts[s:s + batch_size]).to(device))).cpu()
           for s in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def zero_shot_classifier(model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str],
                         templates: Sequence[str], device="cpu", batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """[embed_dim, n_classes] (CPU, float32): per class, the mean of its normalised template
    embeddings, normalised again (open_clip's ``build_zero_shot_classifier``). The texts of all
    classes are encoded together, ``batch_size`` at a time."""
    classnames, templates = list(classnames), list(templates)
    if not classnames or not templates:
        raise ValueError("zero_shot_classifier needs at least one class name and one template")
    texts = [fill(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, device, batch_size).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T
