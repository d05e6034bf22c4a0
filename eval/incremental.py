"""Evaluation of class- and domain-incremental runs (``python -m training cil``): the accuracy matrix.

    python -m eval cil run runs/cil-synthetic-web-gdro-m200 [--device auto]
    python -m eval cil run runs/cil-synthetic-web-clip-replay-m* --plot runs/cl-memory.png
    python -m eval cil compare runs/cil-synthetic-web-* --plot runs/cl-memory.png

After each task t, the checkpoint is evaluated on the test images of every task j <= t with a
zero-shot classifier over all classes seen up to t (all classes for domain-incremental), filling
R[t, j]; ``eval.metrics.continual_metrics`` gives final average accuracy, average incremental
accuracy, BWT and forgetting. ``--plot`` draws final average accuracy against memory size.
The run's ``cil.json`` (written by the training) says which stream, model and method it used; this
module never trains (``make cil`` trains, then runs ``python -m eval cil run``).
``python -m eval.incremental --compare RUN...`` is ``python -m eval cil compare RUN...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys

import numpy as np
import torch

from eval.metrics import continual_metrics
from eval.report import save_figure
from pipelines import io as pio
from pipelines.cli import add_device
from pipelines.models import load_model
from pipelines.models.encode import encode_images, zero_shot_classifier
from pipelines.provenance import resolve_device
from pipelines.sinks import webdataset as wds
from training.data import Source
from training.incremental import RUN_RECORD, CILConfig, seen_classes, task_sources

TEMPLATES = ["a photo of a {c}."]


@torch.no_grad()
def accuracy_row(loaded, manifest: dict, test: list[Source], t: int, device: str) -> list[float]:
    """Accuracy of a model on the test images of tasks 0..t, classes seen up to t."""
    from PIL import Image

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
            for s in wds.iter_samples(shard):
                imgs.append(loaded.preprocess_val(Image.open(io.BytesIO(s["jpg"])).convert("RGB")))
                labels.append(col[int(json.loads(s["json"])["cls"])])
        correct = int(((encode_images(model, imgs, device) @ clf).argmax(dim=1) == torch.tensor(labels)).sum()) if imgs else 0
        row.append(correct / max(1, len(imgs)))
    return row


def read_run(run_dir: str) -> tuple[CILConfig, dict]:
    """The config and training record of a class/domain-incremental run."""
    path = os.path.join(run_dir, RUN_RECORD)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir}: no {RUN_RECORD}; train it first (python -m training cil ... --run-dir {run_dir})")
    record = pio.read_json(path)
    for h in record.get("memory_composition") or []:  # JSON keys are strings; classes are ints
        h["composition"] = {int(k): v for k, v in h["composition"].items()}
    return CILConfig.from_json(record["config"]), record


def evaluate(run_dir: str, device: str = "auto") -> dict:
    """Fill R[t, j] (checkpoint after task t, test images of task j <= t) and its metrics; writes
    ``<run>/cl_results.json``."""
    cfg, record = read_run(run_dir)
    manifest = pio.read_json(pio.join(cfg.stream_dir(), "stream.json"))
    test_src = task_sources(cfg, manifest, "test")
    T = len(test_src)
    device = resolve_device(device)
    R = np.full((T, T), np.nan)
    base = None
    if not record["trained"]:
        torch.manual_seed(cfg.seed)  # a model without pretrained weights is initialised the same every run
        base = load_model(cfg.model, device=device)
    for t in range(T):
        loaded = base or load_model(f"{cfg.model}:{os.path.join(run_dir, 'checkpoints', f'step_{t}.pt')}", device=device)
        R[t] = accuracy_row(loaded, manifest, test_src, t, device)
    result = {"config": dataclasses.asdict(cfg), "run_dir": run_dir, "tasks": [t["name"] for t in manifest["tasks"]],
              "accuracy_matrix": [[None if np.isnan(v) else v for v in row] for row in R], "metrics": continual_metrics(R),
              "memory_composition": record["memory_composition"]}
    pio.write_json(os.path.join(run_dir, "cl_results.json"), result)
    print(format_result(cfg.method, cfg.memory, result))
    return result


def format_result(method: str, memory: int, result: dict) -> str:
    names = result["tasks"]
    lines = [f"\n=== {method}, memory {memory}: accuracy (%) after each task (rows) on each task's test set (columns)",
             f"{'':>12}" + "".join(f"{n[:10]:>11}" for n in names)]
    for n, row in zip(names, result["accuracy_matrix"]):
        lines.append(f"{n[:12]:>12}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}%':>11}" for v in row))
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
    save_figure(fig, png)
    return png


def compare(run_dirs: list[str], png: str = "", device: str = "auto") -> str:
    """Markdown table of several runs' ``cl_results.json`` (evaluating runs that have none yet) and
    the accuracy-vs-memory plot."""
    results = []
    for d in run_dirs:
        path = os.path.join(d, "cl_results.json")
        results.append(pio.read_json(path) if os.path.exists(path) else evaluate(d, device))
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


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs of python -m training cil")
    add_device(p)
    p.add_argument("--plot", default="", metavar="PNG", help="also write the accuracy-vs-memory plot here")


def run_command(command: str, a) -> int:
    """``python -m eval cil run|compare``: evaluate each run (run) or table the runs (compare)."""
    try:
        if command == "run":
            results = [evaluate(r, a.device) for r in a.runs]
            if a.plot:
                print(f"accuracy vs memory: {memory_plot(results, a.plot)}")
        else:
            print(compare(a.runs, a.plot, a.device))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    """``python -m eval.incremental --compare RUN... [--plot PNG]``: the older spelling of ``eval cil compare``."""
    p = argparse.ArgumentParser(prog="python -m eval.incremental", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", help="runs to table (evaluated when not yet)")
    p.add_argument("--plot", default="", help="write the accuracy-vs-memory plot here")
    add_device(p)
    a, rest = p.parse_known_args(argv)
    if rest or not a.compare:
        p.error("evaluation no longer trains: train with python -m training cil ..., then python -m eval cil run RUN_DIR")
    return run_command("compare", argparse.Namespace(runs=a.compare, plot=a.plot, device=a.device))


if __name__ == "__main__":
    sys.exit(main())
