"""The continual training loop: one protocol over all time steps, top to bottom.

For each time step t: the method picks the data (sources with weights) and whether to start
from step t-1's weights (weights only: a fresh AdamW and a fresh cosine schedule per step, as
TiC-CLIP does); the loop runs ``samples_per_step`` x the method's compute multiplier samples
as gradient steps, with periodic checkpoints inside the step; then the method's ``end_step``
runs and the step's checkpoint is written. Compute is fixed per step in samples seen, whatever
the step's data size, and is reported in MACs measured with torch's flop counter: one real
iteration (the method's whole loss, e.g. LwF's teacher pass, and its backward) times the
iterations, plus the MACs of ``end_step`` itself (e.g. EWC's Fisher passes), counted as it runs.
A method's extra passes are thus added to its compute, as TiC-CLIP's table counts them (EWC
1.2x, LwF 1.27x Sequential's MACs), never taken from the training budget.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import open_clip
import torch

from benchmark_builder.specs import resolve_spec
from pipelines import io as pio
from pipelines.models import load_model
from training import checkpoint as ckpt
from training import distributed
from training import scale
from training.config import CLConfig
from training.data import StreamConfig, compute_threads, default_workers, loader, time_step_sources
from training.methods import get_method
from training.methods.base import StepContext, frozen_copy
from training.runlog import RunLog
from training.schedules import lr_at


@dataclass
class TrainConfig(CLConfig):
    """The trainer's config: the base config (``training.config.CLConfig``) plus TiC's time steps and
    open_clip_train's scale options. CIL and FoMo runs build one from their own (``base_values``)."""
    protocol: str = "sequential"  # the method (training.methods)
    run_dir: str = "./runs/sequential"
    warmup_later: int = 0  # warmup iterations of later steps (TiC-CLIP: none)
    precision: str = "auto"  # auto (amp on GPU, fp32 on CPU) | amp | amp_bf16 | pure_bf16 | fp32 (training.scale)
    accum_freq: int = 1  # micro-batches per optimizer step, loss over the accumulated batch (training.scale)
    global_batch_size: int = 0  # >0: batch_size = this / (ranks x accum_freq), as DataComp's train.py
    grad_checkpointing: bool = False
    torchcompile: bool = False
    local_loss: bool | None = None  # open_clip ClipLoss; None: on when distributed
    gather_with_grad: bool | None = None  # idem
    wandb: bool = False  # also log to Weights & Biases, offline (training.runlog)
    config_file: str = ""  # the --config YAML the values came from (copied into the run dir)
    max_steps: int = 0  # train only the first N time steps (0: all)
    time_steps: str = ""  # "": the benchmark's steps; "monthly:2019"; "2014-2016,2017,2018"
    years: str = ""  # "": the years the data dir was built for; FIRST-LAST must agree with them
    log_ids: bool = False  # record every sample id each rank trained on (DDP tests)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def measure_macs(method, ctx, model, micro, precision) -> float:
    """MACs of one training iteration (forward, method loss, backward) on this rank's micro-batches
    (with --accum-freq K: the K cached-feature passes and the K passes with gradients), by an
    extra iteration whose gradients are dropped."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        scale.iteration_backward(method, ctx, model, micro, precision, lambda loss: loss.backward())
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def macs_key(method, ctx, model, micro, precision) -> tuple:
    """What one iteration's MACs depend on: the method, whether it has a previous model (LwF's
    teacher pass), which parameters get gradients, the micro-batches' shapes and the precision."""
    return (type(method).__name__, ctx.prev_model is not None, precision.name,
            tuple((tuple(p.shape), p.requires_grad) for p in model.parameters()),
            tuple((tuple(m[0].shape), tuple(m[1].shape)) for m in micro))


def counted_in_the_iteration(method, cfg) -> bool:
    """Whether the first real iteration is itself counted (and the count cached for later steps):
    the method's loss is the plain task loss and the model is not compiled. A method with its own
    loss terms (GCL, GDRO, SI, ... whose loss updates their state) or a compiled model keeps the
    extra measured iteration at the start of every step, which is part of those runs' results."""
    return scale.accumulates(method) and not cfg.torchcompile


def measure_end_step(method, ctx, model, batches) -> float:
    """Run the method's ``end_step`` and return its MACs (its extra passes: EWC's Fisher, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        method.end_step(ctx, model, batches)
    return counter.get_total_flops() / 2


def train(cfg: TrainConfig, resume: bool = False, sources=None, method=None) -> dict:
    """``sources`` (one per task) and ``method`` (an instance) replace the benchmark's time steps
    and ``cfg.protocol``'s method when given: concept streams (training.fomo) use both."""
    info = distributed.init(cfg.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, info, resume, sources, method)
    finally:
        torch.set_num_threads(threads)  # the caller's setting again (in-process runs: tests, FoMo, CIL)
        distributed.shutdown(info)


def _train(cfg: TrainConfig, info: distributed.DistInfo, resume: bool, sources=None, method=None) -> dict:
    method = method if method is not None else get_method(cfg.protocol, cfg.options)
    sources = _run_sources(cfg, sources)
    precision = scale.Precision.resolve(cfg.precision, info.device)
    batch_size = scale.micro_batch_size(cfg.batch_size, cfg.global_batch_size, info.world_size, cfg.accum_freq)
    scale.check_accumulation(method, cfg.accum_freq)
    distributed.check_shared_dir(cfg.run_dir, info)
    run = ckpt.RunDir(cfg.run_dir)
    if info.is_main:
        pio.remove_stale_temps(cfg.run_dir)  # a killed run's unfinished checkpoint (local run dirs; none on a store)
        _claim_run_dir(cfg, run, sources, resume)
    distributed.barrier(info)

    workers = default_workers() if cfg.workers < 0 else cfg.workers
    if not info.device.startswith("cuda"):
        torch.set_num_threads(compute_threads(cfg.threads, workers))
    _seed_everything(cfg.seed)
    loaded, model, clip_loss = _model_and_loss(cfg, info, precision)
    summary, done, state = _resume_point(cfg, run, model, method, resume)
    if info.is_main:
        _print_start(cfg, info, sources, batch_size, precision)
    runlog = RunLog(cfg.run_dir, info.is_main, cfg.to_json(), cfg.wandb, resume_point=_resume_log_point(resume, state, done))
    r = _Run(cfg, info, method, sources, run, runlog, loaded, model, clip_loss, precision, batch_size, workers)
    samples_before = sum(s["samples_seen"] for s in summary["steps"] if s["step"] in done)
    for t in range(len(sources)):
        if t in done or not method.trains_at(t, len(sources)):
            continue
        samples_before, state = _train_step(r, t, state, summary, samples_before)
    runlog.close()
    if info.is_main:
        _finish_run(cfg, run, summary)
    return summary


@dataclass
class _Run:
    """What every time step of one run shares."""
    cfg: TrainConfig
    info: distributed.DistInfo
    method: object
    sources: list
    run: ckpt.RunDir
    runlog: RunLog
    loaded: object  # the model spec: its transforms, tokenizer and image size
    model: torch.nn.Module
    clip_loss: object
    precision: scale.Precision
    batch_size: int  # micro-batch size per rank
    workers: int
    macs_cache: dict = field(default_factory=dict)  # macs_key -> MACs of one iteration over all ranks


@dataclass
class _Step:
    """One time step's training state."""
    t: int
    ctx: StepContext
    optimizer: torch.optim.Optimizer
    ddp: torch.nn.Module  # the model, wrapped in DistributedDataParallel when distributed
    forward_model: torch.nn.Module  # ddp, compiled with --torchcompile
    scaler: object
    batches: object  # this rank's batch iterator
    iterations: int
    step_batch: int  # samples per optimizer step over all ranks
    samples_before: int  # samples seen by the run before this step


def _run_sources(cfg: TrainConfig, sources) -> list:
    """The run's tasks: ``sources`` when given, else the benchmark's time steps; the first ``max_steps``."""
    if sources is None:
        steps = resolve_spec(cfg.benchmark, cfg.years, cfg.time_steps, cfg.data_dir).time_steps
        sources = time_step_sources(cfg.data_dir, cfg.variant, cfg.benchmark, steps)
    return sources[: cfg.max_steps] if cfg.max_steps else sources


def _print_start(cfg: TrainConfig, info: distributed.DistInfo, sources, batch_size: int, precision) -> None:
    accum = f" x {cfg.accum_freq} accumulated" if cfg.accum_freq > 1 else ""
    print(f"protocol {cfg.protocol}: {len(sources)} time steps ({', '.join(s.name for s in sources)}), "
          f"{cfg.samples_per_step} samples per step, batch {batch_size} x {info.world_size} ranks{accum}, "
          f"device {info.device}, precision {precision.name}"
          + ("" if info.device.startswith("cuda") else f", {torch.get_num_threads()} compute thread(s)"))


def _resume_log_point(resume: bool, state: dict | None, done: set) -> tuple | None:
    """Where a resumed run continues: (step, iteration) of its checkpoint; None for a fresh run."""
    if not resume:
        return None
    return (state["step"], int(state["iteration"])) if state is not None else (max(done), math.inf) if done else (-1, math.inf)


def _train_step(r: _Run, t: int, state: dict | None, summary: dict, samples_before: int) -> tuple[int, dict | None]:
    """Train time step ``t`` (from ``state``, a mid-step checkpoint of it, when it is one), run the
    method's end of step, put the step's row into ``summary`` and save the step's checkpoint.
    Returns (samples seen before the next step, the mid-step state not used yet)."""
    cfg, info, model, method, T = r.cfg, r.info, r.model, r.method, len(r.sources)
    if not method.warm_start:
        _seed_everything(cfg.seed + 1000 * t)
        model.load_state_dict(load_model(cfg.model, device=info.device).model.state_dict())  # copy_ keeps pure_bf16's dtype
    step_sources = method.data(t, r.sources)
    budget = int(cfg.samples_per_step * method.compute_multiplier(t, T))
    overhead = method.overhead_samples(t, budget)  # samples of extra passes, on top of the budget
    global_batch = r.batch_size * info.world_size  # one micro-batch on every rank
    step_batch = global_batch * cfg.accum_freq  # samples per optimizer step
    iterations = max(1, math.ceil(budget / step_batch))
    ctx = StepContext(t, T, r.sources, info.device, r.clip_loss, iterations)
    ctx.prev_model = frozen_copy(model) if method.needs_prev_model and t > 0 and method.warm_start else None
    method.begin_step(ctx, model)  # before the optimizer: a method may freeze or add parameters

    optimizer = _optimizer(cfg, model)
    start_it = 0
    if state is not None and state["step"] == t:
        start_it = _resume_iteration(state, r.run, model, optimizer, method, ctx)
        state = None
    ddp = torch.nn.parallel.DistributedDataParallel(model) if info.distributed else model
    forward_model = torch.compile(ddp) if cfg.torchcompile else ddp
    stream = _step_stream(cfg, info, r.loaded, step_sources, t, r.batch_size, r.workers, skip_batches=start_it * cfg.accum_freq)
    scaler = r.precision.scaler()
    t0 = time.time()
    model.train()
    batches = iter(stream)
    step = _Step(t, ctx, optimizer, ddp, forward_model, scaler, batches, iterations, step_batch, samples_before)
    macs_per_iter, logs, ids_seen = _iterate(r, step, start_it)
    n_extra = max(1, math.ceil(overhead / global_batch)) if overhead else 0
    end_macs = _end_step(method, ctx, model, batches, n_extra, r.precision) * info.world_size
    seconds = time.time() - t0
    if cfg.log_ids:
        r.run.save_ids(t, info.rank, torch.cat(ids_seen) if ids_seen else torch.empty(0, dtype=torch.int64), model)
    samples = iterations * step_batch  # samples of gradient steps; extra passes are overhead_samples
    row = {
        "step": t, "name": r.sources[t].name, "iterations": iterations, "samples_seen": samples,
        "overhead_samples": n_extra * global_batch, "overhead_macs": end_macs,
        "macs": (macs_per_iter or 0) * iterations + end_macs,
        "data": {s.name: round(s.expected_size) for s in step_sources}, "seconds": round(seconds, 2),
        "samples_per_s": round((iterations - start_it) * step_batch / max(seconds, 1e-9), 1),
        "final_loss": {k: round(v, 4) for k, v in logs.items()},
    }
    summary["steps"] = [s for s in summary["steps"] if s["step"] != t] + [row]
    if info.is_main:
        r.runlog.flush()
        r.run.save_step(t, ckpt.state(model, optimizer, method, t, iterations, cfg, r.sources[t].name, final=True))
        r.run.write_summary(summary)
    distributed.barrier(info)
    return samples_before + samples, state


def _iterate(r: _Run, s: _Step, start_it: int) -> tuple[float | None, dict, list]:
    """The step's gradient steps from iteration ``start_it`` on, with their run-log rows and
    periodic checkpoints. Returns (MACs of one iteration over all ranks, the last iteration's
    loss terms, the sample ids trained on with --log-ids)."""
    cfg, info, model, method, T = r.cfg, r.info, r.model, r.method, len(r.sources)
    backward = (lambda loss: s.scaler.scale(loss).backward()) if s.scaler else (lambda loss: loss.backward())
    macs_per_iter = None
    logs: dict = {}
    ids_seen = []
    it = start_it
    progress = _progress(info, s.iterations, start_it, f"step {s.t} ({r.sources[s.t].name})")
    while it < s.iterations:
        t_iter = time.time()
        micro = _micro_batches(s.batches, cfg.accum_freq, info.device, r.precision)
        data_wait = time.time() - t_iter
        counter = key = None
        if macs_per_iter is None:
            macs_per_iter, counter, key = _macs_or_counter(method, s.ctx, cfg, s.ddp, model, micro, r.precision, info, r.macs_cache)
        lr = lr_at(s.t, it, steps_per_task=s.iterations, base_lr=cfg.lr, n_tasks=T, schedule=cfg.schedule,
                   meta=cfg.meta_schedule, warmup_steps=cfg.warmup_later, first_task_warmup_steps=cfg.warmup,
                   cooldown_steps=cfg.cooldown)
        for g in s.optimizer.param_groups:
            g["lr"] = lr
        s.optimizer.zero_grad(set_to_none=True)
        with counter or contextlib.nullcontext():
            loss, logs = scale.iteration_backward(method, s.ctx, s.forward_model, micro, r.precision, backward)
        if counter is not None:
            macs_per_iter = r.macs_cache[key] = counter.get_total_flops() / 2 * info.world_size
        _apply_gradients(cfg, model, s.optimizer, s.scaler)
        if cfg.log_ids:
            ids_seen.extend(m[2] for m in micro)
        it += 1
        loss_value = float(loss.detach())
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        seconds_it = max(time.time() - t_iter, 1e-9)
        r.runlog.log({"step": s.t, "name": r.sources[s.t].name, "iteration": it, "samples": s.samples_before + it * s.step_batch,
                      "loss": loss_value, **{k: float(v) for k, v in logs.items()}, "lr": lr,
                      **_speed(s.step_batch, seconds_it, data_wait, info.world_size),
                      "logit_scale": float(model.logit_scale.detach().float().exp())})
        if info.is_main and cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < s.iterations:
            r.runlog.flush()  # first: the rows up to the checkpoint a resume starts from
            r.run.save_latest(ckpt.state(model, s.optimizer, method, s.t, it, cfg, r.sources[s.t].name))
    progress.close()
    return macs_per_iter, logs, ids_seen


def _step_stream(cfg: TrainConfig, info: distributed.DistInfo, loaded, step_sources, t: int, batch_size: int,
                 workers: int, skip_batches: int):
    """This rank's batches of time step ``t`` (a function of the seed and ``t``), past the first ``skip_batches``."""
    return loader(StreamConfig(
        sources=step_sources, batch_size=batch_size, seed=cfg.seed * 1000 + t, rank=info.rank,
        world_size=info.world_size, workers=workers, buffer=cfg.buffer, text=cfg.text, skip_batches=skip_batches,
        image_size=loaded.image_size, transform=loaded.preprocess_train, tokenizer=loaded.tokenizer,
    ))


def _speed(step_batch: int, seconds: float, data_wait: float, world_size: int) -> dict:
    """An iteration's throughput and the share of it spent waiting for data."""
    return {"samples_per_s": step_batch / seconds, "samples_per_s_per_device": step_batch / seconds / world_size,
            "data_wait": data_wait / seconds}


def _model_and_loss(cfg: TrainConfig, info: distributed.DistInfo, precision):
    """(the loaded model spec, the model to train in ``precision``, open_clip's contrastive loss over the ranks)."""
    loaded = load_model(cfg.model, device=info.device)
    model = precision.prepare(loaded.model)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    clip_loss = open_clip.ClipLoss(
        local_loss=info.distributed if cfg.local_loss is None else cfg.local_loss,
        gather_with_grad=info.distributed if cfg.gather_with_grad is None else cfg.gather_with_grad,
        cache_labels=True, rank=info.rank, world_size=info.world_size)
    return loaded, model, clip_loss


def _micro_batches(batches, accum_freq: int, device, precision) -> list:
    """The next ``accum_freq`` (images, tokens, ids) batches of the stream, on the device."""
    micro = []
    for _ in range(accum_freq):
        images, tokens, ids, _src = next(batches)
        micro.append((images.to(device, dtype=precision.input_dtype, non_blocking=True),
                      tokens.to(device, non_blocking=True), ids))
    return micro


def _end_step(method, ctx: StepContext, model, batches, n_extra: int, precision) -> float:
    """The method's end of step (e.g. a Fisher pass over ``n_extra`` further batches of the
    stream); its MACs on this rank."""
    fisher_batches = None
    if n_extra:
        fisher_batches = [(b[0].to(ctx.device, dtype=precision.input_dtype), b[1].to(ctx.device))
                          for b, _ in zip(batches, range(n_extra))]
    return measure_end_step(method, ctx, model, fisher_batches)


def _macs_or_counter(method, ctx, cfg, ddp, model, micro, precision, info, macs_cache: dict):
    """(MACs of one iteration over all ranks, None, None) when known without running it: measured
    apart, or cached for this iteration shape; else (None, a FLOP counter to run the iteration
    under, the cache key to store its count at)."""
    if not counted_in_the_iteration(method, cfg):
        return measure_macs(method, ctx, ddp, micro, precision) * info.world_size, None, None
    key = macs_key(method, ctx, model, micro, precision)  # counted once per run and iteration shape
    if key in macs_cache:
        return macs_cache[key], None, None
    from torch.utils.flop_counter import FlopCounterMode

    return None, FlopCounterMode(display=False), key


def _claim_run_dir(cfg: TrainConfig, run: ckpt.RunDir, sources, resume: bool) -> None:
    """Refuse a run dir that holds another run (or, with ``resume``, a different config); record this one's."""
    existing = run.config()
    if existing and not resume and run.completed_steps():
        raise FileExistsError(f"{cfg.run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    free = ("device", "config_file", "threads")
    if existing and resume and {k: v for k, v in {**TrainConfig().to_json(), **existing}.items() if k not in free} != {
        k: v for k, v in cfg.to_json().items() if k not in free
    }:
        raise ValueError(f"{cfg.run_dir}: --resume with a different configuration than the run was started with")
    run.write_config(cfg.to_json(), [s.name for s in sources], cfg.config_file)


def _resume_point(cfg: TrainConfig, run: ckpt.RunDir, model, method, resume: bool) -> tuple[dict, set, dict | None]:
    """(summary so far, finished steps, mid-step state to continue from). Without a mid-step state
    newer than the last finished step, the model and method are those of the last finished step."""
    summary = run.summary() if resume else {"protocol": cfg.protocol, "steps": []}
    done = set(run.completed_steps()) if resume else set()
    state = None
    if resume:
        state = run.latest()
        last_done = max(done) if done else None
        if last_done is not None and (state is None or state["step"] <= last_done):
            state = None
            prev = run.load_step(last_done)
            model.load_state_dict(prev["state_dict"])
            method.load_state_dict(prev.get("method", {}))
    return summary, done, state


def _optimizer(cfg: TrainConfig, model) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on gains, biases and the temperature."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
    )


def _resume_iteration(state: dict, run: ckpt.RunDir, model, optimizer, method, ctx: StepContext) -> int:
    """Restore a mid-step checkpoint (model, optimizer, method, RNG, previous model); its iteration."""
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state.get("method", {}))
    ckpt.restore_rng(state["rng"])
    if ctx.prev_model is not None and ctx.t > 0:
        ctx.prev_model.load_state_dict(run.load_step(ctx.t - 1)["state_dict"])
    return int(state["iteration"])


def _apply_gradients(cfg: TrainConfig, model, optimizer, scaler) -> None:
    """Unscale, clip, step; then clamp the learned temperature at 100 as open_clip does."""
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def _finish_run(cfg: TrainConfig, run: ckpt.RunDir, summary: dict) -> None:
    run.remove_latest()
    summary["total_samples_seen"] = sum(s["samples_seen"] for s in summary["steps"])
    summary["total_macs"] = sum(s["macs"] for s in summary["steps"])
    summary["per_step_samples"] = cfg.samples_per_step
    run.write_summary(summary)
    print(format_summary(summary))


def _progress(info, total, initial, desc):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", leave=False, disable=not info.is_main or None)


def format_summary(summary: dict) -> str:
    lines = [f"\n=== {summary['protocol']}",
             f"{'step':<12}{'iters':>7}{'samples':>10}{'MACs':>12}{'seconds':>9}{'samples/s':>11}  data (samples per source)"]
    lines.append("-" * len(lines[-1]))
    for s in sorted(summary["steps"], key=lambda s: s["step"]):
        data = ", ".join(f"{k}: {v}" for k, v in s["data"].items())
        lines.append(f"{s['name']:<12}{s['iterations']:>7}{s['samples_seen']:>10}{s['macs']:>12.3g}{s['seconds']:>9.1f}"
                     f"{s['samples_per_s']:>11.0f}  {data}")
    if "total_samples_seen" in summary:
        lines.append(f"{'total':<12}{'':>7}{summary['total_samples_seen']:>10}{summary['total_macs']:>12.3g}")
    return "\n".join(lines)
