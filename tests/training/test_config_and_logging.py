"""``--config FILE.yaml`` (TiC-CLIP's published settings in configs/, CLI overrides), and the
per-iteration run log (JSONL + TensorBoard event files read back with TensorBoard's reader)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from training.__main__ import parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")

# apple/ml-tic-clip datacomp.patch (scale_configs.py): global batch, lr, samples per step, warmup, model
PUBLISHED = {
    "tic-datacomp-debug": (1024, 1e-4, 1024 * 1000, 500, "ViT-B-32"),
    "tic-datacomp-medium": (4096, 5e-4, 4096 * 4500, 500, "ViT-B-32"),
    "tic-datacomp-large": (8192, 5e-4, 8192 * 22500, 500, "ViT-B-16"),
    "tic-datacomp-xlarge": (90112, 1e-3, 90112 * 20500, 10000, "ViT-B-16"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_tic_configs_hold_the_published_settings(name):
    cfg, _ = parse(["--config", os.path.join(CONFIGS, f"{name}.yaml"), "--protocol", "cumulative-all"])
    batch, lr, samples, warmup, model = PUBLISHED[name]
    assert (cfg.global_batch_size, cfg.lr, cfg.samples_per_step, cfg.warmup, cfg.model) == (batch, lr, samples, warmup, model)
    assert cfg.weight_decay == 0.2 and cfg.precision == "amp" and cfg.grad_checkpointing and cfg.local_loss and cfg.gather_with_grad
    assert cfg.protocol == "cumulative-all" and cfg.warmup_later == (2000 if name.endswith("xlarge") else 0)


def test_embedded_default_config_is_the_default():
    from_file, _ = parse(["--config", os.path.join(CONFIGS, "embedded-default.yaml")])
    plain, _ = parse([])
    assert from_file.to_json() | {"config_file": ""} == plain.to_json()


def test_command_line_wins_over_the_file_and_bad_files_fail_clearly(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.05\nbatch_size: 7\ngrad_checkpointing: true\noption: {weight: 3}\nshuffle-buffer: 5\n")
    cfg, _ = parse(["--config", str(f), "--lr", "0.01", "--no-grad-checkpointing"])
    assert (cfg.lr, cfg.batch_size, cfg.grad_checkpointing, cfg.options, cfg.buffer) == (0.01, 7, False, {"weight": 3}, 5)
    for text, message in (("nope: 1\n", "unknown option 'nope'"), ("precision: fp8\n", "'fp8' is not one of"),
                          ("- a\n", "expected a mapping"), ("lr: [\n", "--config")):
        f.write_text(text)
        with pytest.raises(SystemExit) as e:
            parse(["--config", str(f)])
        assert e.value.code == 2 and message in capsys.readouterr().err


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


def test_config_run_writes_config_metrics_and_tensorboard_events(tiny_benchmark, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    config = os.path.join(CONFIGS, "embedded-default.yaml")
    p = _cli("--config", config, "--data-dir", tiny_benchmark, "--run-dir", str(run), "--samples-per-step", "48",
             "--batch-size", "16", "--workers", "0", "--max-steps", "1", "--shuffle-buffer", "8", "--warmup", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    with open(config, "rb") as f:
        assert (run / "config.yaml").read_bytes() == f.read()  # the file as given
    resolved = json.loads((run / "config.json").read_text())["train"]
    assert (resolved["lr"], resolved["samples_per_step"], resolved["warmup"]) == (0.001, 48, 2)  # file, CLI, CLI

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["iteration"], r["samples"]) for r in rows] == [(0, 1, 16), (0, 2, 32), (0, 3, 48)]
    for r in rows:
        assert math.isfinite(r["loss"]) and 0 < r["data_wait"] < 1 and r["samples_per_s"] > 0
        assert r["samples_per_s_per_device"] == pytest.approx(r["samples_per_s"])  # one device
        assert r["logit_scale"] == pytest.approx(1 / 0.07, rel=0.01)  # open_clip's initial temperature, 3 small steps later
    assert rows[0]["lr"] == pytest.approx(0.001 / 2)  # warmup 2: lr x 1/2 at the first iteration

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    for tag in ("train/loss", "train/lr", "train/samples_per_s", "train/samples_per_s_per_device", "train/data_wait",
                "train/logit_scale"):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [16, 32, 48], tag
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_cli_refusals_are_one_line(tiny_benchmark, tmp_path):
    p = _cli("--protocol", "lwf", "--accum-freq", "2", "--data-dir", tiny_benchmark, "--run-dir", str(tmp_path / "r"),
             "--workers", "0")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: --accum-freq 2: method 'lwf'") and "Traceback" not in p.stderr


def test_wandb_logs_offline_into_the_run_dir(tmp_path):
    from training.runlog import RunLog

    log = RunLog(str(tmp_path), True, {"lr": 0.1}, wandb=True)  # offline even where WANDB_MODE=disabled is exported
    for i in range(3):
        log.log({"step": 0, "name": "2014", "iteration": i + 1, "samples": 16 * (i + 1), "loss": 1.0 / (i + 1), "lr": 0.1})
    log.close()
    runs = [p for p in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb") if p.stat().st_size > 0]
    assert len(runs) == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
