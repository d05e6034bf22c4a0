"""Dynamic evaluation of a run: every checkpoint (one per time step) on every time step's
held-out retrieval and classification sets, plus the static suite.

``E_retrieval[i, j]`` is TiC-CLIP's dynamic retrieval (``mean_recall@1``) of the model after
step i on the held-out retrieval sets of step j: the mean over the step's years, so a
three-year first step is not judged on a gallery three times as large, or, for a benchmark whose
recipe holds out one test set per step (``BenchmarkSpec.eval_step_gallery``: TiC-YFCC,
TiC-RedCaps), the step's years' pairs as one gallery (``pooled_features``); ``E_classification[i,
j]`` is top-1 zero-shot accuracy on step j's classification sets over the benchmark's class
list. Steps a run never produced a checkpoint for (``oracle-final`` trains once) are NaN rows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import yaml

from benchmark_builder.layout import Layout
from benchmark_builder.specs import parse_time_steps, resolve_spec
from eval import metrics
from eval.datasets import EvalSet, benchmark_sets, open_set
from eval.embed import Embedder, file_hash
from eval.tasks import classification_metrics, retrieval_metrics
from pipelines import io as pio
from pipelines.models import load_model

STATIC_TASKS = os.path.join(os.path.dirname(__file__), "static_tasks.yaml")


@dataclass
class RunEval:
    run: str
    protocol: str
    steps: list[str]
    checkpoints: list[int]
    rows: list[dict] = field(default_factory=list)  # results.jsonl rows
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    images_embedded: int = 0


def static_tasks(path: str | None, data_dir: str, variant: str, benchmark: str, yearly: dict,
                 static_root: str | None = None) -> list[dict]:
    """Tasks of the static suite (YAML): ``from_yearly: classification`` is the union of every
    year's held-out classification sets (all concepts), reusing their cached embeddings;
    ``clip_benchmark: NAME`` is clip_benchmark's WebDataset copy of a task, read from
    ``<static_root>/wds_<NAME with / as ->`` (DataComp's download_evalsets.py layout). Missing
    ones are skipped with one line."""
    with open(path or STATIC_TASKS) as f:
        spec = yaml.safe_load(f) or {}
    tasks, absent, unsupported = [], [], []
    for t in spec.get("tasks", []):
        if t.get("clip_benchmark"):
            if t.get("type") not in ("classification", "retrieval"):
                unsupported.append(t["clip_benchmark"])
                continue
            p = os.path.join(static_root, "wds_" + t["clip_benchmark"].replace("/", "-")) if static_root else None
            if p is None or not os.path.exists(p):
                absent.append(t["clip_benchmark"])
                continue
            tasks.append({**t, "sets": [dataclasses.replace(open_set(p, t["name"]), kind=t["type"])]})
        elif t.get("from_yearly"):
            sets = list(yearly[t["from_yearly"]].values())
            if sets:
                tasks.append({**t, "sets": sets})
        else:
            p = t["path"] if os.path.isabs(t["path"]) else Layout(data_dir, benchmark).under_root(t["path"].format(variant=variant))
            if not pio.exists(p):
                print(f"static task {t['name']}: {p} not found, skipped")
                continue
            tasks.append({**t, "sets": [open_set(p, t["name"])]})
    named = len(absent) + len(unsupported) + sum(1 for t in tasks if t.get("clip_benchmark"))
    if named and not static_root:
        print(f"static tasks: the {named} clip_benchmark tasks of the static suite are skipped (pass --static-root DIR "
              f"holding clip_benchmark's wds_<task> sets to run them)")
        return tasks
    if absent:
        print(f"static tasks: {len(absent)} of {named} clip_benchmark tasks not under {static_root}, skipped: {', '.join(absent)}")
    if unsupported:
        print(f"static tasks: {', '.join(unsupported)} need evaluators of their own (not zero-shot classification or "
              f"retrieval), skipped")
    return tasks


def _classify(emb: Embedder, sets: list[EvalSet], cache: dict) -> dict:
    feats = [emb.features(s) for s in sets]
    first = sets[0]
    key = (first.classnames, first.templates)
    if key not in cache:
        cache[key] = emb.classifier(*key)
    image = torch.cat([f["image"] for f in feats])
    labels = torch.cat([f["labels"] for f in feats])
    return classification_metrics(image, cache[key], labels, topk=(1, 5), mean_per_class=True)


def _dynamic_cell(emb, classifiers: dict, sets: dict, kind: str, years, base: dict, step: dict, rows: list,
                  step_gallery: bool = False) -> float | None:
    """One cell of the evaluation matrix: the headline metric (mean recall@1, or top-1 accuracy) of
    the model ``emb`` embeds with, the mean over ``years`` (or, with ``step_gallery``, retrieval
    over the years' pairs pooled into one gallery); every per-year metric goes to ``rows``. None
    when none of the years has an eval set of this kind."""
    vals, feats = [], []
    for y in years:
        es = sets.get(y)
        if es is None:
            continue
        if kind == "retrieval":
            f = emb.features(es)
            feats.append(f)
            m = retrieval_metrics(f["image"], f["text"], f["text_to_image"])
            vals.append(m["mean_recall@1"])
        else:
            m = _classify(emb, [es], classifiers)
            vals.append(m["acc1"])
        for metric, v in m.items():
            rows.append({**base, "task": es.name, "kind": kind, **step, "year": y, "metric": metric, "value": v})
    if feats and step_gallery:
        f = pooled_features(feats)
        return retrieval_metrics(f["image"], f["text"], f["text_to_image"])["mean_recall@1"]
    return float(np.mean(vals)) if vals else None


def _static_rows(emb, classifiers: dict, statics: list, base: dict, rows: list) -> None:
    """The static suite's metrics of the model ``emb`` embeds with."""
    for task in statics:
        if task.get("type") == "retrieval":
            f = emb.features(task["sets"][0])
            m = retrieval_metrics(f["image"], f["text"], f["text_to_image"])
        else:
            m = _classify(emb, task["sets"], classifiers)
        for metric, v in m.items():
            rows.append({**base, "task": f"static/{task['name']}", "kind": "static", "group": task.get("group", "other"),
                         "metric": metric, "value": v})


def evaluate_run(run_dir: str, data_dir: str, variant: str = "basic", benchmark: str = "tic-datacomp",
                 device: str = "cpu", batch_size: int = 256, static_yaml: str | None = None, years: str = "",
                 static_root: str | None = None, draft: bool = False) -> RunEval:
    from training.checkpoint import RunDir

    t0 = time.time()
    run = RunDir(run_dir)
    cfg = run.config()
    if cfg is None:
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.json); train first: make train PROTOCOL=...")
    steps = run.time_steps()
    spec = resolve_spec(benchmark, years, data_dir=data_dir)
    spec_steps = {s.name: s for s in spec.time_steps}
    for name in steps:  # a run trained with its own --time-steps: names are in that grammar
        if name not in spec_steps:
            with contextlib.suppress(ValueError):
                spec_steps[name] = parse_time_steps(name)[0]
    ckpts = run.completed_steps()
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no checkpoints yet")
    yearly = benchmark_sets(data_dir, variant, benchmark)
    for name in steps:
        step_years = spec_steps[name].years if name in spec_steps else ()
        if not any(y in yearly[k] for k in yearly for y in step_years):
            print(f"time step {name}: no evaluation samples (empty year(s) {', '.join(map(str, step_years)) or '?'}), "
                  "its column is NaN")
    statics = static_tasks(static_yaml, data_dir, variant, benchmark, yearly, static_root)
    T = len(steps)
    E = {"retrieval": np.full((T, T), np.nan), "classification": np.full((T, T), np.nan)}
    res = RunEval(os.path.basename(os.path.normpath(run_dir)), cfg["protocol"], steps, ckpts)
    cache_dir = os.path.join(run_dir, "eval", "cache")
    for i in ckpts:
        path = run.step_path(i)
        loaded = load_model(f"{cfg['model'].split(':')[0]}:{path}", device=device)
        emb = Embedder(loaded, file_hash(path), cache_dir, device, batch_size,
                       pixel_cache_dir=Layout(data_dir, benchmark).pixel_cache, draft=draft)
        classifiers: dict = {}
        base = {"run": res.run, "protocol": res.protocol, "model_step": i, "model_step_name": steps[i], "checkpoint": path}
        for j, name in enumerate(steps):
            for kind in ("retrieval", "classification"):
                value = _dynamic_cell(emb, classifiers, yearly[kind], kind, spec_steps[name].years if name in spec_steps else (),
                                      base, {"data_step": j, "data_step_name": name}, res.rows, spec.eval_step_gallery)
                if value is not None:
                    E[kind][i, j] = value
        _static_rows(emb, classifiers, statics, base, res.rows)
        res.images_embedded += emb.images_embedded
    res.matrices = E
    res.summary = summarize(res, run)
    res.seconds = time.time() - t0
    return res


def pooled_features(feats: list[dict]) -> dict:
    """Retrieval features of several sets as one gallery: images and texts concatenated, each
    text pointing at its image's place in the concatenation."""
    offsets = np.cumsum([0] + [f["image"].shape[0] for f in feats[:-1]])
    return {"image": torch.cat([f["image"] for f in feats]), "text": torch.cat([f["text"] for f in feats]),
            "text_to_image": torch.cat([f["text_to_image"] + int(o) for f, o in zip(feats, offsets)])}


def summarize(res: RunEval, run) -> dict:
    final = max(res.checkpoints)
    out = {"run": res.run, "protocol": res.protocol, "time_steps": len(res.steps), "checkpoints": len(res.checkpoints)}
    train = run.summary()
    out["samples_seen"] = train.get("total_samples_seen")
    out["macs"] = train.get("total_macs")
    for kind, E in res.matrices.items():
        for k, v in metrics.transfer_metrics(E).items():
            out[f"{kind}_{k}"] = v
        if len(res.checkpoints) == len(res.steps):
            for k, v in metrics.continual_metrics(E).items():
                out[f"{kind}_{k}"] = v
    statics = [r for r in res.rows if r["kind"] == "static" and r["model_step"] == final and r["metric"] == "acc1"]
    groups: dict = {}
    for r in statics:
        out[f"static_{r['task'].split('/', 1)[1]}_acc1"] = r["value"]
        groups.setdefault(r["group"], []).append(r["value"])
    for g, vals in groups.items():
        out[f"static_{g}_mean"] = float(np.mean(vals))
    if statics:
        out["static_average"] = float(np.mean([r["value"] for r in statics]))
    return out
