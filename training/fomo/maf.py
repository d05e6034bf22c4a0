"""Memory-adjusted FLOPs (FoMo-in-Flux, Roth et al. 2024): the cost of one training iteration of
a method is its FLOPs times its peak memory relative to full fine-tuning, so a method that
needs half the memory may run about twice the steps on the same hardware budget.

Both factors are measured, not estimated: FLOPs with ``torch.utils.flop_counter.FlopCounterMode``
over one iteration's forward, method loss and backward (what really runs: frozen weights get
no weight gradient, a locked tower no backward at all, adapters their extra matmuls); peak
memory over a few full iterations (optimizer step included, so AdamW's moments of the
trainable parameters count) at the second task, where regularisers, merges and fresh adapters
are active. On CUDA memory is the peak allocated (``torch.cuda.max_memory_allocated``) above
what was allocated before the model existed; on CPU it is the process's peak resident set
(sampled every 0.2 ms from /proc/self/statm after ``malloc_trim``) above the same baseline.
Pixel values do not change either number, so the batch is synthetic.
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import threading
import time
from dataclasses import asdict, dataclass

import open_clip
import torch

from pipelines.models import load_model


@dataclass
class StepCost:
    method: str
    flops: float  # per iteration: forward + loss + backward
    memory: int  # bytes, peak above baseline
    memory_kind: str  # cuda_peak_allocated | cpu_peak_rss
    trainable: int  # trainable parameter elements
    batch_size: int

    def to_json(self) -> dict:
        return asdict(self)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the baseline is noisier, the measurement still valid
        pass


class PeakMemory:
    """Peak memory above the level at ``__enter__``: CUDA allocator stats or sampled CPU RSS."""

    def __init__(self, device: str, interval: float = 2e-4):
        self.device, self.interval = device, interval
        self.peak = 0
        self.kind = "cuda_peak_allocated" if device.startswith("cuda") else "cpu_peak_rss"

    def __enter__(self):
        _trim()
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak_rss = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.kind.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak_rss, _rss()) - self.base
        return False


def _iteration(method, ctx, model, images, tokens, optimizer=None):
    loss, _ = method.loss(ctx, model, images, tokens, None)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)


def measure_step_cost(method_name: str, options: dict, model_spec: str, batch_size: int, device: str = "cpu",
                      iterations: int = 3, seed: int = 0) -> StepCost:
    """FLOPs and peak memory of one training iteration of ``method_name`` at its second task."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.methods import get_method
    from training.methods.base import StepContext, frozen_copy

    torch.manual_seed(seed)
    with PeakMemory(device) as mem:
        loaded = load_model(model_spec, device=device)
        tokenizer = loaded.tokenizer  # the model's own (a locked text tower brings its encoder's)
        model = loaded.model.train()
        size = loaded.image_size
        images = torch.randn(batch_size, 3, size, size, device=device)
        tokens = tokenizer([f"a photo of a concept number {i}" for i in range(batch_size)]).to(device)
        method = get_method(method_name, options)
        clip_loss = open_clip.ClipLoss(cache_labels=True)
        ctx0 = StepContext(0, 2, [], device, clip_loss, iterations)
        method.begin_step(ctx0, model)
        method.end_step(ctx0, model, [(images, tokens)])  # the first task is over: its state exists
        ctx = StepContext(1, 2, [], device, clip_loss, iterations)
        ctx.prev_model = frozen_copy(model) if method.needs_prev_model else None
        method.begin_step(ctx, model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        counter = FlopCounterMode(display=False)
        with counter:
            _iteration(method, ctx, model, images, tokens)
        for _ in range(iterations):
            _iteration(method, ctx, model, images, tokens, optimizer)
        method.end_step(ctx, model, None)
        trainable = sum(p.numel() for p in params)
    cost = StepCost(method_name, float(counter.get_total_flops()), int(mem.peak), mem.kind, trainable, batch_size)
    del model, optimizer, method, loaded, ctx, ctx0
    _trim()
    return cost


def measure_costs(methods: dict[str, dict], model_spec: str, batch_size: int, device: str = "cpu",
                  repeats: int = 2) -> dict[str, StepCost]:
    """``measure_step_cost`` for each method (name -> options), after one discarded warm-up run
    (first-use allocations of the runtime are nobody's cost); memory is the least of ``repeats``
    measurements, since the noise of a resident-set measurement only ever adds."""
    measure_step_cost(next(iter(methods)), next(iter(methods.values())), model_spec, batch_size, device)
    out = {}
    for name, options in methods.items():
        runs = [measure_step_cost(name, options, model_spec, batch_size, device) for _ in range(max(1, repeats))]
        out[name] = min(runs, key=lambda c: c.memory)
    return out


def maf(cost: StepCost, reference: StepCost) -> float:
    """FLOPs x (peak memory / full fine-tuning's peak memory)."""
    return cost.flops * cost.memory / max(1, reference.memory)


def steps_per_task(budget_maf: float, n_tasks: int, cost: StepCost, reference: StepCost, minimum: int = 1) -> int:
    """Iterations per task that spend a total MAF budget evenly over ``n_tasks`` tasks."""
    return max(minimum, math.floor(budget_maf / (n_tasks * maf(cost, reference))))


def budget_table(costs: dict[str, StepCost], reference: StepCost, budget_maf: float, n_tasks: int) -> tuple[dict, str]:
    """Steps per task for every method under one budget, and the printed table."""
    rows, lines = {}, [f"{'method':<16}{'GFLOPs/it':>10}{'peak MiB':>10}{'mem ratio':>10}{'MAF/it (G)':>11}"
                       f"{'trainable':>11}{'steps/task':>11}"]
    lines.append("-" * len(lines[0]))
    for name, c in costs.items():
        s = steps_per_task(budget_maf, n_tasks, c, reference)
        rows[name] = {**c.to_json(), "memory_ratio": c.memory / max(1, reference.memory), "maf": maf(c, reference),
                      "steps_per_task": s}
        lines.append(f"{name:<16}{c.flops / 1e9:>10.3f}{c.memory / 2**20:>10.1f}{rows[name]['memory_ratio']:>10.3f}"
                     f"{rows[name]['maf'] / 1e9:>11.3f}{c.trainable:>11}{s:>11}")
    lines.append(f"budget: {budget_maf / 1e9:.1f} GMAF over {n_tasks} tasks; memory: {reference.memory_kind}")
    return rows, "\n".join(lines)
