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

    from bench import report
    from training.data import time_step_sources

    ap = argparse.ArgumentParser(prog="python -m bench train")
    ap.add_argument("--n1", type=int, default=N1)
    ap.add_argument("--n2", type=int, default=N2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS for both sides (0: each side's own default: ours the cores minus its "
                         "loader worker, open_clip_train torch's one per core)")
    a = ap.parse_args(argv)
    src = time_step_sources(data_dir, "basic")[0]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"WANDB_MODE": "disabled"}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10**9))  # a fresh run dir per run
        m = report.paired_marginal({
            "ours": lambda n: ours(data_dir, n, os.path.join(tmp, str(next(runs))), env),
            "open_clip_train": lambda n: open_clip_train(list(src.shards), n, os.path.join(tmp, str(next(runs))), env),
        }, a.n1, a.n2, a.repeat)
    report.table(["side", "samples/s (marginal, median)"] + [f"repeat {i + 1}" for i in range(a.repeat)],
                 [[k, m["per_s"][k]] + [r["per_s"][k] for r in m["runs"]] for k in m["per_s"]],
                 title=f"training throughput, tic-tiny-32, batch {BATCH}, 1 worker, CPU, same shards, {a.n1} -> {a.n2} samples, "
                       f"compute threads: {a.threads or 'each side its default'}")
    print(f"ours / open_clip_train: {m['spread']}")
    result = {"benchmark": "train_vs_open_clip", **m, "samples_per_s": m["per_s"], "batch": BATCH,
              "threads": a.threads or "default"}
    report.save("train_vs_open_clip", result)
    return result


if __name__ == "__main__":
    main()
