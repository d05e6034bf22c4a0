"""FoMo-in-Flux evaluation of concept-stream runs (``python -m training fomo``): knowledge
accumulation, zero-shot retention and their geometric mean, per task and for the final model,
with a retention-vs-accumulation scatter plot (one point per run).

- accumulation: zero-shot top-1 accuracy on the held-out images of the stream's concepts
  (the benchmark's per-year classification sets; for a time-interleaved stream only the
  years of each concept's slices), over the dataset's full class list, averaged per concept;
- retention: the mean of the held-out static tasks: zero-shot accuracy on the concepts kept
  out of the stream (averaged per concept) and image-text retrieval (``mean_recall@1``) on
  the held-out retrieval sets of the pretraining pool's years;
- ``eval.metrics.geometric_mean`` of the two.
The base model is evaluated too, as the point every method starts from.

    python -m eval fomo run runs/fomo-full-ft-time-T5                  # <run>/eval/fomo_run.json + the table
    python -m eval fomo compare runs/fomo-full-ft-time-T5 runs/fomo-lora-time-T5 --out runs/fomo-compare

``python -m eval.fomo RUN...`` is ``python -m eval fomo compare RUN...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from eval.datasets import benchmark_sets
from eval.embed import Embedder, file_hash
from eval.metrics import geometric_mean
from eval.report import save_figure
from eval.tasks import retrieval_metrics
from pipelines import io as pio
from pipelines.cli import add_data_args, add_device
from pipelines.models import load_model, parse_spec
from pipelines.provenance import resolve_device


def _per_concept_accuracy(pred: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[float, dict]:
    accs = {}
    for c in sorted(set(labels[mask].tolist())):
        m = mask & (labels == c)
        accs[c] = float((pred[m] == c).float().mean())
    return (float(np.mean(list(accs.values()))) if accs else float("nan")), accs


def evaluate_model(emb: Embedder, cls_sets: dict, ret_sets: list, stream, classnames, templates) -> dict:
    years = sorted(cls_sets)
    feats = [emb.features(cls_sets[y]) for y in years]
    image = torch.cat([f["image"] for f in feats])
    labels = torch.cat([f["labels"] for f in feats])
    year = torch.cat([torch.full((len(f["labels"]),), y) for f, y in zip(feats, years)])
    pred = (image @ emb.classifier(classnames, templates)).argmax(1)
    index = {c: i for i, c in enumerate(classnames)}
    adapt = torch.zeros_like(labels, dtype=torch.bool)
    for task in range(len(stream.tasks)):
        for item in stream.items(task):
            m = labels == index[item.concept]
            adapt |= m if item.year is None else m & (year == item.year)
    held = torch.zeros_like(adapt)
    for c in stream.holdout:
        held |= labels == index[c]
    acc, per_concept = _per_concept_accuracy(pred, labels, adapt)
    held_acc, _ = _per_concept_accuracy(pred, labels, held)
    recalls = []
    for es in ret_sets:
        f = emb.features(es)
        recalls.append(retrieval_metrics(f["image"], f["text"], f["text_to_image"])["mean_recall@1"])
    parts = [v for v in (held_acc, float(np.mean(recalls)) if recalls else float("nan")) if not np.isnan(v)]
    retention = float(np.mean(parts)) if parts else float("nan")
    return {"accumulation": acc, "retention": retention, "geometric_mean": geometric_mean(acc, retention),
            "heldout_concepts_acc1": held_acc, "pool_retrieval_mean_recall@1": float(np.mean(recalls)) if recalls else None,
            "per_concept_acc1": {classnames[c]: v for c, v in per_concept.items()}}


def evaluate_run(run_dir: str, data_dir: str, variant: str = "basic", benchmark: str = "tic-datacomp",
                 device: str = "auto", cache_dir: str | None = None) -> dict:
    from training.checkpoint import RunDir
    from training.fomo.streams import Stream

    device = resolve_device(device)
    if not os.path.exists(os.path.join(run_dir, "fomo.json")):
        raise FileNotFoundError(f"{run_dir}: no fomo.json; train it first (python -m training fomo ... --run-dir {run_dir})")
    with open(os.path.join(run_dir, "fomo.json")) as f:
        recipe = json.load(f)
    stream = Stream.load(os.path.join(run_dir, "stream.json"))
    run = RunDir(run_dir)
    yearly = benchmark_sets(data_dir, variant, benchmark)
    cls_sets = yearly["classification"]
    if not cls_sets:
        raise FileNotFoundError(f"{data_dir}: no classification sets to measure accumulation on")
    first = next(iter(cls_sets.values()))
    ret_sets = [yearly["retrieval"][y] for y in stream.pool_years if y in yearly["retrieval"]]
    cache_dir = cache_dir or os.path.join(os.path.dirname(os.path.abspath(run_dir)), "fomo-eval-cache")
    base = recipe["base_model"]
    arch, base_path = parse_spec(base)
    models = [("base", base, base_path)] + [(f"task-{t}", f"{arch}:{run.step_path(t)}", run.step_path(t))
                                             for t in run.completed_steps()]
    rows = []
    for name, spec, path in models:
        loaded = load_model(spec, device=device)
        key = file_hash(path) if path and os.path.exists(path) else spec.replace("/", "_")
        emb = Embedder(loaded, key, os.path.join(cache_dir, "features"), device,
                       pixel_cache_dir=os.path.join(cache_dir, "pixels"))
        rows.append({"model": name, **evaluate_model(emb, cls_sets, ret_sets, stream, first.classnames, first.templates)})
    final = rows[-1]
    cfg = recipe["fomo"]
    out = {"run": os.path.basename(os.path.normpath(run_dir)), "method": cfg["method"], "order": cfg["order"],
           "tasks": cfg["tasks"], "steps_per_task": recipe["steps_per_task"], "maf": recipe.get("maf"),
           "accumulation": final["accumulation"], "retention": final["retention"],
           "geometric_mean": final["geometric_mean"], "base": rows[0], "trajectory": rows[1:],
           "holdout": stream.holdout, "stream": stream.tasks}
    os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
    with open(os.path.join(run_dir, "eval", "fomo_run.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def format_table(results: list[dict]) -> str:
    head = f"{'run':<34}{'method':<15}{'order':<18}{'steps/task':>11}{'accumulation':>14}{'retention':>11}{'geo-mean':>10}"
    lines = [head, "-" * len(head)]
    if results:
        b = results[0]["base"]
        lines.append(f"{'(base model)':<34}{'-':<15}{'-':<18}{'-':>11}{b['accumulation']:>14.4f}{b['retention']:>11.4f}"
                     f"{b['geometric_mean']:>10.4f}")
    for r in results:
        lines.append(f"{r['run']:<34}{r['method']:<15}{r['order']:<18}{r['steps_per_task']:>11}{r['accumulation']:>14.4f}"
                     f"{r['retention']:>11.4f}{r['geometric_mean']:>10.4f}")
    return "\n".join(lines)


def scatter(results: list[dict], png: str) -> str:
    """Retention (y) against accumulation (x): one point per run, its per-task path faint, the
    base model as a star, iso-lines of the geometric mean in the background."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    xs = [r["accumulation"] for r in results] + [results[0]["base"]["accumulation"]]
    ys = [r["retention"] for r in results] + [results[0]["base"]["retention"]]
    lo, hi = min(xs + ys) * 0.8, max(xs + ys) * 1.15 + 1e-3
    g = np.linspace(lo, hi, 200)
    X, Y = np.meshgrid(g, g)
    cs = ax.contour(X, Y, np.sqrt(np.clip(X, 0, None) * np.clip(Y, 0, None)), levels=6, colors="0.85", linewidths=0.7)
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    b = results[0]["base"]
    ax.scatter([b["accumulation"]], [b["retention"]], marker="*", s=180, color="k", label="base model", zorder=3)
    for i, r in enumerate(results):
        c = plt.cm.tab10(i % 10)
        path = [b] + r["trajectory"]
        ax.plot([p["accumulation"] for p in path], [p["retention"] for p in path], color=c, alpha=0.35, lw=1)
        ax.scatter([r["accumulation"]], [r["retention"]], color=c, s=60, zorder=3,
                   label=f"{r['method']} ({r['order']}, T={r['tasks']}): gm {r['geometric_mean']:.3f}")
    ax.set_xlabel("knowledge accumulation (acc@1 on the stream's concepts)")
    ax.set_ylabel("zero-shot retention (held-out concepts, pool retrieval)")
    ax.set_title("FoMo-in-Flux trade-off: final model per method")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, png)
    return png


def add_args(p: argparse.ArgumentParser, command: str = "compare") -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs of python -m training fomo")
    add_data_args(p)
    p.add_argument("--variant", default="basic")
    add_device(p)
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: <runs parent>/fomo-eval-cache)")
    if command == "compare":
        p.add_argument("--out", default="runs/fomo-compare")


def run_command(command: str, a) -> int:
    """``run``: evaluate each run (``<run>/eval/fomo_run.json``) and print the table; ``compare``:
    also the scatter plot, ``fomo.md`` and ``fomo.json`` under ``--out``."""
    try:
        results = [evaluate_run(r, a.data_dir, a.variant, a.benchmark, a.device, a.cache_dir) for r in a.runs]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = format_table(results)
    print(table)
    for r in results:
        traj = ", ".join(f"{p['accumulation']:.3f}/{p['retention']:.3f}" for p in r["trajectory"])
        print(f"  {r['run']}: accumulation/retention after each task: {traj}")
    if command == "run":
        print("\n" + ", ".join(os.path.join(r, "eval", "fomo_run.json") for r in a.runs))
        return 0
    os.makedirs(a.out, exist_ok=True)
    png = scatter(results, os.path.join(a.out, "tradeoff.png"))
    pio.write_bytes(os.path.join(a.out, "fomo.md"), (table + "\n").encode())
    pio.write_json(os.path.join(a.out, "fomo.json"), results)
    print(f"\n{a.out}/fomo.md, {a.out}/fomo.json, {png}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.fomo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p, "compare")
    return run_command("compare", p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
