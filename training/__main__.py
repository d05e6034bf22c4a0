"""``python -m training`` (or ``torchrun --nproc_per_node N -m training``): run one continual
protocol over the time steps of a built benchmark.

    python -m training --protocol cumulative-all --data-dir ./data --run-dir runs/cumulative-all
    torchrun --nproc_per_node 2 -m training --protocol sequential --run-dir runs/seq --device cpu
    python -m training --protocol sequential --run-dir runs/seq --resume     # continue a killed run
    python -m training --config configs/tic-datacomp-medium.yaml --protocol cumulative-all --accum-freq 4

``--config FILE.yaml`` sets any option below (keys are the option names, dashes or underscores;
``option`` takes a mapping of method options); options given on the command line win. The file
and the resolved values are written into the run dir (config.yaml, config.json).
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from training.methods import METHODS
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
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", metavar="FILE.yaml", help="option values from a YAML file (configs/); the command line wins")
    p.add_argument("--protocol", default=d.protocol, choices=sorted(METHODS))
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--benchmark", default=d.benchmark)
    p.add_argument("--variant", default=d.variant)
    p.add_argument("--run-dir", default=None, help="default: runs/<protocol>")
    p.add_argument("--model", default=d.model, help="model spec (see pipelines.models): preset, NAME:TAG, NAME:/path.pt")
    p.add_argument("--samples-per-step", type=int, default=d.samples_per_step, help="compute budget per time step")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per rank and micro-batch")
    p.add_argument("--global-batch-size", type=int, default=d.global_batch_size,
                   help="samples per optimizer step over all ranks; sets --batch-size to it / (ranks x accum-freq)")
    p.add_argument("--accum-freq", type=int, default=d.accum_freq,
                   help="micro-batches per optimizer step; the contrastive loss runs over the accumulated batch")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--wd", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup, help="warmup iterations of the first time step")
    p.add_argument("--warmup-later", type=int, default=d.warmup_later, help="warmup iterations of later steps")
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "constant", "rsqrt"])
    p.add_argument("--meta-schedule", default=d.meta_schedule, choices=["constant", "cosine-recovery", "rsqrt-recovery"])
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
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
    p.add_argument("--text", default=d.text, choices=["alt", "generated", "both"])
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--shuffle-buffer", type=int, default=d.buffer, help="samples per source in the shuffle buffer")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-steps", type=int, default=0, help="train only the first N time steps")
    p.add_argument("--time-steps", default="", help="'' (the data dir's), monthly:2019, or year groups 2014-2016,2017")
    p.add_argument("--years", default="", help="FIRST-LAST: the benchmark's years (default: those the data dir was built for)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. buffer_factor=2 alpha=0.5 weight=1000 temperature=2")
    p.add_argument("--log-ids", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir where it stopped")
    pre, _ = p.parse_known_args(argv)
    if pre.config:
        p.set_defaults(**_config_defaults(p, pre.config))
    a = p.parse_args(argv)
    options = {}
    for kv in a.option:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--option must be KEY=VALUE, got {kv!r}")
        try:
            options[k] = json.loads(v)
        except json.JSONDecodeError:
            options[k] = v
    try:  # a bad or conflicting year range is a one-line error before any work
        from benchmark_builder.specs import resolve_spec

        resolve_spec(a.benchmark, a.years, a.time_steps, a.data_dir)
    except (KeyError, ValueError) as e:
        p.error(str(e).strip("'\""))
    cfg = TrainConfig(
        protocol=a.protocol, data_dir=a.data_dir, benchmark=a.benchmark, variant=a.variant,
        run_dir=a.run_dir or f"runs/{a.protocol}", model=a.model, samples_per_step=a.samples_per_step,
        batch_size=a.batch_size, lr=a.lr, weight_decay=a.wd, warmup=a.warmup, warmup_later=a.warmup_later,
        schedule=a.schedule, meta_schedule=a.meta_schedule, grad_clip=a.grad_clip, precision=a.precision, text=a.text,
        workers=a.workers, buffer=a.shuffle_buffer, seed=a.seed, device=a.device, checkpoint_every=a.checkpoint_every, max_steps=a.max_steps, time_steps=a.time_steps,
        years=a.years,
        options=options, log_ids=a.log_ids, accum_freq=a.accum_freq, global_batch_size=a.global_batch_size,
        grad_checkpointing=a.grad_checkpointing, torchcompile=a.torchcompile, local_loss=a.local_loss,
        gather_with_grad=a.gather_with_grad, wandb=a.wandb, config_file=a.config,
    )
    return cfg, a.resume


def main(argv=None) -> int:
    cfg, resume = parse(argv)
    try:
        train(cfg, resume=resume)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
