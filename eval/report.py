"""Evaluation outputs: results.jsonl, the DuckDB ``results`` table, printed tables, PNGs and a
Markdown comparison table in the layout of TiC-CLIP's (compute, static tasks, backward / ID /
forward transfer).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from pipelines import io as pio

RESULT_COLUMNS = ["run", "protocol", "model_step", "model_step_name", "task", "kind", "group", "data_step",
                  "data_step_name", "year", "metric", "value", "checkpoint"]


def eval_dir(run_dir: str) -> str:
    return pio.join(run_dir, "eval")


def write_outputs(res, run_dir: str) -> dict:
    """The evaluation's files under ``<run_dir>/eval`` (a local path or a bucket), each atomically."""
    d = eval_dir(run_dir)
    with pio.atomic_open(pio.join(d, "results.jsonl"), "w") as f:
        for r in res.rows:
            f.write(json.dumps({c: r.get(c) for c in RESULT_COLUMNS}) + "\n")
    pio.write_json(pio.join(d, "summary.json"), _clean(res.summary))
    pio.write_json(pio.join(d, "matrices.json"),
                   {"steps": res.steps, **{k: _clean(E.tolist()) for k, E in res.matrices.items()}})
    pngs = [heatmap(res.matrices[k], res.steps, f"{res.run}: {k} (model step x data step)", pio.join(d, f"heatmap_{k}.png"))
            for k in res.matrices]
    pngs.append(curves(res, pio.join(d, "per_year_retrieval.png")))
    return {"dir": d, "pngs": pngs}


def _clean(x):
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def load_into_duckdb(rows: list[dict], index_path: str, run: str) -> int:
    """Replace this run's rows of the ``results`` table in the benchmark's index."""
    import duckdb
    import pyarrow as pa

    table = pa.table({c: [r.get(c) for r in rows] for c in RESULT_COLUMNS}).cast(pa.schema(
        [(c, pa.float64() if c == "value" else pa.int64() if c in ("model_step", "data_step", "year") else pa.string())
         for c in RESULT_COLUMNS]))
    os.makedirs(os.path.dirname(os.path.abspath(index_path)), exist_ok=True)
    con = duckdb.connect(index_path)
    try:
        con.execute("create table if not exists results (run varchar, protocol varchar, model_step bigint, "
                    "model_step_name varchar, task varchar, kind varchar, \"group\" varchar, data_step bigint, "
                    "data_step_name varchar, year bigint, metric varchar, value double, checkpoint varchar)")
        con.execute("delete from results where run = ?", [run])
        con.register("new_rows", table)
        con.execute("insert into results select * from new_rows")
        con.unregister("new_rows")
        (n,) = con.execute("select count(*) from results where run = ?", [run]).fetchone()
    finally:
        con.close()
    return n


def format_matrix(E: np.ndarray, steps: list[str], title: str) -> str:
    w = max(9, max(len(s) for s in steps) + 1)
    lines = [title, "model \\ data".ljust(14) + "".join(s.rjust(w) for s in steps)]
    for i, s in enumerate(steps):
        lines.append(s.ljust(14) + "".join(("" if np.isnan(v) else f"{100 * v:.1f}%").rjust(w) for v in E[i]))
    return "\n".join(lines)


def format_run(res) -> str:
    out = [f"\n=== {res.run} ({res.protocol}): {len(res.checkpoints)} checkpoints x {len(res.steps)} time steps, "
           f"{res.seconds:.1f} s"]
    out.append(format_matrix(res.matrices["retrieval"], res.steps, "dynamic retrieval, mean_recall@1"))
    out.append(format_matrix(res.matrices["classification"], res.steps, "dynamic classification, top-1"))
    s = res.summary
    keys = [k for k in s if k.startswith(("retrieval_", "classification_", "static_"))]
    out.append("  ".join(f"{k} {s[k]:.4f}" for k in keys if isinstance(s[k], float) and not math.isnan(s[k])))
    return "\n".join(out)


def heatmap(E: np.ndarray, steps: list[str], title: str, png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E = 100 * np.asarray(E, dtype=float)  # cells and colour bar in percent
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(steps), 0.8 + 0.65 * len(steps)))
    im = ax.imshow(np.ma.masked_invalid(E), cmap="viridis", vmin=np.nanmin(E) if np.isfinite(E).any() else 0,
                   vmax=np.nanmax(E) if np.isfinite(E).any() else 100)
    ax.set_xticks(range(len(steps)), steps, rotation=45, ha="right")
    ax.set_yticks(range(len(steps)), steps)
    ax.set_xlabel("data time step")
    ax.set_ylabel("model after time step")
    for i in range(len(steps)):
        for j in range(len(steps)):
            if np.isfinite(E[i, j]):
                ax.text(j, i, f"{E[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title(title + " (cells in %)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, png)
    return png


def curves(res, png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    E = res.matrices["retrieval"]
    for i in res.checkpoints:
        ax.plot(range(len(res.steps)), 100 * E[i], marker="o", label=f"after {res.steps[i]}")
    ax.set_xticks(range(len(res.steps)), res.steps, rotation=45, ha="right")
    ax.set_ylabel("retrieval mean_recall@1 (%)")
    ax.set_xlabel("evaluation data (time step)")
    ax.set_title(f"{res.run}: each checkpoint across time", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, png)
    return png


def save_figure(fig, png: str) -> None:
    """Write a matplotlib figure as PNG atomically (a local path or an object) and close it."""
    import matplotlib.pyplot as plt

    pio.save_figure(fig, png, dpi=110)
    plt.close(fig)


COMPARE_COLUMNS = [
    ("protocol", "method"), ("samples_seen", "samples"), ("macs", "MACs"), ("macs_ratio", "x Sequential"),
    ("static_average", "static avg"),
    ("retrieval_backward_transfer", "ret. backward"), ("retrieval_in_distribution", "ret. ID"),
    ("retrieval_forward_transfer", "ret. forward"),
    ("classification_backward_transfer", "cls. backward"), ("classification_in_distribution", "cls. ID"),
    ("classification_forward_transfer", "cls. forward"), ("benchmark", "benchmark"),
]

# TiC-CLIP's names of the protocols (Garg et al., ICLR 2024, Table 2)
TIC_NAMES = {"sequential": "Sequential", "patching": "Patching", "cumulative-exp": "Cumulative-Exp",
             "cumulative-equal": "Cumulative-Equal", "cumulative-all": "Cumulative-All", "ewc": "EWC", "lwf": "LwF",
             "cumulative-all-plus": "Cumulative-All*", "oracle": "Oracle", "oracle-final": "Oracle (final step only)"}


def compare_table(summaries: list[dict]) -> str:
    """TiC-CLIP's table: compute in MACs and as a multiple of Sequential's (the run whose protocol
    is ``sequential``; "-" without one), the static average and the dynamic backward / ID /
    forward transfer (in %)."""
    seq = next((s.get("macs") for s in summaries if s.get("protocol") == "sequential" and s.get("macs")), None)
    head = "| " + " | ".join(h for _, h in COMPARE_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COMPARE_COLUMNS) + "|"
    lines = [head, sep]
    for s in summaries:
        cells = []
        for k, _ in COMPARE_COLUMNS:
            v = s.get(k)
            if k == "macs_ratio":
                v = s["macs"] / seq if seq and s.get("macs") is not None else None
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("-")
            elif k == "protocol":
                cells.append(TIC_NAMES.get(v, v))
            elif k == "macs":
                cells.append(f"{v:.2e}")
            elif k == "macs_ratio":
                cells.append(f"{v:.2f}x")
            elif isinstance(v, float):
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_heatmaps(runs: list[tuple[str, dict]], png: str, kind: str = "retrieval") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mats = [100 * np.array([[np.nan if v is None else v for v in row] for row in m[kind]], dtype=float) for _, m in runs]
    finite = [E for E in mats if np.isfinite(E).any()]  # none: a benchmark without this kind of set (TiC-YFCC's classification)
    vmin = np.nanmin([np.nanmin(E) for E in finite]) if finite else 0.0
    vmax = np.nanmax([np.nanmax(E) for E in finite]) if finite else 100.0
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.8, 3.6 * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.55})
    flat = axes.ravel().tolist()
    for ax in flat[len(runs):]:
        ax.axis("off")
    for i, (ax, (name, m), E) in enumerate(zip(flat, runs, mats)):
        im = ax.imshow(np.ma.masked_invalid(E), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(m["steps"])), m["steps"], rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(m["steps"])), m["steps"] if i % cols == 0 else [], fontsize=6)
        if i >= len(runs) - cols:
            ax.set_xlabel("data step", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("model step", fontsize=7)
    fig.colorbar(im, ax=flat, fraction=0.02)
    fig.suptitle(f"dynamic {kind} (mean_recall@1, %)" if kind == "retrieval" else f"dynamic {kind} (top-1, %)", fontsize=10)
    save_figure(fig, png)
    return png
