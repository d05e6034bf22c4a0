"""Training throughput of the bundled trainer against open_clip_train on the same shards.

Both train tic-tiny-32 (fp32, batch 128, one DataLoader worker, AdamW, cosine) on the
embedded default's first time step (2014-2016 basic shards), each as its own process, for
N1 and N2 samples; the marginal throughput (N2 - N1) / (t2 - t1) removes start-up (imports,
model creation, the first shard open) from both sides. The figure is ours / open_clip_train.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N1, N2 = 2048, 10240
BATCH = 128


def _time(cmd, env) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def ours(data_dir: str, n: int, tmp: str, env) -> float:
    run = os.path.join(tmp, f"ours-{n}")
    return _time([sys.executable, "-m", "training", "tic", "--method", "sequential", "--data-dir", data_dir, "--run-dir", run,
                  "--samples-per-step", str(n), "--batch-size", str(BATCH), "--workers", "1", "--max-steps", "1",
                  "--checkpoint-every", "0", "--device", "cpu"], env)


def open_clip_train(shards: list[str], n: int, tmp: str, env) -> float:
    # open_clip_train 3.x groups tar members with its own group_by_keys_nothrow, written for
    # webdataset < 1.0; webdataset 1.x's tar_file_expander yields an empty end-of-shard marker
    # that it cannot read. Turning the marker off (eof_value=None) is the only change.
    code = ("import sys, functools, pipelines.models, open_clip_train.data as d; "
            "d.tar_file_expander = functools.partial(d.tar_file_expander, eof_value=None); "
            "from open_clip_train.main import main; main(sys.argv[1:])")
    return _time([sys.executable, "-c", code, "--model", "tic-tiny-32", "--train-data", "::".join(shards),
                  "--dataset-type", "webdataset", "--dataset-resampled", "--train-num-samples", str(n),
                  "--batch-size", str(BATCH), "--epochs", "1", "--workers", "1", "--lr", "1e-3", "--wd", "0.2",
                  "--warmup", "10", "--precision", "fp32", "--logs", tmp, "--name", f"oc-{n}", "--save-frequency", "0",
                  "--device", "cpu", "--log-every-n-steps", "1000"], env)


def main(argv=None, data_dir: str = os.path.join(REPO, "data")) -> dict:
    from training.data import time_step_sources

    src = time_step_sources(data_dir, "basic")[0]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        t = {("ours", n): ours(data_dir, n, tmp, env) for n in (N1, N2)}
        t.update({("open_clip_train", n): open_clip_train(list(src.shards), n, tmp, env) for n in (N1, N2)})
    rate = {k: (N2 - N1) / (t[(k, N2)] - t[(k, N1)]) for k in ("ours", "open_clip_train")}
    ratio = rate["ours"] / rate["open_clip_train"]
    for k in rate:
        print(f"{k:>16}: {t[(k, N1)]:.1f} s for {N1}, {t[(k, N2)]:.1f} s for {N2} samples -> {rate[k]:.0f} samples/s marginal")
    print(f"training throughput, ours / open_clip_train: {ratio:.2f}x (tic-tiny-32, batch {BATCH}, CPU, same shards)")
    result = {"benchmark": "train_vs_open_clip", "samples_per_s": rate, "ratio": ratio,
              "seconds": {f"{k}-{n}": v for (k, n), v in t.items()}}
    os.makedirs(os.path.join(REPO, "bench", "out"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "out", "train_vs_open_clip.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
