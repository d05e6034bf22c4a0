"""Class- and domain-incremental continual learning with CLIP, end to end.

    python -m training.incremental --dataset synthetic-web --method gdro --memory 200
    python -m training.incremental --dataset cifar100 --data /data/cifar --tasks 10 --method gcl --memory 2000
    python -m training.incremental --dataset domainnet --data /data/domainnet --kind dil --method clip-replay
    python -m training.incremental --dataset synthetic-web --method clip-replay --sweep-memory 0 64 256
    python -m training.incremental --compare runs/cil-synthetic-web-* --plot runs/cil-memory.png

1. The stream (``benchmark_builder.task_streams``) is written once under
   ``<data-dir>/streams/<dataset>-<kind>-T<tasks>-s<seed>/`` and reused.
2. Each task is a source for the bundled trainer (``training.train.train``, same loop,
   checkpoints and compute accounting as the TiC protocols); texts are the class prompts.
3. After each task t, the checkpoint is evaluated on the test images of every task j <= t with
   a zero-shot classifier over all classes seen up to t (all classes for domain-incremental),
   filling R[t, j]; ``eval.metrics.continual_metrics`` gives final average accuracy, average
   incremental accuracy, BWT and forgetting. ``--sweep-memory`` runs one method per memory size
   and plots final average accuracy against memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmark_builder import task_streams as ts
from pipelines import io as pio
from training.data import Source, _raw_samples

TEMPLATES = ["a photo of a {}."]


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
    synthetic_per_class: tuple[int, int] = (200, 50)  # (train, test) renders per concept, synthetic-web only

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


@torch.no_grad()
def accuracy_row(loaded, manifest: dict, test: list[Source], t: int, device: str) -> list[float]:
    """Accuracy of a model on the test images of tasks 0..t, classes seen up to t."""
    from PIL import Image

    from eval.tasks import zero_shot_classifier

    model = loaded.model.eval()
    classes = seen_classes(manifest, t)
    names = [manifest["classnames"][c].replace("_", " ") for c in classes]
    clf = zero_shot_classifier(model, loaded.tokenizer, names, TEMPLATES, device)
    col = {c: i for i, c in enumerate(classes)}
    row = []
    for j in range(len(manifest["tasks"])):
        if j > t:
            row.append(float("nan"))
            continue
        imgs, labels = [], []
        for shard in test[j].shards:
            for s in _raw_samples(shard):
                imgs.append(loaded.preprocess_val(Image.open(io.BytesIO(s["jpg"])).convert("RGB")))
                labels.append(col[int(json.loads(s["json"])["cls"])])
        correct = 0
        for b in range(0, len(imgs), 256):
            x = torch.stack(imgs[b:b + 256]).to(device)
            feats = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
            pred = (feats @ clf).argmax(dim=1).cpu()
            correct += int((pred == torch.tensor(labels[b:b + 256])).sum())
        row.append(correct / max(1, len(imgs)))
    return row


def run(cfg: CILConfig) -> dict:
    from eval.metrics import continual_metrics
    from pipelines.models import load_model
    from training.train import TrainConfig, train

    methods = cil_methods()
    if cfg.method not in methods:
        raise ValueError(f"unknown method {cfg.method!r}; known: {', '.join(methods)}")
    manifest = ensure_stream(cfg)
    train_src, test_src = task_sources(cfg, manifest), task_sources(cfg, manifest, "test")
    T = len(train_src)
    run_dir = cfg.default_run_dir()
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    memory_history = None
    if cfg.method != "zero-shot":
        method = methods[cfg.method]({**cfg.options, "memory": cfg.memory})
        if cfg.method == "finetune-ce":
            tok = load_model(cfg.model).tokenizer
            method.task_prompts = [tok([ts.PROMPT.format(manifest["classnames"][c].replace("_", " ")) for c in t["classes"]])
                                   for t in manifest["tasks"]]
        tc = TrainConfig(protocol=cfg.method, data_dir=cfg.data_dir, run_dir=run_dir, model=cfg.model,
                         samples_per_step=cfg.samples_per_task, batch_size=cfg.batch_size, lr=cfg.lr, device=cfg.device,
                         workers=cfg.workers, buffer=256, warmup=5, seed=cfg.seed,
                         options={**cfg.options, "memory": cfg.memory})
        train(tc, resume=os.path.exists(os.path.join(run_dir, "config.json")), sources=train_src, method=method)
        if cfg.memory > 0:  # the memory each task trained with (rebuilt the way the method builds it)
            method.data(T - 1, train_src)
            memory_history = getattr(method, "memory_history", None)
    R = np.full((T, T), np.nan)
    base = load_model(cfg.model, device=device) if cfg.method == "zero-shot" else None
    for t in range(T):
        loaded = base or load_model(f"{cfg.model}:{os.path.join(run_dir, 'checkpoints', f'step_{t}.pt')}", device=device)
        R[t] = accuracy_row(loaded, manifest, test_src, t, device)
    metrics = continual_metrics(R)
    result = {"config": dataclasses.asdict(cfg), "run_dir": run_dir, "tasks": [t["name"] for t in manifest["tasks"]],
              "accuracy_matrix": [[None if np.isnan(v) else v for v in row] for row in R], "metrics": metrics,
              "memory_composition": memory_history}
    os.makedirs(run_dir, exist_ok=True)
    pio.write_json(os.path.join(run_dir, "cl_results.json"), result)
    print(format_result(cfg.method, cfg.memory, result))
    return result


def format_result(method: str, memory: int, result: dict) -> str:
    names = result["tasks"]
    lines = [f"\n=== {method}, memory {memory}: accuracy after each task (rows) on each task's test set (columns)",
             f"{'':>12}" + "".join(f"{n[:10]:>11}" for n in names)]
    for n, row in zip(names, result["accuracy_matrix"]):
        lines.append(f"{n[:12]:>12}" + "".join(f"{'-' if v is None else f'{v:.3f}':>11}" for v in row))
    m = result["metrics"]
    lines.append("  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return "\n".join(lines)


def memory_plot(results: list[dict], png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    by_method: dict[str, list] = {}
    for r in results:
        by_method.setdefault(r["config"]["method"], []).append((r["config"]["memory"], r["metrics"]["final_average_accuracy"]))
    for m, pts in by_method.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xlabel("memory size (examples)")
    ax.set_ylabel("final average accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
    return png


def compare(run_dirs: list[str], png: str = "") -> str:
    """Markdown table of several runs' ``cl_results.json`` (and the accuracy-vs-memory plot)."""
    results = []
    for d in run_dirs:
        path = os.path.join(d, "cl_results.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{d}: no cl_results.json (run python -m training.incremental first)")
        results.append(pio.read_json(path))
    results.sort(key=lambda r: (r["config"]["method"], r["config"]["memory"]))
    lines = ["| method | memory | final average accuracy | final accuracy on tasks 0..T-2 | avg incremental accuracy "
             "| forgetting | BWT |", "|---|---|---|---|---|---|---|"]
    for r in results:
        R = np.array([[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]])
        early = float(np.mean(R[-1, :-1])) if len(R) > 1 else float("nan")
        m = r["metrics"]
        lines.append(f"| {r['config']['method']} | {r['config']['memory']} | {m['final_average_accuracy']:.1%} | {early:.1%} "
                     f"| {m['average_incremental_accuracy']:.1%} | {m['forgetting']:.3f} | {m['bwt']:.3f} |")
    if png:
        lines.append(f"\naccuracy vs memory: {memory_plot([r for r in results if r['config']['method'] != 'zero-shot'], png)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.incremental", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--sweep-memory", type=int, nargs="*", help="run once per memory size and plot")
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
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="print a table of finished runs (no training)")
    p.add_argument("--plot", default="", help="with --compare: write the accuracy-vs-memory plot here")
    a = p.parse_args(argv)
    if a.compare:
        print(compare(a.compare, a.plot))
        return 0
    options = dict(o.split("=", 1) for o in a.option)
    base = CILConfig(dataset=a.dataset, data=a.data, kind=a.kind, tasks=a.tasks, domains=tuple(a.domains), method=a.method,
                     memory=a.memory, seed=a.seed, data_dir=a.data_dir, run_dir=a.run_dir, model=a.model,
                     samples_per_task=a.samples_per_task, batch_size=a.batch_size, lr=a.lr, device=a.device,
                     workers=a.workers, options=options, synthetic_per_class=tuple(a.synthetic_per_class))
    if not a.sweep_memory:
        run(base)
        return 0
    results = [run(dataclasses.replace(base, memory=m, run_dir=f"{a.run_dir}-m{m}" if a.run_dir else "")) for m in a.sweep_memory]
    png = memory_plot(results, os.path.join("runs", f"{a.kind}-{a.dataset}-{a.method}-memory.png"))
    print(f"accuracy vs memory: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
