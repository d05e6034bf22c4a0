"""The continual-learning core's one base config and its command-line flags.

``CLConfig`` holds what every continual family sets the same way: the model, where the data and
the run live, the compute budget, the optimiser, the LR schedule, the data loader, the device and
the seed. The three families extend it and only change defaults or add their own fields:

- TiC protocols over a benchmark's time steps: ``training.train.TrainConfig`` (``python -m training tic``),
- class- and domain-incremental task streams: ``training.incremental.CILConfig`` (``python -m training cil``),
- FoMo-in-Flux concept streams: ``training.fomo.runner.FomoConfig`` (``python -m training fomo``).

``base_values`` hands a family's base part to the trainer (``TrainConfig(**base_values(cfg), ...)``),
``add_base_args``/``base_from_args`` give every family's CLI the same flags for the same fields.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field

from training.data import TEXT_FIELDS
from training.schedules import META_SCHEDULES, SCHEDULES


@dataclass
class CLConfig:
    # the model and where data and run live
    model: str = "tic-tiny-32"  # model spec (pipelines.models): preset, NAME:TAG, NAME:/path.pt
    data_dir: str = "./data"
    benchmark: str = "tic-datacomp"  # the built benchmark under data_dir (TiC time steps, FoMo's pool and concepts)
    variant: str = "basic"  # its filter variant
    run_dir: str = ""
    # compute budget: samples of gradient steps per time step / task (x the method's multiplier)
    samples_per_step: int = 8192
    batch_size: int = 128
    # optimisation (AdamW, open_clip's defaults)
    lr: float = 1e-3
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    # LR schedule (training.schedules)
    warmup: int = 10  # warmup iterations of the first time step
    cooldown: int = 0  # rsqrt schedule: iterations of linear cooldown at the end of each step
    schedule: str = "cosine"
    meta_schedule: str = "constant"
    # data loading
    text: str = "alt"  # alt | generated | both
    workers: int = -1  # DataLoader workers per rank; -1: by core count
    threads: int = 0  # CPU compute (intra-op) threads per rank; 0: its cores minus its workers (training.data.compute_threads)
    buffer: int = 1000  # shuffle buffer per source
    checkpoint_every: int = 25  # iterations between mid-step checkpoints (0: only one per step)
    # reproducibility and placement
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    options: dict = field(default_factory=dict)  # method options (buffer_factor, alpha, weight, memory, ...)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


BASE_FIELDS = tuple(f.name for f in dataclasses.fields(CLConfig))


def base_values(cfg: CLConfig) -> dict:
    """The base part of any family's config, as keyword arguments for another family's (the trainer's)."""
    return {k: getattr(cfg, k) for k in BASE_FIELDS}


# flag, config field, type, help; one spelling per concept in every family's CLI
_FLAGS = [
    ("--model", "model", str, "model spec (pipelines.models): preset, NAME:TAG, NAME:/path.pt"),
    ("--data-dir", "data_dir", str, "root of built benchmarks and streams"),
    ("--benchmark", "benchmark", str, "benchmark under --data-dir"),
    ("--variant", "variant", str, "the benchmark's filter variant"),
    ("--run-dir", "run_dir", str, "where checkpoints and logs go"),
    ("--samples-per-step", "samples_per_step", int, "compute budget: samples per time step / task"),
    ("--batch-size", "batch_size", int, "per rank and micro-batch"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--wd", "weight_decay", float, "AdamW weight decay (not on gains and biases)"),
    ("--grad-clip", "grad_clip", float, "gradient norm clip (0: none)"),
    ("--warmup", "warmup", int, "warmup iterations of the first time step"),
    ("--cooldown", "cooldown", int, "rsqrt: cooldown iterations at the end of each step"),
    ("--schedule", "schedule", str, "LR schedule within a step"),
    ("--meta-schedule", "meta_schedule", str, "peak LR across steps"),
    ("--text", "text", str, "caption trained on"),
    ("--workers", "workers", int, "DataLoader workers per rank (-1: by core count)"),
    ("--threads", "threads", int, "CPU compute threads per rank (0: OMP_NUM_THREADS if set, else the rank's cores "
                                  "minus its DataLoader workers, at least 1)"),
    ("--shuffle-buffer", "buffer", int, "samples per source in the shuffle buffer"),
    ("--checkpoint-every", "checkpoint_every", int, "iterations between mid-step checkpoints (0: none)"),
    ("--seed", "seed", int, "seed of every random choice"),
    ("--device", "device", str, "auto | cpu | cuda"),
]
_CHOICES = {"schedule": sorted(SCHEDULES), "meta_schedule": list(META_SCHEDULES), "text": list(TEXT_FIELDS)}


def add_base_args(p: argparse.ArgumentParser, defaults: CLConfig, skip: tuple[str, ...] = (), helps: dict | None = None) -> None:
    """The base config's flags with a family's defaults (``skip``: fields the family sets itself)."""
    helps = helps or {}
    for flag, name, typ, text in _FLAGS:
        if name in skip:
            continue
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), type=typ, default=getattr(defaults, name),
                       choices=_CHOICES.get(name), help=helps.get(name, text))
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help=helps.get("options", "method option, e.g. buffer_factor=2 alpha=0.5 weight=1000 rank=8"))


def parse_options(p: argparse.ArgumentParser, pairs: list[str]) -> dict:
    """``--option KEY=VALUE`` pairs -> a dict; values are JSON when they parse as JSON, else strings."""
    options = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--option must be KEY=VALUE, got {kv!r}")
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    return options


def base_from_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict:
    """The base fields given on a command line made by ``add_base_args``."""
    out = {name: getattr(a, flag[2:].replace("-", "_")) for flag, name, _, _ in _FLAGS if hasattr(a, flag[2:].replace("-", "_"))}
    out["options"] = parse_options(p, a.option)
    return out
