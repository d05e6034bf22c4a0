"""``python -m training {tic,cil,fomo} ...``: train one continual method on one family's stream.

    python -m training tic --method cumulative-all --data-dir ./data --run-dir runs/cumulative-all
    python -m training cil --dataset synthetic-web --method gdro --memory 200     # class-incremental
    python -m training fomo --method ema-merge --order time --tasks 10             # FoMo-in-Flux
    python -m training tic --list                                                  # TiC's protocol list
    python -m training filter-model --data-dir ./data    # the builder's default filter model (make filter)

The flags shared by the families (``--model``, ``--data-dir``, ``--run-dir``, ``--method``,
``--samples-per-step``, ``--batch-size``, ``--lr``, ``--warmup``, ``--seed``, ``--device auto``,
``--option KEY=VALUE``, ...) are the fields of the base config (``training/config.py``). Without a
family, ``python -m training --protocol ...`` is ``tic`` (and ``torchrun -m training`` too):

    torchrun --nproc_per_node 2 -m training tic --protocol sequential --run-dir runs/seq --device cpu
    python -m training tic --protocol sequential --run-dir runs/seq --resume     # continue a killed run
    python -m training tic --config configs/tic-datacomp-medium.yaml --protocol cumulative-all --accum-freq 4

``tic --config FILE.yaml`` sets any option (keys are the option names, dashes or underscores;
``option`` takes a mapping of method options); options given on the command line win. The file
and the resolved values are written into the run dir (config.yaml, config.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import yaml

from training.config import add_base_args, base_from_args
from training.fomo.__main__ import main as fomo_main
from training.incremental import main as cil_main
from training.methods import FAMILIES, methods
from training.scale import PRECISIONS
from training.train import TrainConfig, train


def _config_defaults(p: argparse.ArgumentParser, path: str) -> dict:
    """The YAML file's values as parser defaults, checked against the parser's options."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        p.error(f"--config {path}: {e}")
    if not isinstance(values, dict):
        p.error(f"--config {path}: expected a mapping of option: value")
    actions = {a.dest: a for a in p._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            p.error(f"--config {path}: unknown option {key!r}")
        action = actions[dest]
        if dest == "option":
            if not isinstance(value, dict):
                p.error(f"--config {path}: option must be a mapping of method options")
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        elif isinstance(value, str) and action.type is not None:
            try:
                value = action.type(value)
            except ValueError:
                p.error(f"--config {path}: {key}: {value!r} is not a {action.type.__name__}")
        if action.choices is not None and value not in action.choices:
            p.error(f"--config {path}: {key}: {value!r} is not one of {sorted(action.choices)}")
        out[dest] = value
    return out


def parse(argv=None) -> tuple[TrainConfig, bool]:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m training tic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", metavar="FILE.yaml", help="option values from a YAML file (configs/); the command line wins")
    p.add_argument("--method", "--protocol", dest="protocol", default=d.protocol, choices=sorted(methods("tic")))
    add_base_args(p, dataclasses.replace(d, run_dir=""), helps={"run_dir": "default: runs/<method>"})
    p.add_argument("--global-batch-size", type=int, default=d.global_batch_size,
                   help="samples per optimizer step over all ranks; sets --batch-size to it / (ranks x accum-freq)")
    p.add_argument("--accum-freq", type=int, default=d.accum_freq,
                   help="micro-batches per optimizer step; the contrastive loss runs over the accumulated batch")
    p.add_argument("--warmup-later", type=int, default=d.warmup_later, help="warmup iterations of later steps")
    p.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                   help="auto: amp on a GPU, fp32 on CPU; amp_bf16 also runs on CPU")
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=d.grad_checkpointing,
                   help="recompute activations in the backward pass (open_clip set_grad_checkpointing)")
    p.add_argument("--torchcompile", action=argparse.BooleanOptionalAction, default=d.torchcompile, help="torch.compile the model")
    p.add_argument("--local-loss", action=argparse.BooleanOptionalAction, default=d.local_loss,
                   help="open_clip ClipLoss local_loss (default: on with several ranks)")
    p.add_argument("--gather-with-grad", action=argparse.BooleanOptionalAction, default=d.gather_with_grad,
                   help="open_clip ClipLoss gather_with_grad (default: on with several ranks)")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=d.wandb,
                   help="also log to Weights & Biases in offline mode (<run-dir>/wandb)")
    p.add_argument("--max-steps", type=int, default=0, help="train only the first N time steps")
    p.add_argument("--time-steps", default="", help="'' (the data dir's), monthly:2019, or year groups 2014-2016,2017")
    p.add_argument("--years", default="", help="FIRST-LAST: the benchmark's years (default: those the data dir was built for)")
    p.add_argument("--log-ids", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    p.add_argument("--list", action="store_true", help="print TiC's protocols (the registry's listed tic methods) and stop")
    pre, _ = p.parse_known_args(argv)
    if pre.config:
        p.set_defaults(**_config_defaults(p, pre.config))
    a = p.parse_args(argv)
    if a.list:
        print(" ".join(methods("tic", listed_only=True)))
        raise SystemExit(0)
    base = base_from_args(p, a)
    try:  # a bad or conflicting year range is a one-line error before any work
        from benchmark_builder.specs import resolve_spec

        resolve_spec(a.benchmark, a.years, a.time_steps, a.data_dir)
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    cfg = TrainConfig(
        **{**base, "run_dir": a.run_dir or f"runs/{a.protocol}"}, protocol=a.protocol, warmup_later=a.warmup_later,
        precision=a.precision, max_steps=a.max_steps, time_steps=a.time_steps, years=a.years, log_ids=a.log_ids,
        accum_freq=a.accum_freq, global_batch_size=a.global_batch_size, grad_checkpointing=a.grad_checkpointing,
        torchcompile=a.torchcompile, local_loss=a.local_loss, gather_with_grad=a.gather_with_grad, wandb=a.wandb,
        config_file=a.config,
    )
    return cfg, a.resume


def tic_main(argv=None) -> int:
    cfg, resume = parse(argv)
    try:
        train(cfg, resume=resume)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    family = argv[0] if argv and argv[0] in FAMILIES else None
    if family == "cil":
        return cil_main(argv[1:], prog="python -m training cil")
    if family == "fomo":
        return fomo_main(argv[1:], prog="python -m training fomo")
    if argv and argv[0] == "filter-model":  # a job, not a family: the builder's default filter model
        from training.filter_model import main as filter_model_main  # Beam loads only for this job

        return filter_model_main(argv[1:])
    if argv and not argv[0].startswith("-") and family is None:
        print(f"error: unknown family {argv[0]!r}; one of {', '.join(FAMILIES)}, or the job filter-model "
              "(python -m training --help)", file=sys.stderr)
        return 2
    return tic_main(argv[1:] if family else argv)  # no family: the TiC protocols, as before the families


if __name__ == "__main__":
    sys.exit(main())
