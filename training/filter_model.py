"""The filter model of a benchmark without one to download: a small CLIP trained with this
trainer on the earliest time step only (the original filter model, OpenAI's CLIP, was trained on
data older than the benchmark), cached under the layout's ``filter-model/<key>/`` where ``key``
hashes its training configuration, and reused. ``benchmark_builder.jobs`` runs it before the
CLIP filters when no ``--model`` is given; FoMo starts from the same checkpoint
(``training.fomo.runner.resolve_base``).
"""
from __future__ import annotations

import hashlib
import json

from benchmark_builder.layout import Layout
from pipelines import io as pio
from training.train import TrainConfig, train

MODEL = "tic-tiny-32"


def filter_model_config(data_dir: str, benchmark: str, seed: int, samples: int) -> tuple[TrainConfig, str]:
    """(training config, cache key) for ``samples`` of the earliest time step (the builder's
    default budget is ``ClipFilterConfig.filter_model_samples``). The key hashes the options as the trainer's command line
    spells them, so a model cached before the trainer was called in-process is found again."""
    args = ["--protocol", "sequential", "--max-steps", "1", "--samples-per-step", str(samples),
            "--model", MODEL, "--seed", str(seed), "--data-dir", data_dir, "--benchmark", benchmark]
    key = hashlib.sha256(json.dumps(args).encode()).hexdigest()[:12]
    cfg = TrainConfig(protocol="sequential", max_steps=1, samples_per_step=samples, model=MODEL, seed=seed,
                      data_dir=data_dir, benchmark=benchmark, run_dir=Layout(data_dir, benchmark).filter_model(key))
    return cfg, key


def ensure_filter_model(data_dir: str, benchmark: str, seed: int, samples: int, train_if_absent: bool = True) -> str:
    """The model spec of the cached filter model; trains it first (resuming a killed run) if absent
    (with ``train_if_absent=False``, a dry run's, only its spec)."""
    cfg, key = filter_model_config(data_dir, benchmark, seed, samples)
    ckpt = Layout(data_dir, benchmark).filter_model_checkpoint(key)
    if not train_if_absent:
        return f"{MODEL}:{ckpt}"
    if pio.exists(ckpt):
        print(f"filter model: cached {ckpt}")
    else:
        print(f"filter model: training {MODEL} on the earliest time step only -> {cfg.run_dir}")
        train(cfg, resume=True)
    return f"{MODEL}:{ckpt}"
