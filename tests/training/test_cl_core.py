"""The continual-learning core: one base config the three families extend (their defaults as they
were before the base existed), one registry queried by family, one flag spelling per field."""
from __future__ import annotations

import dataclasses

import pytest

from training.config import BASE_FIELDS, CLConfig
from training.fomo.runner import FomoConfig
from training.incremental import CILConfig
from training.train import TrainConfig


def test_every_family_extends_the_base_and_keeps_its_defaults():
    for cls in (TrainConfig, CILConfig, FomoConfig):
        assert issubclass(cls, CLConfig) and set(BASE_FIELDS) <= {f.name for f in dataclasses.fields(cls)}
    # the values each family hard-coded before the base config (training/train.py, training/incremental.py,
    # training/fomo/runner.py at the parent commit)
    t, c, f = TrainConfig(), CILConfig(), FomoConfig()
    assert (t.samples_per_step, t.batch_size, t.lr, t.warmup, t.workers, t.buffer, t.checkpoint_every) == (8192, 128, 1e-3, 10, -1, 1000, 25)
    assert (c.samples_per_step, c.batch_size, c.lr, c.warmup, c.workers, c.buffer, c.device) == (4096, 64, 1e-3, 5, 0, 256, "auto")
    assert (f.batch_size, f.lr, f.warmup, f.workers, f.buffer, f.checkpoint_every, f.model) == (64, 5e-4, 2, 0, 256, 0, "")


def test_cil_and_fomo_hand_the_trainer_what_they_used_to_build_by_hand():
    from training.fomo.runner import trainer_config as fomo_trainer
    from training.incremental import trainer_config as cil_trainer

    cfg = CILConfig(method="gdro", memory=40, seed=3, data_dir="/d", model="m", samples_per_step=64, batch_size=16, lr=0.01,
                    device="cpu", workers=1, options={"gamma": 0.5})
    old = TrainConfig(protocol="gdro", data_dir="/d", run_dir="/r", model="m", samples_per_step=64, batch_size=16, lr=0.01,
                      device="cpu", workers=1, buffer=256, warmup=5, seed=3, options={"gamma": 0.5, "memory": 40})
    assert cil_trainer(cfg, "/r") == old
    cfg = FomoConfig(method="lora", order="time", tasks=2, data_dir="/d", run_dir="/r", batch_size=8, lr=0.1, warmup=3,
                     cooldown=1, schedule="rsqrt", meta_schedule="rsqrt-recovery", text="both", seed=2, device="cpu", workers=1,
                     options={"rank": 2})
    old = TrainConfig(protocol="lora", data_dir="/d", benchmark="tic-datacomp", variant="basic", run_dir="/r", model="base",
                      samples_per_step=5 * 8, batch_size=8, lr=0.1, warmup=3, warmup_later=3, cooldown=1, schedule="rsqrt",
                      meta_schedule="rsqrt-recovery", seed=2, text="both", device="cpu", workers=1, buffer=256,
                      checkpoint_every=0, options={"rank": 2}, time_steps="fomo:time:T2")
    assert fomo_trainer(cfg, "/r", "base", 5) == old


def test_the_registry_answers_each_familys_list():
    from training.methods import get_method, methods
    from training.methods.ewc import EWC

    # TiC-CLIP's table (make train-all), in its order; oracle-final runs by name but is not in the list
    assert list(methods("tic", listed_only=True)) == ["sequential", "patching", "cumulative-exp", "cumulative-equal",
                                                      "cumulative-all", "ewc", "lwf", "cumulative-all-plus", "oracle"]
    assert set(methods("tic")) - set(methods("tic", listed_only=True)) == {"oracle-final"}
    assert set(methods("cil")) == {"finetune-ce", "clip-replay", "gcl", "gdro", "ewc", "lwf", "zero-shot"}
    assert set(methods("tic")) < set(methods("fomo")) and {"lora", "ema-merge", "full-ft"} <= set(methods("fomo"))
    assert type(get_method("ewc")) is EWC and type(get_method("ewc", family="cil")) is not EWC
    assert not any(get_method("zero-shot", family="cil").trains_at(t, 4) for t in range(4))


@pytest.mark.parametrize("family", ["tic", "cil", "fomo"])
def test_shared_flags_mean_the_same_field_in_every_family(family):
    from training.__main__ import parse as tic_parse
    from training.fomo.__main__ import parse as fomo_parse
    from training.incremental import configs_from_args, parser

    shared = ["--model", "ViT-B-32", "--data-dir", "/x", "--run-dir", "/r", "--seed", "7", "--device", "cpu", "--batch-size", "12",
              "--lr", "0.5", "--warmup", "4", "--workers", "2", "--shuffle-buffer", "9", "--option", "weight=2"]
    if family == "tic":
        cfg = tic_parse(["--method", "ewc", "--years", "", *shared])[0]
    elif family == "cil":
        p = parser()
        (cfg,) = configs_from_args(p, p.parse_args(["--method", "ewc", *shared]))
    else:
        cfg = fomo_parse(["--method", "ewc", *shared])[0]
    got = (cfg.model, cfg.data_dir, cfg.run_dir, cfg.seed, cfg.device, cfg.batch_size, cfg.lr, cfg.warmup, cfg.workers,
           cfg.buffer, cfg.options, getattr(cfg, "protocol", getattr(cfg, "method", None)))
    assert got == ("ViT-B-32", "/x", "/r", 7, "cpu", 12, 0.5, 4, 2, 9, {"weight": 2}, "ewc")


def test_old_spellings_are_aliases(capsys):
    from training.fomo.__main__ import parse as fomo_parse
    from training.incremental import configs_from_args, parser

    assert fomo_parse(["--base-model", "tic-tiny-32"])[0].model == "tic-tiny-32"
    p = parser()
    (cfg,) = configs_from_args(p, p.parse_args(["--samples-per-task", "64"]))
    assert cfg.samples_per_step == 64
    from eval.incremental import main as old_eval_incremental

    with pytest.raises(SystemExit) as e:  # the evaluator no longer trains: one line, exit 2
        old_eval_incremental(["--dataset", "synthetic-web", "--method", "gdro"])
    assert e.value.code == 2 and "evaluation no longer trains" in capsys.readouterr().err
