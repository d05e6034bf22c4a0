"""open_clip_train's scale options for the bundled loop: precision, gradient accumulation and the
global batch, with open_clip_train's names and meanings.

- ``--precision``: ``amp`` (float16 autocast + loss scaler, GPU only), ``amp_bf16`` (bfloat16
  autocast, also on CPU), ``pure_bf16`` (weights, optimizer state and inputs in bfloat16, no
  autocast), ``fp32``; ``auto`` is ``amp`` on a GPU and ``fp32`` on CPU.
- ``--accum-freq K``: one optimizer step per K micro-batches, with the contrastive loss over the
  whole accumulated batch (K x batch per rank), as open_clip_train does it: a first pass without
  gradients caches every micro-batch's features; then each micro-batch is re-encoded with
  gradients and its features take their place among the cached ones, the loss of the whole batch
  is computed and back-propagated. The sum of the K backward passes is the gradient of the large
  batch's loss, since the towers' parameters reach the loss only through the re-encoded
  micro-batch's features. One difference from open_clip_train: the learned temperature gets its
  gradient in one of the K passes only (open_clip_train adds it K times), so the step equals the
  large batch's exactly (``tests/training/test_scale_options.py``). With DDP the first K-1
  passes run under ``no_sync``: gradients are all-reduced once per step.
  Only methods whose loss is the task loss of the batch's features (``Method.loss`` and
  ``Method.texts`` not overridden: sequential, cumulative-*, oracle, patching, the FoMo update
  methods, ...) accumulate; a method with its own per-batch terms or state (LwF, EWC, SI, GCL,
  GDRO, ...) is refused for K > 1 with one line.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from training.methods.base import Method, clip_features

PRECISIONS = ("auto", "amp", "amp_bf16", "pure_bf16", "fp32")


@dataclass(frozen=True)
class Precision:
    name: str  # resolved: amp | amp_bf16 | pure_bf16 | fp32
    device_type: str  # cpu | cuda

    @classmethod
    def resolve(cls, precision: str, device: str) -> "Precision":
        device_type = "cuda" if device.startswith("cuda") else "cpu"
        if precision not in PRECISIONS:
            raise ValueError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if precision == "auto":
            precision = "amp" if device_type == "cuda" else "fp32"
        if precision == "amp" and device_type != "cuda":
            raise ValueError("--precision amp (float16 with a loss scaler) needs a GPU; use amp_bf16 or fp32 on CPU")
        return cls(precision, device_type)

    def autocast(self):
        if self.name == "amp":
            return torch.autocast(self.device_type, dtype=torch.float16)
        if self.name == "amp_bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def input_dtype(self):
        return torch.bfloat16 if self.name == "pure_bf16" else None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(torch.bfloat16) if self.name == "pure_bf16" else model

    def scaler(self):
        return torch.amp.GradScaler("cuda") if self.name == "amp" else None


def accumulates(method: Method) -> bool:
    """Whether the method's loss is the task loss of the batch's features, which accumulation
    reproduces over the accumulated batch. A wrapper (FoMo's mixture) is judged by the method it
    wraps, its ``inner``."""
    cls = type(getattr(method, "inner", method))
    return cls.loss is Method.loss and cls.texts is Method.texts


def check_accumulation(method: Method, accum_freq: int) -> None:
    if accum_freq < 1:
        raise ValueError(f"--accum-freq must be >= 1, got {accum_freq}")
    if accum_freq > 1 and not accumulates(method):
        raise ValueError(f"--accum-freq {accum_freq}: method {method.name!r} adds its own per-batch loss terms or state, "
                         f"which gradient accumulation does not reproduce; use --accum-freq 1 (more ranks or a smaller batch)")


def micro_batch_size(batch_size: int, global_batch_size: int, world_size: int, accum_freq: int) -> int:
    """The per-rank micro-batch: ``batch_size``, or ``global_batch_size`` / (ranks x accum_freq)
    when a global batch is given (as DataComp's train.py derives it), which must divide exactly."""
    if not global_batch_size:
        return batch_size
    per = global_batch_size // (world_size * accum_freq)
    if per < 1 or per * world_size * accum_freq != global_batch_size:
        raise ValueError(f"--global-batch-size {global_batch_size} is not a multiple of {world_size} ranks x "
                         f"--accum-freq {accum_freq}")
    return per


def iteration_backward(method: Method, ctx, model, micro: list, precision: Precision, backward) -> tuple[torch.Tensor, dict]:
    """Forward and backward passes of one optimizer step over its micro-batches
    ``[(images, tokens, ids), ...]``; ``backward(loss)`` back-propagates (through the loss
    scaler under amp). Returns the (last) loss and the method's logs."""
    if len(micro) == 1:
        images, tokens, ids = micro[0]
        with precision.autocast():
            loss, logs = method.loss(ctx, model, images, tokens, ids)
        backward(loss)
        return loss, logs
    with torch.no_grad(), precision.autocast():
        cached = [clip_features(model, images, tokens)[:2] for images, tokens, _ in micro]
    all_tokens = torch.cat([tokens for _, tokens, _ in micro])
    K = len(micro)
    loss = None
    for j, (images, tokens, _) in enumerate(micro):
        last = j == K - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                img, txt, scale = clip_features(model, images, tokens)
                imgs = torch.cat([c[0] for c in cached[:j]] + [img] + [c[0] for c in cached[j + 1:]])
                txts = torch.cat([c[1] for c in cached[:j]] + [txt] + [c[1] for c in cached[j + 1:]])
                # the temperature's gradient once per step (the last pass, which DDP synchronises)
                loss = method.contrastive(ctx, imgs, txts, scale if last else scale.detach(), all_tokens)
            backward(loss)
    return loss, {"contrastive": float(loss.detach())}
