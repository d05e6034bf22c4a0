"""The GPU check (``bench/gpu.sh``, under 10 minutes on one GPU): ViT-B-32 at 224 px on synthetic
shards with amp_bf16, the bundled trainer against open_clip_train in the same run (samples/s per
GPU, the median over the iterations after warm-up), then one TiC protocol (cumulative-all) for
two short time steps with gradient accumulation and its evaluation on the GPU.

Steps and figures land in ``bench/out/gpu.json``:
- ``ours_samples_per_s_per_gpu``: median of ``samples_per_s_per_device`` in the run's
  metrics.jsonl (iterations 6 and later);
- ``open_clip_train_samples_per_s_per_gpu``: median of the ``.../s/gpu`` figures open_clip_train
  logs every 5 steps (after the first 5);
- ``tic``: the protocol's summary (iterations, samples, MACs, seconds per step) and the
  evaluation's summary (retrieval/classification matrices' metrics), with wall times.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OC_CODE = ("import sys, functools, open_clip_train.data as d; "
           "d.tar_file_expander = functools.partial(d.tar_file_expander, eof_value=None); "
           "from open_clip_train.main import main; main(sys.argv[1:])")  # as bench/train_vs_open_clip.py


def _run(cmd, **kw):
    t = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return r, time.time() - t


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    p.add_argument("--work", default="/tmp/tic-gpu-check")
    p.add_argument("--per-year", type=int, default=2048, help="synthetic training samples per year (5 years)")
    p.add_argument("--samples", type=int, default=16384, help="samples per throughput run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--tic-samples", type=int, default=8192, help="samples per time step of the TiC protocol")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script's steps (with a tiny --model)")
    return p


def main(argv=None) -> dict:
    a = _parser().parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: bench/gpu.sh needs a GPU")
    out: dict = {"device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "model": a.model, "precision": "amp_bf16",
                 "batch_size_per_gpu": a.batch_size}
    data = os.path.join(a.work, "data")
    t = time.time()
    from benchmark_builder.layout import Layout

    if not os.path.exists(Layout(data).root):
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from conftest import write_tiny_benchmark

        write_tiny_benchmark(data, per_year=a.per_year, eval_per_year=128)
    out["data_seconds"] = round(time.time() - t, 1)

    runs = os.path.join(a.work, time.strftime("runs-%Y%m%d-%H%M%S"))  # fresh run dirs per invocation, data reused
    common = ["--model", a.model, "--precision", "amp_bf16", "--batch-size", str(a.batch_size), "--workers", str(a.workers),
              "--device", a.device, "--checkpoint-every", "0"]
    out.update(_ours(a, data, runs, common))
    out.update(_open_clip_train(a, data, runs))
    if out["open_clip_train_samples_per_s_per_gpu"]:
        out["ratio"] = out["ours_samples_per_s_per_gpu"] / out["open_clip_train_samples_per_s_per_gpu"]
    out["tic"], t_train, t_eval = _tic(a, data, runs, common)
    os.makedirs(os.path.join(REPO, "bench", "out"), exist_ok=True)
    result = os.path.join("bench", "out", "gpu.json" if a.device == "cuda" else "gpu-dry-run.json")
    with open(os.path.join(REPO, result), "w") as f:
        json.dump(out, f, indent=2)
    print(f"{out['device']}: {a.model} amp_bf16 batch {a.batch_size}: bundled trainer "
          f"{out['ours_samples_per_s_per_gpu']:.0f} samples/s/GPU (data wait {out['ours_data_wait']:.0%}), open_clip_train "
          f"{out['open_clip_train_samples_per_s_per_gpu'] or float('nan'):.0f} samples/s/GPU")
    print(f"cumulative-all, 2 time steps x {a.tic_samples} samples (accum-freq 2, grad checkpointing): train {t_train:.0f} s, "
          f"eval {t_eval:.0f} s -> {result}")
    return out


def _ours(a, data: str, runs: str, common: list[str]) -> dict:
    """The bundled trainer's throughput: one time step of ``a.samples`` samples."""
    run = os.path.join(runs, "ours")
    _, seconds = _run([sys.executable, "-m", "training", "tic", "--method", "sequential", "--data-dir", data,
                       "--run-dir", run, "--samples-per-step", str(a.samples), "--max-steps", "1", *common])
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return {"ours_seconds": seconds,
            "ours_samples_per_s_per_gpu": statistics.median(r["samples_per_s_per_device"] for r in rows[5:]),
            "ours_data_wait": statistics.median(r["data_wait"] for r in rows[5:])}


def _open_clip_train(a, data: str, runs: str) -> dict:
    """open_clip_train's throughput on the same shards (the first time step's)."""
    from training.data import time_step_sources

    shards = list(time_step_sources(data, "basic")[0].shards)
    logs = os.path.join(runs, "open_clip_train")
    r, seconds = _run(
        [sys.executable, "-c", "import pipelines.models; " + OC_CODE, "--model", a.model, "--train-data", "::".join(shards), "--dataset-type", "webdataset",
         "--dataset-resampled", "--train-num-samples", str(a.samples), "--batch-size", str(a.batch_size), "--epochs", "1",
         "--workers", str(a.workers), "--lr", "5e-4", "--wd", "0.2", "--warmup", "10", "--precision", "amp_bf16",
         "--logs", logs, "--name", f"oc-{int(time.time())}", "--save-frequency", "0", "--log-every-n-steps", "5",
         "--device", a.device])
    per_gpu = [float(x) for x in re.findall(r"([\d.]+)/s/gpu", r.stdout + r.stderr)]
    return {"open_clip_train_seconds": seconds,
            "open_clip_train_samples_per_s_per_gpu": statistics.median(per_gpu[1:]) if len(per_gpu) > 1 else None}


def _tic(a, data: str, runs: str, common: list[str]) -> tuple[dict, float, float]:
    """cumulative-all for two time steps with accumulation and gradient checkpointing, then its evaluation:
    (the summaries, training seconds, evaluation seconds)."""
    tic = os.path.join(runs, "cumulative-all")
    _, t_train = _run([sys.executable, "-m", "training", "tic", "--method", "cumulative-all", "--data-dir", data, "--run-dir", tic,
                       "--samples-per-step", str(a.tic_samples), "--max-steps", "2", "--accum-freq", "2", "--grad-checkpointing", *common])
    _, t_eval = _run([sys.executable, "-m", "eval", "tic", "run", tic, "--data-dir", data, "--device", a.device])
    with open(os.path.join(tic, "summary.json")) as f:
        train_summary = json.load(f)
    with open(os.path.join(tic, "eval", "summary.json")) as f:
        eval_summary = json.load(f)
    return ({"protocol": "cumulative-all", "time_steps": 2, "samples_per_step": a.tic_samples, "train_seconds": round(t_train, 1),
             "eval_seconds": round(t_eval, 1), "train": train_summary, "eval": eval_summary}, t_train, t_eval)

if __name__ == "__main__":
    main()
