"""A training run dir on a bucket (``--run-dir gs://...``, ``s3://...``), against the emulators of
tests/storage/conftest.py: a run killed with SIGKILL after a checkpoint inside its second time step
resumes from the bucket's checkpoint, and its evaluation reads the checkpoints from the bucket.

The oracle is the same run, uninterrupted, in a local run dir: identical weights of every step's
checkpoint, the same metrics rows (each iteration exactly once on the bucket, see training/runlog.py)
and identical evaluation matrices."""
from __future__ import annotations

import io
import os
import sys

import pytest
import torch

from pipelines import io as pio
from tests.conftest import kill_when

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 10 iterations per time step, a checkpoint every 2: the kill lands well inside step 1
TRAIN = ["--protocol", "sequential", "--model", "tic-tiny-32", "--samples-per-step", "160", "--batch-size", "16",
         "--workers", "0", "--warmup", "2", "--checkpoint-every", "2", "--max-steps", "2", "--device", "cpu",
         "--threads", "1"]  # one compute thread in every run: CPU float sums in the same order, weights comparable exactly
TIMING = ("samples_per_s", "samples_per_s_per_device", "data_wait")  # wall-clock figures of a row


def _train(data: str, run_dir: str, *extra: str) -> None:
    from training.__main__ import main

    assert main([*TRAIN, "--data-dir", data, "--run-dir", run_dir, *extra]) == 0


def _evaluate(data: str, run_dir: str) -> dict:
    from eval.__main__ import main

    assert main(["run", run_dir, "--data-dir", data, "--device", "cpu"]) == 0
    return pio.read_json(pio.join(run_dir, "eval", "matrices.json"))


def _weights(run_dir: str, t: int) -> dict:
    return torch.load(io.BytesIO(pio.read_bytes(pio.join(run_dir, "checkpoints", f"step_{t}.pt"))),
                      weights_only=True)["state_dict"]


def _rows(run_dir: str) -> list[dict]:
    import json

    lines = pio.read_bytes(pio.join(run_dir, "metrics.jsonl")).decode().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _step_of(checkpoint: str) -> int | None:
    """The time step of a checkpoint that the running trainer may replace while it is read (the
    store then refuses the read of the old version: OSError); None when absent or replaced."""
    try:
        return torch.load(io.BytesIO(pio.read_bytes(checkpoint)), weights_only=True)["step"]
    except (FileNotFoundError, OSError):
        return None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.conftest import write_tiny_benchmark

    return write_tiny_benchmark(str(tmp_path_factory.mktemp("tiny")), per_year=32, eval_per_year=8)


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("local") / "seq")
    _train(data, run)
    return {"run": run, "matrices": _evaluate(data, run), "rows": _rows(run)}


@pytest.mark.timeout(600)  # a hang bound
def test_run_dir_on_a_bucket_killed_resumed_and_evaluated(bucket, data, local):
    run = f"{bucket}/runs/seq"
    latest, step0, step1 = (pio.join(run, "checkpoints", n) for n in ("latest.pt", "step_0.pt", "step_1.pt"))
    # killed once a checkpoint inside step 1 is on the bucket
    kill_when([sys.executable, "-m", "training", *TRAIN, "--data-dir", data, "--run-dir", run],
              lambda: pio.exists(step0) and _step_of(latest) == 1, "checkpoint inside step 1", 300, cwd=REPO,
              env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    assert not pio.exists(step1), "the run finished step 1 before it could be killed"
    killed_at = torch.load(io.BytesIO(pio.read_bytes(latest)), weights_only=True)["iteration"]
    before = _rows(run)  # the log as the killed run left it: rewritten before each checkpoint
    assert before and max((r["step"], r["iteration"]) for r in before) <= (1, killed_at + 2)
    assert not [f for f in pio.glob(pio.join(bucket, "**", "*")) if ".tmp" in f]  # no partial object

    _train(data, run, "--resume")
    for t in (0, 1):  # resumed from the bucket's checkpoint: the uninterrupted run's weights
        a, b = _weights(local["run"], t), _weights(run, t)
        assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    rows = _rows(run)
    assert sorted((r["step"], r["iteration"]) for r in rows) == [(t, i) for t in (0, 1) for i in range(1, 11)]  # once each
    assert sorted(rows, key=lambda r: (r["step"], r["iteration"])) == local["rows"]
    assert not pio.exists(latest)  # removed at the end, as locally
    assert pio.glob(pio.join(run, "tensorboard", "*"))  # the staged event files were uploaded

    assert _evaluate(data, run) == local["matrices"]  # checkpoints read from the bucket
    for name in ("results.jsonl", "summary.json", "heatmap_retrieval.png", "per_year_retrieval.png"):
        assert pio.exists(pio.join(run, "eval", name)), name
