"""Class- and domain-incremental continual learning with CLIP: the stream and the training.

    python -m training.incremental --dataset synthetic-web --method gdro --memory 200   # train only
    python -m eval.incremental --dataset synthetic-web --method gdro --memory 200       # train, then evaluate

1. The stream (``benchmark_builder.task_streams``) is written once under
   ``<data-dir>/streams/<dataset>-<kind>-T<tasks>-s<seed>/`` and reused.
2. Each task is a source for the bundled trainer (``training.train.train``, same loop,
   checkpoints and compute accounting as the TiC protocols); texts are the class prompts.
3. ``eval.incremental`` evaluates every task's checkpoint on the tasks seen so far and fills the
   accuracy matrix.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field

from benchmark_builder import task_streams as ts
from pipelines import io as pio
from pipelines.models import load_model
from training.data import Source


def cil_methods() -> dict:
    from training.methods.clip_replay import ClipReplay, for_class_streams
    from training.methods.ewc import EWC
    from training.methods.finetune_ce import FinetuneCE
    from training.methods.gcl import GCL
    from training.methods.gdro import GDRO
    from training.methods.lwf import LwF

    return {"finetune-ce": FinetuneCE, "clip-replay": ClipReplay, "gcl": GCL, "gdro": GDRO,
            "ewc": for_class_streams(EWC), "lwf": for_class_streams(LwF), "zero-shot": None}


@dataclass
class CILConfig:
    dataset: str = "synthetic-web"
    data: str = ""
    kind: str = "cil"
    tasks: int = 4
    domains: tuple[str, ...] = ()
    method: str = "clip-replay"
    memory: int = 0
    seed: int = 0
    data_dir: str = "./data"
    run_dir: str = ""
    model: str = "tic-tiny-32"
    samples_per_task: int = 4096
    batch_size: int = 64
    lr: float = 1e-3
    device: str = "auto"
    workers: int = 0
    options: dict = field(default_factory=dict)
    synthetic_per_class: tuple[int, int] = ts.SYNTHETIC_PER_CLASS  # (train, test) renders per concept, synthetic-web only

    def stream_dir(self) -> str:
        name = self.dataset
        if name == "synthetic-web":
            name += "-{}x{}".format(*self.synthetic_per_class)
        return pio.join(self.data_dir, "streams", f"{name}-{self.kind}-T{self.tasks}-s{self.seed}")

    def default_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", f"{self.kind}-{self.dataset}-{self.method}-m{self.memory}")


def ensure_stream(cfg: CILConfig) -> dict:
    d = cfg.stream_dir()
    if pio.exists(pio.join(d, "stream.json")):
        return ts.read_manifest(d)
    ds = ts.load_dataset(cfg.dataset, cfg.data, list(cfg.domains) or None, cfg.seed, tuple(cfg.synthetic_per_class))
    n_tasks = cfg.tasks if cfg.kind == "cil" else len(ds.domains)
    m = ts.write_stream(ds, d, cfg.kind, n_tasks, cfg.seed)
    print(f"stream {d}: {m['n_tasks']} tasks, {len(m['classnames'])} classes, "
          f"{sum(t['train'] for t in m['tasks'])} train / {sum(t['test'] for t in m['tasks'])} test images")
    return m


def task_sources(cfg: CILConfig, manifest: dict, split: str = "train") -> list[Source]:
    out = []
    for t in manifest["tasks"]:
        d = pio.join(cfg.stream_dir(), t["name"], split)
        sizes = pio.read_json(pio.join(d, "sizes.json"))
        out.append(Source(t["name"], tuple(pio.join(d, s) for s in sorted(sizes)), int(sum(sizes.values()))))
    return out


def seen_classes(manifest: dict, t: int) -> list[int]:
    return sorted({c for task in manifest["tasks"][: t + 1] for c in task["classes"]})


def train_run(cfg: CILConfig) -> dict:
    """Write (or reuse) the stream and train the method over its tasks, one checkpoint per task.
    Returns what the evaluation needs: the manifest, the run dir and the memory's composition."""
    from training.train import TrainConfig, train

    methods = cil_methods()
    if cfg.method not in methods:
        raise ValueError(f"unknown method {cfg.method!r}; known: {', '.join(methods)}")
    manifest = ensure_stream(cfg)
    train_src = task_sources(cfg, manifest)
    T = len(train_src)
    run_dir = cfg.default_run_dir()
    memory_history = None
    if cfg.method != "zero-shot":
        method = methods[cfg.method]({**cfg.options, "memory": cfg.memory})
        if cfg.method == "finetune-ce":
            tok = load_model(cfg.model).tokenizer
            method.task_prompts = [tok([ts.PROMPT.format(c=manifest["classnames"][c].replace("_", " ")) for c in t["classes"]])
                                   for t in manifest["tasks"]]
        tc = TrainConfig(protocol=cfg.method, data_dir=cfg.data_dir, run_dir=run_dir, model=cfg.model,
                         samples_per_step=cfg.samples_per_task, batch_size=cfg.batch_size, lr=cfg.lr, device=cfg.device,
                         workers=cfg.workers, buffer=256, warmup=5, seed=cfg.seed,
                         options={**cfg.options, "memory": cfg.memory})
        train(tc, resume=os.path.exists(os.path.join(run_dir, "config.json")), sources=train_src, method=method)
        if cfg.memory > 0:  # the memory each task trained with (rebuilt the way the method builds it)
            method.data(T - 1, train_src)
            memory_history = getattr(method, "memory_history", None)
    return {"manifest": manifest, "run_dir": run_dir, "memory_composition": memory_history}


def parser(prog: str = "python -m training.incremental", doc: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = CILConfig()
    p.add_argument("--dataset", default=d.dataset, choices=["synthetic-web", "cifar100", "domainnet", "imagenet", "imagefolder"])
    p.add_argument("--data", default="", help="dataset path (not needed for synthetic-web)")
    p.add_argument("--kind", default=d.kind, choices=["cil", "dil"])
    p.add_argument("--tasks", type=int, default=d.tasks)
    p.add_argument("--synthetic-per-class", type=int, nargs=2, default=list(d.synthetic_per_class), metavar=("TRAIN", "TEST"),
                   help="synthetic-web renders per concept")
    p.add_argument("--domains", nargs="*", default=[])
    p.add_argument("--method", default=d.method, choices=list(cil_methods()))
    p.add_argument("--memory", type=int, default=d.memory)
    p.add_argument("--sweep-memory", type=int, nargs="*", help="run once per memory size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--run-dir", default="")
    p.add_argument("--model", default=d.model)
    p.add_argument("--samples-per-task", type=int, default=d.samples_per_task)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--device", default=d.device)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="method option (gamma, lambda, ...)")
    return p


def configs_from_args(a) -> list[CILConfig]:
    """One config, or one per memory size with ``--sweep-memory``."""
    base = CILConfig(dataset=a.dataset, data=a.data, kind=a.kind, tasks=a.tasks, domains=tuple(a.domains), method=a.method,
                     memory=a.memory, seed=a.seed, data_dir=a.data_dir, run_dir=a.run_dir, model=a.model,
                     samples_per_task=a.samples_per_task, batch_size=a.batch_size, lr=a.lr, device=a.device,
                     workers=a.workers, options=dict(o.split("=", 1) for o in a.option),
                     synthetic_per_class=tuple(a.synthetic_per_class))
    if not a.sweep_memory:
        return [base]
    return [dataclasses.replace(base, memory=m, run_dir=f"{a.run_dir}-m{m}" if a.run_dir else "") for m in a.sweep_memory]


def main(argv=None) -> int:
    from pipelines.safe_inputs import InputError

    try:
        for cfg in configs_from_args(parser().parse_args(argv)):
            print(f"trained: {train_run(cfg)['run_dir']}")
    except InputError as e:  # a refused dataset file (crafted pickle, bad split line): one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
