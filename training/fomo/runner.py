"""One FoMo-in-Flux recipe end to end: stream, compute budget, data mixture, training.

1. Index the variant's training samples by the concept their caption names and order the
   concepts into a stream of T tasks (``streams``); save it as ``<run>/stream.json``.
2. Measure the method's and full fine-tuning's cost per iteration (``maf``) and turn the total
   memory-adjusted FLOPs budget into iterations per task; save ``<run>/maf.json``. The budget
   is given as full fine-tuning iterations per task (``full_ft_steps``), so full fine-tuning
   runs exactly that many and a cheaper method proportionally more.
3. Train with the common loop (``training.train``): task t's data is the pool / current /
   replay mixture (``mixture``), the method is any of ``training.methods``.
The recipe is saved as ``<run>/fomo.json``; ``python -m eval fomo run|compare <run>...`` evaluates it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from benchmark_builder.layout import Layout
from pipelines import io as pio
from pipelines.models import load_model
from pipelines.provenance import resolve_device
from training.config import CLConfig, base_values
from training.data import Source
from training.fomo import maf as maf_lib
from training.fomo.mixture import DEFAULT_SHARES, mixture_sources
from training.fomo.streams import DEFAULT_POOL_YEARS, build_index, make_stream, pool_source, task_sources
from training.methods import get_method
from training.train import TrainConfig, train



@dataclass
class FomoConfig(CLConfig):
    """The base config with this family's defaults (``model`` "": the embedded default's base, the
    filter CLIP pretrained on 2014-2016; ``samples_per_step`` follows from the MAF budget), plus the
    concept stream, the data mixture and the budget in MAF units."""
    model: str = ""
    samples_per_step: int = 0  # set by the budget: steps per task x batch_size
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 2  # warmup iterations of every task
    workers: int = 0
    buffer: int = 256
    checkpoint_every: int = 0
    method: str = "full-ft"
    order: str = "random"
    tasks: int = 5
    pool_years: tuple[int, ...] = DEFAULT_POOL_YEARS
    holdout: int = 4
    shares: tuple[float, float, float] = DEFAULT_SHARES
    buffer_size: int = 0  # replay buffer cap in samples (0: all past update data)
    full_ft_steps: int = 20  # budget: full fine-tuning iterations per task (MAF units follow from it)
    maf_budget: float = 0.0  # >0: the total budget in GMAF (GFLOPs x memory ratio), instead of full_ft_steps
    steps_per_task: int = 0  # >0: skip the MAF budget and run this many iterations per task


def resolve_base(cfg: FomoConfig) -> str:
    if cfg.model:
        return cfg.model
    pattern = Layout(cfg.data_dir, cfg.benchmark).filter_model_checkpoint("*")
    found = sorted(pio.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no base model at {pattern}: build the benchmark (make build-tic-datacomp-all) or pass --model")
    return f"tic-tiny-32:{found[0]}"


class WithMixture:
    """A method whose data plan is the FoMo mixture; every other hook is the method's own
    (``inner``: the wrapped method, which class-level checks such as ``scale.accumulates`` read)."""

    def __init__(self, method, pool: Source | None, shares, buffer_size: int):
        self.inner, self._pool, self._shares, self._buffer = method, pool, shares, buffer_size

    def data(self, t, sources):
        return mixture_sources(t, sources, self._pool, self._shares, self._buffer)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def plan_budget(cfg: FomoConfig, base: str, methods=None) -> tuple[dict, str]:
    """Measured cost and steps per task of ``methods`` (default: the recipe's method) next to
    full fine-tuning, under the recipe's budget."""
    names = list(dict.fromkeys(["full-ft", *(methods or [cfg.method])]))
    costs = maf_lib.measure_costs({n: (cfg.options if n == cfg.method else {}) for n in names}, base, cfg.batch_size,
                                  resolve_device(cfg.device))
    ref = costs["full-ft"]
    budget = cfg.maf_budget * 1e9 if cfg.maf_budget > 0 else cfg.full_ft_steps * cfg.tasks * maf_lib.maf(ref, ref)
    rows, table = maf_lib.budget_table(costs, ref, budget, cfg.tasks)
    return rows, table


def trainer_config(cfg: FomoConfig, run_dir: str, base: str, steps: int):
    """The trainer's config of a recipe: the base part as given, the resolved base model, ``steps``
    iterations per task, the warmup at every task."""
    return TrainConfig(**{**base_values(cfg), "run_dir": run_dir, "model": base, "samples_per_step": steps * cfg.batch_size,
                          "options": dict(cfg.options)},
                       protocol=cfg.method, warmup_later=cfg.warmup, time_steps=f"fomo:{cfg.order}:T{cfg.tasks}")


def run(cfg: FomoConfig, resume: bool = False) -> dict:

    run_dir = cfg.run_dir or f"runs/fomo-{cfg.method}-{cfg.order}-T{cfg.tasks}"
    os.makedirs(run_dir, exist_ok=True)
    base = resolve_base(cfg)
    device = resolve_device(cfg.device)
    index = build_index(cfg.data_dir, cfg.variant, cfg.benchmark, pool_years=cfg.pool_years)
    loaded = load_model(base, device=device) if cfg.order.split("reverse-")[-1] in ("semantic", "performance") else None
    stream = make_stream(index, cfg.order, cfg.tasks, cfg.seed, cfg.holdout, loaded, device)
    stream.save(os.path.join(run_dir, "stream.json"))
    print(f"stream ({cfg.order}, seed {cfg.seed}): " + " | ".join(", ".join(t) for t in stream.tasks))
    print(f"held out for retention: {', '.join(stream.holdout)}; samples per task: {stream.sizes}")

    if cfg.steps_per_task > 0:
        steps, costs = cfg.steps_per_task, {}
    else:
        costs, table = plan_budget(cfg, base)
        print(table)
        steps = costs[cfg.method]["steps_per_task"]
        with open(os.path.join(run_dir, "maf.json"), "w") as f:
            json.dump(costs, f, indent=1)
    tasks = task_sources(stream, index)
    pool = pool_source(cfg.data_dir, cfg.variant, cfg.pool_years, cfg.benchmark) if cfg.shares[0] > 0 else None
    method = WithMixture(get_method(cfg.method, cfg.options, family="fomo"), pool, cfg.shares, cfg.buffer_size)
    tcfg = trainer_config(cfg, run_dir, base, steps)
    recipe = {"fomo": cfg.to_json(), "base_model": base, "steps_per_task": steps, "stream": "stream.json",
              "maf": costs.get(cfg.method), "maf_full_ft": costs.get("full-ft")}
    with open(os.path.join(run_dir, "fomo.json"), "w") as f:
        json.dump(recipe, f, indent=1)
    summary = train(tcfg, resume=resume, sources=tasks, method=method)
    recipe["summary"] = {k: summary.get(k) for k in ("total_samples_seen", "total_macs")}
    with open(os.path.join(run_dir, "fomo.json"), "w") as f:
        json.dump(recipe, f, indent=1)
    return recipe
