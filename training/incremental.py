"""Class- and domain-incremental continual learning with CLIP: the stream and the training.

    python -m training cil --dataset synthetic-web --method gdro --memory 200    # train
    python -m eval cil run runs/cil-synthetic-web-gdro-m200                        # then evaluate
    python -m training cil --dataset synthetic-web --method clip-replay --sweep-memory 0 64 256

1. The stream (``benchmark_builder.task_streams``) is written once under
   ``<data-dir>/streams/<dataset>-<kind>-T<tasks>-s<seed>/`` and reused.
2. Each task is a source for the bundled trainer (``training.train.train``, same loop,
   checkpoints and compute accounting as the TiC protocols); texts are the class prompts. The
   method is a ``cil`` method of the registry (``training.methods``).
3. ``<run>/cil.json`` records the config, the stream and the memory's composition;
   ``python -m eval cil run`` evaluates every task's checkpoint on the tasks seen so far and fills
   the accuracy matrix (``make cil`` runs both).
``python -m training.incremental`` is the same command as ``python -m training cil``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass

from benchmark_builder import task_streams as ts
from benchmark_builder.inputs import NAMED
from pipelines import io as pio
from pipelines.models import load_model
from training.config import CLConfig, add_base_args, base_from_args, base_values
from training.data import Source
from training.methods import get_method, methods
from training.train import TrainConfig, train

RUN_RECORD = "cil.json"  # <run>/cil.json: what the evaluation of a class/domain-incremental run reads


@dataclass
class CILConfig(CLConfig):
    """The base config with this family's defaults, plus the stream and the class memory."""
    samples_per_step: int = 4096  # per task
    batch_size: int = 64
    warmup: int = 5
    workers: int = 0
    buffer: int = 256
    dataset: str = "synthetic-web"
    data: str = ""
    kind: str = "cil"
    tasks: int = 4
    domains: tuple[str, ...] = ()
    method: str = "clip-replay"
    memory: int = 0
    synthetic_per_class: tuple[int, int] = ts.SYNTHETIC_PER_CLASS  # (train, test) renders per concept, synthetic-web only

    def stream_dir(self) -> str:
        name = self.dataset
        if name in NAMED:  # a rendered dataset: its size is part of its name
            name += "-{}x{}".format(*self.synthetic_per_class)
        return pio.join(self.data_dir, "streams", f"{name}-{self.kind}-T{self.tasks}-s{self.seed}")

    def default_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", f"{self.kind}-{self.dataset}-{self.method}-m{self.memory}")

    @classmethod
    def from_json(cls, d: dict) -> "CILConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        return cls(**{**d, "domains": tuple(d.get("domains", ())),
                      "synthetic_per_class": tuple(d.get("synthetic_per_class", ts.SYNTHETIC_PER_CLASS))})


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


def trainer_config(cfg: CILConfig, run_dir: str):
    """The trainer's config of a class/domain-incremental run: the base part as given, the method
    and its options with the memory size."""
    return TrainConfig(**{**base_values(cfg), "run_dir": run_dir, "options": {**cfg.options, "memory": cfg.memory}},
                       protocol=cfg.method)


def train_run(cfg: CILConfig) -> dict:
    """Write (or reuse) the stream and train the method over its tasks, one checkpoint per task;
    writes ``<run>/cil.json`` (config, stream, memory composition) for the evaluation and returns it."""
    if cfg.method not in methods("cil"):
        raise ValueError(f"unknown method {cfg.method!r}; known: {', '.join(methods('cil'))}")
    manifest = ensure_stream(cfg)
    train_src = task_sources(cfg, manifest)
    T = len(train_src)
    run_dir = cfg.default_run_dir()
    options = {**cfg.options, "memory": cfg.memory}
    method = get_method(cfg.method, options, family="cil")
    trains = any(method.trains_at(t, T) for t in range(T))
    memory_history = None
    if trains:
        if hasattr(method, "task_prompts"):  # finetune-ce: each task's class prompts
            tok = load_model(cfg.model).tokenizer
            method.task_prompts = [tok([ts.PROMPT.format(c=manifest["classnames"][c].replace("_", " ")) for c in t["classes"]])
                                   for t in manifest["tasks"]]
        train(trainer_config(cfg, run_dir), resume=os.path.exists(os.path.join(run_dir, "config.json")), sources=train_src, method=method)
        if cfg.memory > 0:  # the memory each task trained with (rebuilt the way the method builds it)
            method.data(T - 1, train_src)
            memory_history = getattr(method, "memory_history", None)
    record = {"config": dataclasses.asdict(cfg), "run_dir": run_dir, "stream_dir": cfg.stream_dir(), "trained": trains,
              "memory_composition": memory_history}
    os.makedirs(run_dir, exist_ok=True)
    pio.write_json(os.path.join(run_dir, RUN_RECORD), record)
    return record


def parser(prog: str = "python -m training cil", doc: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = CILConfig()
    p.add_argument("--dataset", default=d.dataset, choices=[*NAMED, "cifar100", "domainnet", "imagenet", "imagefolder"])
    p.add_argument("--data", default="", help="dataset path (not needed for synthetic-web)")
    p.add_argument("--kind", default=d.kind, choices=["cil", "dil"])
    p.add_argument("--tasks", type=int, default=d.tasks)
    p.add_argument("--synthetic-per-class", type=int, nargs=2, default=list(d.synthetic_per_class), metavar=("TRAIN", "TEST"),
                   help="synthetic-web renders per concept")
    p.add_argument("--domains", nargs="*", default=[])
    p.add_argument("--method", default=d.method, choices=list(methods("cil")))
    p.add_argument("--memory", type=int, default=d.memory)
    p.add_argument("--sweep-memory", type=int, nargs="*", help="run once per memory size")
    add_base_args(p, d, skip=("benchmark", "variant", "text"),
                  helps={"run_dir": "default: runs/<kind>-<dataset>-<method>-m<memory>",
                         "samples_per_step": "compute budget: samples per task", "options": "method option (gamma, lambda, ...)"})
    p.add_argument("--samples-per-task", dest="samples_per_step", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def configs_from_args(p: argparse.ArgumentParser, a) -> list[CILConfig]:
    """One config, or one per memory size with ``--sweep-memory``."""
    base = CILConfig(**base_from_args(p, a), dataset=a.dataset, data=a.data, kind=a.kind, tasks=a.tasks,
                     domains=tuple(a.domains), method=a.method, memory=a.memory,
                     synthetic_per_class=tuple(a.synthetic_per_class))
    if not a.sweep_memory:
        return [base]
    return [dataclasses.replace(base, memory=m, run_dir=f"{a.run_dir}-m{m}" if a.run_dir else "") for m in a.sweep_memory]


def main(argv=None, prog: str = "python -m training cil") -> int:
    from pipelines.safe_inputs import InputError

    p = parser(prog)
    try:
        for cfg in configs_from_args(p, p.parse_args(argv)):
            print(f"trained: {train_run(cfg)['run_dir']}")
    except (InputError, ValueError, FileNotFoundError, FileExistsError) as e:  # a refused dataset file (crafted pickle,
        print(f"error: {e}", file=sys.stderr)  # bad split line), a missing dataset, a run dir of another run: one line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
