"""Training throughput of the bundled trainer against open_clip_train on the same shards.

Both train tic-tiny-32 (fp32, batch 128, one DataLoader worker, AdamW, cosine) on the
embedded default's first time step (2014-2016 basic shards), each as its own process, for
N1 and N2 samples; the marginal throughput (N2 - N1) / (t2 - t1) removes start-up (imports,
model creation, the first shard open) from both sides. Both clip gradients at norm 1 (the
bundled trainer's default; open_clip_train's ``--grad-clip-norm 1.0``) and log rarely (ours
logs every iteration, as it always does). The four runs of a repeat alternate (ours N1,
open_clip_train N1, ours N2, open_clip_train N2) so that a change of machine load hits both;
the figure is the median over ``--repeat`` repeats of ours / open_clip_train, with its spread.
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
                  "--grad-clip-norm", "1.0", "--device", "cpu", "--log-every-n-steps", "1000"], env)


def main(argv=None, data_dir: str = os.path.join(REPO, "data")) -> dict:
    import argparse
    import statistics

    from training.data import time_step_sources

    ap = argparse.ArgumentParser(prog="python -m bench train")
    ap.add_argument("--n1", type=int, default=N1)
    ap.add_argument("--n2", type=int, default=N2)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    n1, n2 = a.n1, a.n2
    src = time_step_sources(data_dir, "basic")[0]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    runs, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeat):
            t = {}
            for n in (n1, n2):
                t[("ours", n)] = ours(data_dir, n, os.path.join(tmp, str(r)), env)
                t[("open_clip_train", n)] = open_clip_train(list(src.shards), n, os.path.join(tmp, str(r)), env)
            rate = {k: (n2 - n1) / (t[(k, n2)] - t[(k, n1)]) for k in ("ours", "open_clip_train")}
            ratios.append(rate["ours"] / rate["open_clip_train"])
            runs.append({"samples_per_s": rate, "ratio": ratios[-1], "seconds": {f"{k}-{n}": v for (k, n), v in t.items()}})
            for k in rate:
                print(f"{k:>16}: {t[(k, n1)]:.1f} s for {n1}, {t[(k, n2)]:.1f} s for {n2} samples -> {rate[k]:.0f} samples/s marginal")
            print(f"repeat {r + 1}/{a.repeat}: ours / open_clip_train {ratios[-1]:.2f}x")
    ratio = statistics.median(ratios)
    print(f"training throughput, ours / open_clip_train: {ratio:.2f}x (median of {a.repeat}: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"tic-tiny-32, batch {BATCH}, CPU, same shards)")
    result = {"benchmark": "train_vs_open_clip", "n1": n1, "n2": n2, "ratio": ratio, "ratios": ratios, "runs": runs,
              "samples_per_s": {k: statistics.median(r["samples_per_s"][k] for r in runs) for k in ("ours", "open_clip_train")}}
    os.makedirs(os.path.join(REPO, "bench", "out"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "out", "train_vs_open_clip.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
